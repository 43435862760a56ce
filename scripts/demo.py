"""The scripted end-to-end story behind `make demo`.

Starts local chain nodes (`custody nodes up`: bcoin regtest and anvil) and the
custody server on a fresh SQLite database under var/demo/, then, as a client
over gRPC: creates two accounts, funds one by a staff adjustment, transfers
between them, gives Ann a Bitcoin deposit address, pays it from a regtest
miner, watches the deposit go PENDING then CREDITED, shows balances and the
event stream; then the trade story (A bids for 10 ETH at 0.001 BTC, B sells
into it: both balances change in the ledger only, the event and market-data
streams show it); then a withdrawal (a signer process started here, Ann
withdraws, a reviewer approves with an Ed25519 signature, the job inside the
server sends it, it confirms on regtest, balances and fees are shown); and
runs the invariant check. Stops everything it started
and exits 0, or non-zero if a step failed. With --keep-running the server and
nodes stay up for your own clients until Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chains.bitcoin.regtest import RegtestMiner  # noqa: E402
from chains.bitcoin.rpc import BitcoinRPC  # noqa: E402
from chains.nodes import Nodes  # noqa: E402
from custody.api.auth import token_digest  # noqa: E402
from custody.v1 import backoffice_pb2 as bo  # noqa: E402
from custody.v1 import backoffice_pb2_grpc, custody_pb2_grpc, matching_pb2_grpc  # noqa: E402
from custody.v1 import custody_pb2 as pb  # noqa: E402
from custody.v1 import matching_pb2 as mpb  # noqa: E402
import demo_withdrawal  # noqa: E402  (scripts/demo_withdrawal.py)

DEMO = ROOT / "var" / "demo"
NODES = DEMO / "nodes"
CUSTODY = [sys.executable, "-m", "custody.cli"]
# The deposit wallet's account key (BIP84, m/84'/1'/0') of the public BIP84
# test mnemonic "abandon ... about": fine for a regtest demo, never for money.
DEMO_DEPOSIT_VPUB = ("vpub5Y6cjg78GGuNLsaPhmYsiw4gYX3HoQiRBiSwDaBXKUafCt9bNwWQiitDk5VZ5BVxYnQdwoTyXSs2JHRPAgjAvtbBrf"
                     "8ZhDYe2jWAqvZVnsc")
CONFIRMATIONS = 2


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(port: int, tokens: dict[str, str], bitcoin_rpc: str, extra: str = "") -> pathlib.Path:
    clients = "".join(
        f'\n[[clients]]\nname = "{name}"\ntoken_sha256 = "{token_digest(token)}"\nscopes = {json.dumps(scopes)}\n'
        for name, (token, scopes) in tokens.items()
    )
    path = DEMO / "custody.toml"
    path.write_text(f"""# Written by scripts/demo.py
[server]
listen = "127.0.0.1:{port}"

[database]
url = "sqlite:///custody.db"
{clients}
[[assets]]
asset = "BTC"
chain = "bitcoin"
decimals = 8
confirmations = {CONFIRMATIONS}
withdrawal_fee = "10000"
min_withdrawal = "50000"
max_withdrawal = "100000000"
daily_withdrawal_limit = "200000000"

[[assets]]
asset = "ETH"
chain = "ethereum"
decimals = 18
confirmations = 12
withdrawal_fee = "1000000000000000"
min_withdrawal = "10000000000000000"

