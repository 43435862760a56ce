"""Batched node calls (the scanner's tip and block fetches) work against the real bcoin node, and
against answers shaped the way other servers may shape them: Bitcoin Core 28+ leaves "error" out of a
successful JSON-RPC 2.0 answer (python-bitcoinrpc's batch_ then raised KeyError on every batch, so
no block was ever scanned), and JSON-RPC lets a server answer a batch in any order. The shaping
proxy below stands in front of bcoin; everything behind it is the real node."""
from __future__ import annotations

import http.server
import json
import socketserver
import threading
import urllib.request
from urllib.parse import urlsplit

import pytest

from chains.bitcoin.rpc import BitcoinRPC, RpcError


class ShapingProxy:
    def __init__(self, node_url: str, shape, busy_answers: int = 0):
        """busy_answers: the first this many requests get a 503 with an HTML body, as a busy Bitcoin
        Core ("work queue depth exceeded") or a proxy in front of it answers."""
        parts = urlsplit(node_url)
        target = f"http://{parts.hostname}:{parts.port}/"
        busy = [busy_answers]

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if busy[0] > 0:
                    busy[0] -= 1
                    page = b"<html>Work queue depth exceeded</html>"
                    self.send_response(503)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                request = urllib.request.Request(target, data=body, method="POST", headers={
                    "Authorization": self.headers["Authorization"], "Content-Type": "application/json"})
                try:
                    answer, status = urllib.request.urlopen(request, timeout=30).read(), 200
                except urllib.error.HTTPError as exc:
                    answer, status = exc.read(), exc.code
                if shape and isinstance(json.loads(body), list):
                    answer = json.dumps(shape(json.loads(answer))).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = node_url.replace(f":{parts.port}", f":{self.server.server_address[1]}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def core28(answers):
    """Strict JSON-RPC 2.0: a result or an error, never both fields."""
    for a in answers:
        if a.get("error") is None:
            a.pop("error", None)
        else:
            a.pop("result", None)
        a["jsonrpc"] = "2.0"
    return answers


def reversed_order(answers):
    return answers[::-1]


@pytest.mark.parametrize("shape", [None, core28, reversed_order], ids=["bcoin as is", "core 28", "reordered"])
def test_batches_give_each_call_its_own_answer(chain, shape):
    proxy = ShapingProxy(chain.rpc.url, shape) if shape else None
    rpc = BitcoinRPC(proxy.url if proxy else chain.rpc.url, retries=0)
    try:
        height = rpc.call("getblockcount")
        heights = list(range(height - 4, height + 1))
        hashes = rpc.batch([("getblockhash", h) for h in heights])
        assert hashes == [rpc.call("getblockhash", h) for h in heights]
        best, count = rpc.batch([("getbestblockhash",), ("getblockcount",)])
        assert (best, count) == (hashes[-1], height)
        with pytest.raises(RpcError) as refused:  # one bad call fails the batch with the node's own error
            rpc.batch([("getblockhash", height), ("getblockhash", height + 1_000)])
        assert refused.value.method == "batch of 2 getblockhash" and refused.value.code is not None
        assert rpc.batch([("getblockhash", height)]) == [hashes[-1]]  # the connection is still good
    finally:
        rpc.close()
        if proxy:
            proxy.close()


def test_the_scanner_scans_through_a_node_that_answers_like_core_28(db_url, chain):
    from custody.app import Custody
    from tests.conftest import assert_invariants
    from tests.support.bitcoin import CONFIRMATIONS, make_chain_config

    proxy = ShapingProxy(chain.rpc.url, core28)
    app = Custody(make_chain_config(db_url, proxy.url))
    try:
        scanner = app.scanner("bitcoin")
        scanner.catch_up()
        account = app.create_account("ann").account_id
        script = app.plugin("bitcoin").watch_key(app.deposit_address(str(account), "bitcoin")[1])
        chain.pay((script, 70_000))
        chain.mine(CONFIRMATIONS)
        assert scanner.tick().status == "ok"
        assert {b.asset: b.available for b in app.get_balances(str(account))[1]}["BTC"] == 70_000
        assert_invariants(db_url)
    finally:
        app.close()
        proxy.close()


def test_a_busy_node_is_retried_and_one_that_stays_busy_is_unavailable(chain):
    """A 503 with an HTML body (Bitcoin Core's "work queue depth exceeded", a proxy's 502) was a
    NodeError at once: a rescan meeting one was stopped for good as if the node could not serve its
    blocks. It is retried like a transport error, and NodeUnavailable (back off) if it lasts."""
    from chains.base import NodeUnavailable

    proxy = ShapingProxy(chain.rpc.url, None, busy_answers=2)
    sleeps = []
    rpc = BitcoinRPC(proxy.url, retries=3, backoff_s=0.01, sleep=sleeps.append)
    try:
        height = chain.height()
        assert rpc.batch([("getblockhash", height)]) == [chain.rpc.call("getblockhash", height)]
        assert len(sleeps) == 2
        proxy_busy = ShapingProxy(chain.rpc.url, None, busy_answers=100)
        stuck = BitcoinRPC(proxy_busy.url, retries=2, backoff_s=0.01, sleep=sleeps.append)
        with pytest.raises(NodeUnavailable, match="503"):
            stuck.batch([("getblockhash", height)])
        with pytest.raises(NodeUnavailable, match="503"):
            stuck.call("getblockcount")
        proxy_busy.close()
    finally:
        rpc.close()
        proxy.close()
