"""Config, staff approvals and helpers for the withdrawal tests, benchmark and demo."""
from __future__ import annotations

from sqlalchemy import select

from custody import config as config_mod
from custody.api.auth import token_digest
from custody.db import schema as t
from custody.db.engine import read_transaction
from custody.withdrawals.sender import BitcoinSender
from tests.support.bitcoin import HOT_XPUB, chain_config
from tests.support.servers import SCOPES, TOKENS
from tests.support.signer import STAFF, SignerProcess, make_keystore, raw_config, staff_public_hex

BTC = 100_000_000
WITHDRAWAL_FEE = 1_000
MIN_WITHDRAWAL = 10_000
# A valid regtest address of nobody we know, and the same key's testnet / mainnet forms.
PAYEE = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
TESTNET_PAYEE = "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"


def withdrawal_config(db_url: str, rpc_url: str = "http://x:y@127.0.0.1:9", confirmations: int = 2,
                      chain: dict | None = None, btc: dict | None = None, **withdrawals) -> config_mod.Config:
    """btc: more [[assets]] settings for BTC (min_deposit, ...)."""
    return config_mod.parse({
        "database": {"url": db_url},
        "server": {"listen": "127.0.0.1:0"},
        "clients": [{"name": n, "token_sha256": token_digest(TOKENS[n]), "scopes": SCOPES[n]} for n in TOKENS],
        "assets": [{"asset": "BTC", "chain": "bitcoin", "decimals": 8, "confirmations": confirmations,
                    "withdrawal_fee": str(WITHDRAWAL_FEE), "min_withdrawal": str(MIN_WITHDRAWAL),
                    "max_withdrawal": str(10 * BTC), "daily_withdrawal_limit": str(20 * BTC), **(btc or {})},
                   {"asset": "ETH", "chain": "ethereum", "decimals": 18, "confirmations": 3}],
        "chains": {"bitcoin": chain_config(rpc_url, **(chain or {}))},
        "withdrawals": {
            "auto_approve_max": str(BTC // 10), "two_approvals_above": str(BTC),
            "staff": [{"name": n, "ed25519_public_key": staff_public_hex(n)} for n in STAFF],
            **withdrawals,
        },
    })


def approve_signature(app, withdrawal_id: str, staff: str) -> bytes:
    """What a staff member's tool sends: Ed25519 over the withdrawal's approval message."""
    w, _ = app.withdrawals.get(withdrawal_id)
    return STAFF[staff].sign(app.withdrawals.approval_message(w))


def fund(app, account_id: int | str, amount: int, key: str | None = None) -> None:
    app.adjust_balance("alice-admin", key or f"fund-{account_id}-{amount}", str(account_id), "BTC", str(amount),
                       True, "test funding")


def start_signer(tmp_path, name: str = "signer", **policy) -> SignerProcess:
    """`custody signer serve` with the BIP84 test mnemonic; its hot account is internal (change)."""
    folder = tmp_path / name
    folder.mkdir()
    make_keystore(folder).close()
    policy = {"assets": [{"asset": "BTC", "chain": "bitcoin", "max_per_transaction": str(50 * BTC),
                          "max_per_24h": str(500 * BTC), "max_fee": "1000000"}], **policy}
    return SignerProcess(folder, raw_config(folder, internal_xpubs=[HOT_XPUB], **policy))


def refusals(signer: SignerProcess) -> list[dict]:
    """The refusals in the signer's audit log."""
    import json

    entries = [json.loads(line) for line in (signer.config_path.parent / "audit.log").read_text().splitlines()]
    return [e for e in entries if e["kind"] == "refused"]


def fund_hot_wallet(app, chain, *amounts):
    hot = app.plugin("bitcoin").derive_address(HOT_XPUB, 1)
    for amount in amounts:
        chain.pay((hot.watch_key, amount))
    chain.mine(app.config.asset("BTC").confirmations)  # as deep as the sender spends (coins.py)
    app.scanner("bitcoin").catch_up()


def sender(app, signer, **kw) -> BitcoinSender:
    return BitcoinSender(app.config, app.engine, app.plugin("bitcoin"), signer.client, app.notifier.notify, **kw)


def ledger_balance(app, code):
    a = t.ledger_accounts.c
    with read_transaction(app.engine) as conn:
        row = conn.execute(select(a.debits, a.credits).where(a.code == code, a.asset == "BTC")).first()
    if row is None:
        return 0
    return row.debits - row.credits if code.startswith("wallet:") else row.credits - row.debits


def attempts(app):
    with read_transaction(app.engine) as conn:
        return [dict(r._mapping) for r in conn.execute(
            select(t.withdrawal_attempts).order_by(t.withdrawal_attempts.c.created_at))]


def reserved(app) -> list[tuple[str, int]]:
    r = t.utxo_reservations.c
    with read_transaction(app.engine) as conn:
        return [(x.txid, x.output_index) for x in conn.execute(select(r.txid, r.output_index))]


def confirm(app, chain, s, blocks=2):
    for _ in range(blocks):
        chain.mine(1)
        app.scanner("bitcoin").catch_up()
        s.tick()


def available_held(app, account_id) -> tuple[int, int]:
    _, bs = app.get_balances(str(account_id))
    b = next(b for b in bs if b.asset == "BTC")
    return b.available, b.held


def batches(app) -> list[dict]:
    with read_transaction(app.engine) as conn:
        return [dict(r._mapping) for r in conn.execute(
            select(t.withdrawal_batches).order_by(t.withdrawal_batches.c.created_at))]


def events(app, prefix: str) -> list[dict]:
    """The payloads of the journal's events whose type starts with prefix."""
    import json

    e = t.events.c
    with read_transaction(app.engine) as conn:
        return [json.loads(r.payload) for r in conn.execute(
            select(t.events).where(e.type.startswith(prefix)).order_by(e.cursor))]


def outputs_paying(chain, script: bytes, from_height: int) -> list[tuple[str, int]]:
    """(txid, amount) of every output paying script in the blocks from from_height to the tip."""
    import io

    from embit.transaction import Transaction

    found = []
    for height in range(from_height, chain.height() + 1):
        raw = bytes.fromhex(chain.rpc.call("getblock", chain.rpc.call("getblockhash", height), False))
        stream = io.BytesIO(raw[81:]) if raw[80] < 0xFD else None
        assert stream is not None, "test blocks hold fewer than 253 transactions"
        for _ in range(raw[80]):
            tx = Transaction.read_from(stream)
            found += [(tx.txid().hex(), o.value) for o in tx.vout if o.script_pubkey.data == script]
    return found


def wipe_mempool(app, chain) -> None:
    """bcoin's invalidateblock is a chain reset: the tip goes and the mempool with it. The tip
    must hold nothing the test needs (mine an empty block first)."""
    chain.miner.invalidate(chain.height())
    # bcoin empties its mempool before invalidateblock answers. Transactions seen again
    # afterwards came from a peer: once the node itself, through a TCP self-connect to
    # regtest's seed port (the launcher now never connects to the network).
    assert chain.rpc.call("getrawmempool") == [], "bcoin kept transactions through invalidateblock"
    chain.mine(1)
    app.scanner("bitcoin").catch_up()


class DroppingProxy:
    """An HTTP proxy in front of the node's JSON-RPC that forwards every call but, for the
    methods in `drop`, closes the connection instead of returning the node's answer: the
    node acted, the caller never hears it (FAILURE_MODES 1)."""

    def __init__(self, rpc_url: str, drop: set[str]):
        import http.client
        import http.server
        import json
        import threading
        from urllib.parse import urlsplit

        target = urlsplit(rpc_url)
        self.drop = set(drop)
        self.dropped: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                upstream.request("POST", target.path or "/", body, {
                    k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")})
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                calls = json.loads(body)
                methods = {c["method"] for c in (calls if isinstance(calls, list) else [calls])}
                if methods & proxy.drop:
                    proxy.dropped += sorted(methods & proxy.drop)
                    self.close_connection = True  # the node answered; the caller gets nothing
                    return
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        auth = f"{target.username}:{target.password}@" if target.username else ""
        self.url = f"http://{auth}127.0.0.1:{self.server.server_address[1]}{target.path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