[chains.bitcoin]
network = "regtest"
rpc_url = "{bitcoin_rpc}"
deposit_xpub = "{DEMO_DEPOSIT_VPUB}"
hot_xpub = "{demo_withdrawal.HOT_VPUB}"
poll_interval_s = 0.3
{extra}
# ETH/BTC: prices in satoshi per ETH (10^18 wei), quantities in wei.
[[markets]]
base = "ETH"
quote = "BTC"
price_unit = "1000000000000000000"
price_tick = "1"
quantity_step = "1000000000000000"
min_quantity = "10000000000000000"
maker_fee_ppm = 1000
taker_fee_ppm = 2000
""")
    return path


def wait_serving(address: str, server: subprocess.Popen, timeout_s: float = 30) -> None:
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}; see {DEMO / 'server.log'}")
        try:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            time.sleep(0.2)
    raise SystemExit("the server did not become healthy in time")


def custody_script(address: str) -> bytes:
    from chains.bitcoin.addresses import parse_address
    from chains.bitcoin.params import network

    return parse_address(address, network("regtest"))[1]


def btc(sats: str) -> str:
    whole, frac = divmod(int(sats), 10**8)
    return f"{whole}.{frac:08d} BTC"


def wait_for_deposit(custody, account_id: str, metadata, status: int, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        deposits = custody.ListDeposits(pb.ListDepositsRequest(account_id=account_id), metadata=metadata).deposits
        if deposits and deposits[0].status == status:  # newest first
            return deposits[0]
        time.sleep(0.1)
    raise SystemExit(f"the deposit did not become {pb.DepositStatus.Name(status)} within {timeout_s:.0f}s")


def story(address: str, tokens: dict[str, tuple[str, list[str]]], miner: RegtestMiner) -> None:
    channel = grpc.insecure_channel(address)
    custody = custody_pb2_grpc.CustodyServiceStub(channel)
    backoffice = backoffice_pb2_grpc.BackofficeServiceStub(channel)
    exchange = [("authorization", f"Bearer {tokens['exchange'][0]}")]
    admin = [("authorization", f"Bearer {tokens['alice-admin'][0]}")]

    step("ListAssets: what this service handles")
    for a in custody.ListAssets(pb.ListAssetsRequest(), metadata=exchange).assets:
        print(f"  {a.asset:5} chain={a.chain:9} decimals={a.decimals:2} confirmations={a.confirmations}")

    step("CreateAccount for two exchange users")
    ann = custody.CreateAccount(pb.CreateAccountRequest(external_id="user-ann"), metadata=exchange)
    ben = custody.CreateAccount(pb.CreateAccountRequest(external_id="user-ben"), metadata=exchange)
    print(f"  user-ann -> account {ann.account_id}; user-ben -> account {ben.account_id}")
    again = custody.CreateAccount(pb.CreateAccountRequest(external_id="user-ann"), metadata=exchange)
    assert again.account_id == ann.account_id and not again.created
    print(f"  asking again for user-ann returns account {again.account_id} (created={again.created})")

    step("AdjustBalance: staff member alice-admin credits Ann 1.5 BTC against equity")
    adj = backoffice.AdjustBalance(bo.AdjustBalanceRequest(
        idempotency_key="demo-fund-ann", account_id=ann.account_id, asset="BTC", amount="150000000",
        direction=bo.ADJUSTMENT_DIRECTION_CREDIT, reason="demo: opening balance"), metadata=admin)
    print(f"  adjustment {adj.adjustment_id} at event cursor {adj.event_cursor}")

    step("Transfer 0.4 BTC from Ann to Ben (internal, nothing touches a chain)")
    request = pb.TransferRequest(idempotency_key="demo-t1", from_account_id=ann.account_id,
                                 to_account_id=ben.account_id, asset="BTC", amount="40000000", memo="demo")
    t1 = custody.Transfer(request, metadata=exchange)
    replay = custody.Transfer(request, metadata=exchange)
    assert replay.transfer_id == t1.transfer_id
    print(f"  transfer {t1.transfer_id}; retried with the same idempotency key -> same transfer, no second move")

    step("Transfer refused: Ben tries to send more than he has")
    try:
        custody.Transfer(pb.TransferRequest(idempotency_key="demo-t2", from_account_id=ben.account_id,
                                            to_account_id=ann.account_id, asset="BTC", amount="40000001"),
                         metadata=exchange)
        raise AssertionError("an overdraft was accepted")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
        print(f"  {exc.code().name}: {exc.details()}")

    step("GetDepositAddress: Ann's Bitcoin deposit address (BIP84, derived from the deposit wallet's vpub)")
    deposit_address = custody.GetDepositAddress(
        pb.GetDepositAddressRequest(account_id=ann.account_id, chain="bitcoin"), metadata=exchange).address
    print(f"  {deposit_address} (asking again returns the same address until a new one is requested)")

    step("A regtest miner pays 0.25 BTC to it; one block is mined")
    script = custody_script(deposit_address)
    txid, _ = miner.pay([(script, 25_000_000)])
    miner.mine(1)
    print(f"  transaction {txid}")
    pending = wait_for_deposit(custody, ann.account_id, exchange, pb.DEPOSIT_STATUS_PENDING)
    print(f"  ListDeposits: {pb.DepositStatus.Name(pending.status)} with {pending.confirmations} confirmation "
          f"(needs {CONFIRMATIONS}); output {pending.txid}:{pending.index}, {btc(pending.amount)}")
    btc_balance = [b for b in custody.GetBalances(pb.GetBalancesRequest(account_id=ann.account_id),
                                                  metadata=exchange).balances if b.asset == "BTC"][0]
    assert btc_balance.pending == "25000000", btc_balance
    print(f"  Ann: available {btc(btc_balance.available)}, pending {btc(btc_balance.pending)} (shown, not spendable)")

    step(f"One more block: the deposit reaches {CONFIRMATIONS} confirmations and is credited")
    miner.mine(1)
    credited = wait_for_deposit(custody, ann.account_id, exchange, pb.DEPOSIT_STATUS_CREDITED)
    print(f"  ListDeposits: {pb.DepositStatus.Name(credited.status)} at {credited.confirmations} confirmations "
          f"(ledger: wallet:bitcoin:deposit -> user:{ann.account_id}:available)")

    step("GetBalances")
    expected = {ann.account_id: "135000000", ben.account_id: "40000000"}
    for name, acc in (("Ann", ann), ("Ben", ben)):
        for b in custody.GetBalances(pb.GetBalancesRequest(account_id=acc.account_id), metadata=exchange).balances:
            if b.asset == "BTC":
                assert b.available == expected[acc.account_id], (name, b.available)
                print(f"  {name}: available {btc(b.available)}, held {btc(b.held)}, pending {btc(b.pending)}")

    step("StreamEvents from the start (a consumer resumes from its last cursor)")
    call = custody.StreamEvents(pb.StreamEventsRequest(after_cursor=0), metadata=exchange, timeout=10)
    seen = []
    for event in call:
        seen.append(event)
        payload = json.loads(event.payload)
        if event.type.startswith("ledger."):
            moves = ", ".join(f"{p['amount']} {p['asset']} {p['debit']} -> {p['credit']}" for p in payload["postings"])
            print(f"  cursor {event.cursor}: {event.type} by {payload['actor']}: {moves}")
        else:
            print(f"  cursor {event.cursor}: {event.type}: {payload['txid']}:{payload['index']} "
                  f"{payload['amount']} sats, {payload['confirmations']} confirmations")
        if event.type == "deposit.credited":
            break
    call.cancel()

    step("StreamEvents resumed: the last cursor and its digest; a digest this journal never gave is refused")
    before, last = seen[-2], seen[-1]
    call = custody.StreamEvents(pb.StreamEventsRequest(after_cursor=before.cursor, after_digest=before.digest),
                                metadata=exchange, timeout=10)
    resumed = next(call)
    call.cancel()
    assert (resumed.cursor, resumed.digest) == (last.cursor, last.digest), resumed
    print(f"  after cursor {before.cursor} (digest {before.digest}): cursor {resumed.cursor}, {resumed.type}")
    call = custody.StreamEvents(pb.StreamEventsRequest(after_cursor=before.cursor, after_digest=last.digest),
                                metadata=exchange, timeout=10)
    try:
        next(call)
        raise AssertionError("a resume with another event's digest was served")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
        print(f"  after cursor {before.cursor} with cursor {last.cursor}'s digest: {err.code().name}")
    return ann.account_id


def eth(wei: str) -> str:
    whole, frac = divmod(int(wei), 10**18)
    return f"{whole}.{frac:018d}".rstrip("0").rstrip(".") + " ETH"


def trade_story(address: str, tokens: dict[str, tuple[str, list[str]]]) -> None:
    """DESIGN section 4, Trade: A bids for 10 ETH at 0.001 BTC, B sells into it."""
    channel = grpc.insecure_channel(address)
    custody = custody_pb2_grpc.CustodyServiceStub(channel)
    backoffice = backoffice_pb2_grpc.BackofficeServiceStub(channel)
    matching = matching_pb2_grpc.MatchingServiceStub(channel)
    exchange = [("authorization", f"Bearer {tokens['exchange'][0]}")]
    admin = [("authorization", f"Bearer {tokens['alice-admin'][0]}")]
    ten_eth, price = str(10 * 10**18), "100000"  # 100,000 sat = 0.001 BTC per ETH

    step("Trade: accounts A and B; their deposits")
    a = custody.CreateAccount(pb.CreateAccountRequest(external_id="user-a"), metadata=exchange).account_id
    b = custody.CreateAccount(pb.CreateAccountRequest(external_id="user-b"), metadata=exchange).account_id
    # Deposits arrive with the chain issues; until then the demo stands them in
    # with staff adjustments, clearly labelled as such in the ledger.
    last_cursor = 0
    for account, asset, amount, what in ((a, "BTC", "2000000", "0.02 BTC"), (b, "ETH", ten_eth, "10 ETH")):
        last_cursor = backoffice.AdjustBalance(bo.AdjustBalanceRequest(
            idempotency_key=f"demo-deposit-{account}-{asset}", account_id=account, asset=asset, amount=amount,
            direction=bo.ADJUSTMENT_DIRECTION_CREDIT, reason="demo: stands in for an on-chain deposit"),
            metadata=admin).event_cursor
        print(f"  account {account} 'deposits' {what} (a staff AdjustBalance standing in for a chain deposit)")
    (market,) = matching.ListMarkets(mpb.ListMarketsRequest(), metadata=exchange).markets
    print(f"  market {market.market}: price in sat per {eth(market.price_unit)}, tick {market.price_tick} sat, "
          f"step {eth(market.quantity_step)}, fees maker {market.maker_fee_ppm / 10_000}% / taker {market.taker_fee_ppm / 10_000}%")

    step("A bids for 10 ETH at 0.001 BTC (price 100000 sat per ETH)")
    bid = matching.PlaceOrder(mpb.PlaceOrderRequest(
        idempotency_key="demo-bid", account_id=a, market=market.market, side=mpb.SIDE_BUY,
        type=mpb.ORDER_TYPE_LIMIT, price=price, quantity=ten_eth, time_in_force=mpb.TIME_IN_FORCE_GTC),
        metadata=exchange).order
    assert bid.status == mpb.ORDER_STATUS_OPEN and bid.held == "1002000", bid
    print(f"  order {bid.order_id} OPEN; holds {btc(bid.held)} = 0.01 BTC + the highest fee (0.2%)")
    book = matching.GetOrderBook(mpb.GetOrderBookRequest(market=market.market, depth=5), metadata=exchange)
    assert [(lv.price, lv.quantity) for lv in book.bids] == [(price, ten_eth)] and not book.asks
    print(f"  book: bids {[(lv.price, eth(lv.quantity)) for lv in book.bids]}, asks none (market-data cursor {book.cursor})")
    balances = {x.asset: x for x in custody.GetBalances(pb.GetBalancesRequest(account_id=a), metadata=exchange).balances}
    assert (balances["BTC"].available, balances["BTC"].held) == ("998000", "1002000")

    step("B sells 10 ETH into A's bid")
    ask = matching.PlaceOrder(mpb.PlaceOrderRequest(
        idempotency_key="demo-ask", account_id=b, market=market.market, side=mpb.SIDE_SELL,
        type=mpb.ORDER_TYPE_LIMIT, price=price, quantity=ten_eth), metadata=exchange)
    (trade,) = ask.trades
    assert ask.order.status == mpb.ORDER_STATUS_FILLED and trade.quantity == ten_eth and trade.price == price
    print(f"  trade {trade.trade_id}: {eth(trade.quantity)} at {trade.price} sat/ETH, one ledger batch {trade.batch_id}")
    print(f"  A (maker) paid {btc(trade.buyer_paid)} + fee {btc(trade.buyer_fee)}; "
          f"B (taker) got {btc(trade.seller_gross)} - fee {btc(trade.seller_fee)}; rounding {trade.rounding} sat")

    step("Balances: changed in the ledger only (nothing went on chain)")
    expected = {a: {"BTC": ("999000", "0"), "ETH": (ten_eth, "0")},  # 0.02 - 0.01 BTC - 0.1% maker fee
                b: {"BTC": ("998000", "0"), "ETH": ("0", "0")}}  # 0.01 BTC - 0.2% taker fee
    for name, account in (("A", a), ("B", b)):
        got = {x.asset: x for x in custody.GetBalances(pb.GetBalancesRequest(account_id=account),
                                                        metadata=exchange).balances}
        for asset, (available, held) in expected[account].items():
            assert (got[asset].available, got[asset].held) == (available, held), (name, asset, got[asset])
        print(f"  {name}: {btc(got['BTC'].available)} and {eth(got['ETH'].available)} available, nothing held")

    step("StreamEvents: the order's hold and the fill are ledger batches")
    call = custody.StreamEvents(pb.StreamEventsRequest(after_cursor=last_cursor), metadata=exchange, timeout=10)
    seen = []
    for event in call:
        payload = json.loads(event.payload)
        if event.type in ("ledger.order", "ledger.trade"):
            seen.append(event.type)
            moves = "; ".join(f"{p['amount']} {p['asset']} {p['debit']} -> {p['credit']}" for p in payload["postings"])
            print(f"  cursor {event.cursor}: {event.type} ({payload['reference']}): {moves}")
        if event.type == "ledger.trade":
            break
    call.cancel()
    assert seen == ["ledger.order", "ledger.order", "ledger.trade"], seen

    step("StreamMarketData: book changes and the trade, from cursor 0")
    call = matching.StreamMarketData(mpb.StreamMarketDataRequest(market=market.market, after_cursor=0),
                                     metadata=exchange, timeout=10)
    kinds = []
    for item in call:
        kinds.append(item.WhichOneof("update"))
        if item.WhichOneof("update") == "trade":
            print(f"  cursor {item.cursor}: trade {eth(item.trade.quantity)} at {item.trade.price}, "
                  f"taker {mpb.Side.Name(item.trade.taker_side)}")
        else:
            levels = [("bid", lv.price, lv.quantity) for lv in item.book.bids] + [
                ("ask", lv.price, lv.quantity) for lv in item.book.asks]
            print(f"  cursor {item.cursor}: book {levels}")
        if len(kinds) == 3:
            break
    call.cancel()
    assert kinds == ["book", "trade", "book"], kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-running", action="store_true", help="leave the server running after the story")
    args = parser.parse_args()

    if DEMO.exists():
        shutil.rmtree(DEMO)
    DEMO.mkdir(parents=True, exist_ok=True)
    tokens = {
        "exchange": (secrets.token_urlsafe(24), ["accounts", "withdraw"]),
        "alice-admin": (secrets.token_urlsafe(24), ["admin"]),
        demo_withdrawal.REVIEWER: (secrets.token_urlsafe(24), ["review"]),
    }
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = Nodes(NODES, {"bitcoin": free_port(), "ethereum": free_port()})
    step("custody nodes up: bcoin (regtest, Bitcoin Core's address prefixes) and anvil, under var/demo/nodes")
    for status in nodes.up(fresh=True):
        print("  " + status.render())
    bitcoin_rpc = nodes.rpc_url("bitcoin")
    miner = RegtestMiner(BitcoinRPC(bitcoin_rpc))
    miner.ensure_ready(spendable=2)
    print(f"  mined {miner.height()} regtest blocks (segwit active, mature coinbases for the miner)")
    step("custody signer serve: the signer process (software keystore, its own policy), under var/demo/signer")
    try:
        signer = demo_withdrawal.Signer(DEMO / "signer", CUSTODY, ROOT)
    except BaseException:
        nodes.down()
        raise
    print(f"  listening on unix:{signer.socket}")
    reviewer = demo_withdrawal.reviewer_key()
    config = write_config(port, tokens, bitcoin_rpc, demo_withdrawal.config_section(signer, reviewer))

    step("Database: custody db upgrade (SQLite, WAL, synchronous=FULL)")
    subprocess.run([*CUSTODY, "db", "upgrade", "--config", str(config)], check=True, cwd=ROOT)

    step(f"Starting the custody server on {address}")
    log = open(DEMO / "server.log", "w")
    server = subprocess.Popen([*CUSTODY, "serve", "--config", str(config), "--no-migrate"], cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, demo_withdrawal.TOKEN_ENV: signer.token})
    failed = False
    try:
        wait_serving(address, server)
        print("  healthy (grpc.health.v1 says SERVING)")
        ann_id = story(address, tokens, miner)
        trade_story(address, tokens)
        from custody import config as config_mod

        demo_withdrawal.story(step, address, tokens, miner, ann_id, config_mod.load(config).database_url, reviewer)
        step("custody admin check: the ledger invariants")
        check = subprocess.run([*CUSTODY, "admin", "check", "--config", str(config)], cwd=ROOT,
                               capture_output=True, text=True)
        print("  " + check.stdout.strip().replace("\n", "\n  "))
        if check.returncode != 0:
            raise SystemExit("the invariant check failed")
        if args.keep_running:
            step("The server keeps running; press Ctrl-C to stop it")
            print(f"  address  {address}\n  config   {config}\n  log      {DEMO / 'server.log'}")
            for name, (token, scopes) in tokens.items():
                print(f"  token    {name} ({', '.join(scopes)}): {token}")
            print("  try:     grpcurl/buf curl with -H 'authorization: Bearer <token>', or the stubs in custody.v1")
            try:
                server.wait()
            except KeyboardInterrupt:
                pass
    except (Exception, SystemExit) as exc:
        failed = True
        print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        log.close()
        signer.stop()
        print("\n  signer stopped" if signer.process.poll() is not None else "\n  signer STILL RUNNING")
        nodes.down()
        print("\n  custody nodes down: " + ", ".join(f"{s.kind} {'running' if s.running else 'stopped'}"
                                                   for s in nodes.status()))
    if failed:
        return 1
    step("Demo finished: everything above was checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
