"""`custody nodes up|status|down` as a developer runs it."""
import json
import pathlib
import subprocess
import sys

from chains.nodes import json_rpc
from tests.support.ports import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
CUSTODY = [sys.executable, "-m", "custody.cli"]



def run(*args):
    return subprocess.run([*CUSTODY, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_nodes_up_status_down_with_configurable_ports_and_one_data_folder(tmp_path):
    folder = tmp_path / "nodes"
    btc_port, eth_port = free_port(), free_port()
    try:
        up = run("nodes", "up", "--dir", str(folder), "--bitcoin-port", str(btc_port), "--ethereum-port", str(eth_port))
        assert up.returncode == 0, up.stderr
        assert "bitcoin   running" in up.stdout and "ethereum  running" in up.stdout
        btc_url = json.loads((folder / "bitcoin" / "node.json").read_text())["rpc_url"]
        assert f":{btc_port}/" in btc_url
        # bcoin answers with Bitcoin Core's regtest address prefixes.
        json_rpc(btc_url, "generatetoaddress", [1, "bcrt1q6rz28mcfaxtmd6v789l9rrlrusdprr9pz3cppk"])
        assert json_rpc(btc_url, "getblockchaininfo", [])["chain"] == "regtest"
        assert json_rpc(f"http://127.0.0.1:{eth_port}/", "eth_chainId", []) == "0x7a69"  # 31337
        status = run("nodes", "status", "--dir", str(folder))
        assert "height 1" in status.stdout and "height 0" in status.stdout
        again = run("nodes", "up", "--dir", str(folder), "--only", "bitcoin")
        assert again.returncode == 0 and "height 1" in again.stdout  # already running: left alone
        assert (folder / "bitcoin" / "node.log").exists() and (folder / "bitcoin" / "data").is_dir()
    finally:
        down = run("nodes", "down", "--dir", str(folder))
    assert down.returncode == 0
    assert "bitcoin   stopped" in down.stdout and "ethereum  stopped" in down.stdout
    assert "stopped" in run("nodes", "status", "--dir", str(folder)).stdout



def test_nodes_up_refuses_a_port_another_program_listens_on(tmp_path):
    """Someone else's node on the port answered our start-up check while ours failed to bind and
    exited: `nodes up` said running, and the demo and tests ran against a node that was not ours."""
    import http.server
    import threading

    class ForeignNode(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": "0x5"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    foreign = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ForeignNode)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    port = foreign.server_address[1]
    try:
        up = run("nodes", "up", "--dir", str(tmp_path / "nodes"), "--only", "ethereum", "--ethereum-port", str(port))
    finally:
        run("nodes", "down", "--dir", str(tmp_path / "nodes"))
        foreign.shutdown()
    assert up.returncode != 0 and f"port {port} is in use by another program" in up.stderr, up.stdout + up.stderr
    assert "Traceback" not in up.stderr
    assert not (tmp_path / "nodes" / "ethereum" / "node.json").exists()


def test_the_regtest_bitcoin_node_never_dials_a_peer(tmp_path, monkeypatch):
    """Connected to the network, bcoin dialled regtest's seed 127.0.0.1:48444 every few seconds.
    Now and then the kernel gave that socket the source port 48444: a TCP self-connect, which
    bcoin accepts on regtest. The node was then its own peer and handed itself back the
    transactions an invalidateblock had just wiped (two CI failures). Its debug log shows every
    dial: none on a fresh start, none on a restart whose folder holds an old run's host list."""
    import time

    from chains.nodes import Nodes
    from tests.support.bitcoin import start_node

    monkeypatch.setenv("CUSTODY_BCOIN_LOG_LEVEL", "debug")
    folder = tmp_path / "nodes"
    log = folder / "bitcoin" / "node.log"
    nodes = start_node(folder)
    try:
        json_rpc(nodes.rpc_url("bitcoin"), "generatetoaddress", [1, "bcrt1q6rz28mcfaxtmd6v789l9rrlrusdprr9pz3cppk"])
        time.sleep(2)  # it dialled on start-up, and again on a timer
        nodes.down()
        first_run = log.read_text()
        log.unlink()
        (folder / "bitcoin" / "data" / "regtest" / "hosts.json").write_text(json.dumps({
            "version": 0, "network": "regtest", "fresh": [["127.0.0.1:48444"]] + [[]] * 19, "used": [[]] * 20,
            "addrs": [{"addr": "127.0.0.1:48444", "src": "0.0.0.0:48444", "services": "1101", "time": 1796534073,
                       "attempts": 0, "lastSuccess": 0, "lastAttempt": 0}]}))
        Nodes(folder, nodes.ports).up(("bitcoin",))
        time.sleep(2)
    finally:
        nodes.down()
    assert "(miner) Created block" in first_run  # the debug log is on
    for run_log in (first_run, log.read_text()):
        assert "(net) Connecting to" not in run_log and "loader peer" not in run_log, run_log
