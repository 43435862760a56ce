"""FAILURE_MODES 23 against the real bcoin node: addresses registered late (a high
derivation index, a restore), rescans from a height (CLI and automatic), never a
cursor moved back, never a double credit."""
import json
import subprocess
import sys

import pytest
from sqlalchemy import select

from chains.base import BlockNotFound, NodeUnavailable
from chains.bitcoin.rpc import RpcError
from custody.db import schema as t
from custody.deposits import service as deposits
from custody.deposits import store
from tests.integration.test_scanner_robustness import write_config
from tests.support.bitcoin import CONFIRMATIONS, DEPOSIT_XPUB, OTHER_XPUB, deposit_key, random_script, spend
from tests.support.databases import ROOT
from tests.support.reconciliation import only_outside_spends

HIGH_INDEX = 100_000


def scan(app):
    return app.scanner("bitcoin").catch_up()


def cursor(app):
    with app.engine.connect() as conn:
        return store.load_cursor(conn, "bitcoin")


def table(app, tbl):
    with app.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(tbl))]


def available(app, account):
    return {b.asset: b for b in app.get_balances(str(account))[1]}["BTC"].available


def test_an_address_at_a_high_index_registered_late_finds_its_past_payment_and_spend(btc_app, chain, request):
    """A payment to index 100,000 and its sweep, both mined before the address is registered
    with a creation height below them: the automatic backfill credits it once and records the spend."""
    plugin = btc_app.plugin("bitcoin")
    ann = btc_app.create_account("ann").account_id
    ben = btc_app.create_account("ben").account_id
    bens_address = btc_app.deposit_address(str(ben), "bitcoin")[1]
    created_height = chain.height()
    late = plugin.derive_address(DEPOSIT_XPUB, HIGH_INDEX)
    txid, _ = chain.pay((late.watch_key, 70_000), (plugin.watch_key(bens_address), 30_000))
    chain.mine(1)
    sweep_txid = chain.miner.send(spend((txid, 0), 70_000, deposit_key(HIGH_INDEX), random_script()))
    chain.mine(CONFIRMATIONS)
    scan(btc_app)
    assert [d["amount"] for d in table(btc_app, t.deposits)] == [30_000], "index 100,000 is not watched yet"
    before = cursor(btc_app)

    address = deposits.register_deposit_address(btc_app.engine, plugin, "bitcoin", DEPOSIT_XPUB, ann, HIGH_INDEX,
                                                created_height)
    assert address == late.address
    (backfill,) = table(btc_app, t.scan_backfills)
    assert (backfill["from_height"], backfill["finished_at"]) == (created_height + 1, None)
    result = scan(btc_app)

    assert result.backfilled == before.height - created_height and result.applied == 0
    assert cursor(btc_app) == before, "a backfill never moves the cursor"
    (backfill,) = table(btc_app, t.scan_backfills)
    assert backfill["to_height"] == before.height and backfill["finished_at"] is not None
    found = {d["amount"]: d for d in table(btc_app, t.deposits)}
    assert sorted(found) == [30_000, 70_000]
    assert (found[70_000]["txid"], found[70_000]["status"], found[70_000]["account_id"]) == (txid, "CREDITED", ann)
    assert available(btc_app, ann) == 70_000 and available(btc_app, ben) == 30_000
    utxos = {u["amount"]: u for u in table(btc_app, t.utxos)}
    assert utxos[70_000]["spent_txid"] == sweep_txid, "the sweep after the payment is seen too"
    assert len(table(btc_app, t.ledger_batches)) == 2
    types = [e.type for e in btc_app.events_after(0, 1000)]
    assert types.count("deposit.credited") == 2

    assert scan(btc_app).backfilled == 0, "a finished backfill is not run again"
    only_outside_spends(btc_app.engine, request, {sweep_txid: 70_000})  # swept here with the deposit key


def test_an_address_registered_before_the_scanner_s_first_run_finds_its_past_payment(db_url, chain):
    """A migration registers its addresses first and starts the service after. The scanner's first
    run starts at the node's tip: without a backfill (none was requested without a cursor), a
    payment between the address's creation height and that tip was never seen (found by the
    deposits review)."""
    from custody.app import Custody
    from tests.support.bitcoin import make_chain_config

    app = Custody(make_chain_config(db_url, chain.rpc.url))
    try:
        ann = app.create_account("ann").account_id
        plugin = app.plugin("bitcoin")
        address = deposits.register_deposit_address(app.engine, plugin, "bitcoin", DEPOSIT_XPUB, ann, HIGH_INDEX,
                                                    chain.height())
        chain.pay((plugin.watch_key(address), 70_000))
        chain.mine(CONFIRMATIONS)
        app.scanner("bitcoin").catch_up()  # the first run: its cursor starts at the tip
        app.scanner("bitcoin").catch_up()  # the backfill
        (deposit,) = app.list_deposits(str(ann))[1]
        assert (deposit.amount, deposit.status) == (70_000, "CREDITED"), deposit
    finally:
        app.close()


def test_cli_rescan_finds_a_payment_the_scanner_could_not_see_and_a_second_rescan_changes_nothing(
        btc_app, chain, db_url, tmp_path):
    """A restore: the address row came back with no creation height, after its payment was
    scanned past. `custody scan rescan --from-height H` credits it once; running it again adds nothing."""
    plugin = btc_app.plugin("bitcoin")
    ann = btc_app.create_account("ann").account_id
    first = chain.height() + 1
    late = plugin.derive_address(DEPOSIT_XPUB, 5_000)
    txid, _ = chain.pay((late.watch_key, 12_345))
    chain.mine(CONFIRMATIONS)
    scan(btc_app)
    with btc_app.engine.begin() as conn:
        conn.execute(t.chain_addresses.insert().values(
            chain="bitcoin", wallet="deposit", branch=0, key_index=5_000, address=late.address,
            watch_key=late.watch_key, account_id=ann, created_height=None, created_at=store.now()))
    scan(btc_app)
    assert table(btc_app, t.deposits) == [] and table(btc_app, t.scan_backfills) == []
    before = cursor(btc_app)
    config_file = write_config(tmp_path / "custody.toml", db_url, chain.rpc.url)

    def rescan():
        return subprocess.run([sys.executable, "-m", "custody.cli", "scan", "rescan", "--config", str(config_file),
                               "--chain", "bitcoin", "--from-height", str(first), "--staff", "carol"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)

    done = rescan()
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{before.height - first + 1} blocks rescanned" in done.stdout and "finished" in done.stdout
    (d,) = table(btc_app, t.deposits)
    assert (d["txid"], d["status"], d["amount"], d["account_id"]) == (txid, "CREDITED", 12_345, ann)
    assert cursor(btc_app) == before

    again = rescan()
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(table(btc_app, t.deposits)) == 1 and len(table(btc_app, t.ledger_batches)) == 1
    assert available(btc_app, ann) == 12_345
    assert [b["reason"] for b in table(btc_app, t.scan_backfills)] == [
        f"carol: custody scan rescan --from-height {first}"] * 2, "who asked is recorded"

    bad = subprocess.run([sys.executable, "-m", "custody.cli", "scan", "rescan", "--config", str(config_file),
                          "--chain", "dogecoin", "--from-height", "1", "--staff", "carol"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown chain 'dogecoin'" in bad.stderr


def test_an_address_whose_id_commits_after_a_higher_one_is_watched_and_backfilled(btc_app, chain):
    """PostgreSQL hands out ids before commit: the scanner may see id N+1 before id N. Id N is
    looked for again; found later with a creation height below the cursor, it gets a backfill."""
    plugin = btc_app.plugin("bitcoin")
    ann = btc_app.create_account("ann").account_id
    with btc_app.engine.connect() as conn:
        top = conn.execute(select(t.chain_addresses.c.id).order_by(t.chain_addresses.c.id.desc())).first().id
    slow, fast = plugin.derive_address(DEPOSIT_XPUB, 7), plugin.derive_address(DEPOSIT_XPUB, 8)
    created_height = cursor(btc_app).height

    def insert(address_id, derived, index):
        with btc_app.engine.begin() as conn:
            conn.execute(t.chain_addresses.insert().values(
                id=address_id, chain="bitcoin", wallet="deposit", branch=0, key_index=index,
                address=derived.address, watch_key=derived.watch_key, account_id=ann,
                created_height=created_height, created_at=store.now()))

    insert(top + 2, fast, 8)  # the later id commits first
    txid, _ = chain.pay((slow.watch_key, 4_000), (fast.watch_key, 6_000))
    chain.mine(CONFIRMATIONS)
    scan(btc_app)
    assert [d["amount"] for d in table(btc_app, t.deposits)] == [6_000]
    insert(top + 1, slow, 7)  # ...then the earlier one
    scan(btc_app)  # sees it, requests a backfill from its creation height
    scan(btc_app)
    assert sorted((d["amount"], d["status"]) for d in table(btc_app, t.deposits)) == [
        (4_000, "CREDITED"), (6_000, "CREDITED")]
    assert available(btc_app, ann) == 10_000
    (request,) = table(btc_app, t.scan_backfills)
    assert request["from_height"] == created_height + 1 and request["finished_at"] is not None


def test_a_backfill_spread_over_runs_sees_spends_in_blocks_applied_meanwhile(btc_app, chain, monkeypatch, request):
    """The backfill goes up to the cursor as it is at each run: an output it finds late, and that
    was spent in a block the main loop applied before the output was known, is recorded spent."""
    from custody.deposits import scanner as scanner_mod

    monkeypatch.setattr(scanner_mod, "BACKFILL_BLOCKS_PER_RUN", 2)
    plugin = btc_app.plugin("bitcoin")
    ann = btc_app.create_account("ann").account_id
    created_height = chain.height()
    late = plugin.derive_address(DEPOSIT_XPUB, HIGH_INDEX + 1)
    chain.mine(2)
    txid, _ = chain.pay((late.watch_key, 40_000))
    chain.mine(1)  # the payment is in block created_height + 3
    scan(btc_app)
    deposits.register_deposit_address(btc_app.engine, plugin, "bitcoin", DEPOSIT_XPUB, ann, HIGH_INDEX + 1,
                                      created_height)
    sweep_txid = chain.miner.send(spend((txid, 0), 40_000, deposit_key(HIGH_INDEX + 1), random_script()))
    chain.mine(CONFIRMATIONS)

    first = btc_app.scanner("bitcoin").run_once()  # rescans 2 blocks, then applies the sweep's block
    assert (first.backfilled, first.applied) == (2, CONFIRMATIONS)
    scan(btc_app)  # the rest of the backfill finds the payment
    (d,) = table(btc_app, t.deposits)
    assert (d["txid"], d["status"]) == (txid, "CREDITED")
    (utxo,) = table(btc_app, t.utxos)
    assert utxo["spent_txid"] == sweep_txid
    (backfill,) = table(btc_app, t.scan_backfills)
    assert backfill["to_height"] == chain.height() and backfill["finished_at"] is not None
    only_outside_spends(btc_app.engine, request, {sweep_txid: 40_000})  # swept here with the deposit key


def serve_no_blocks_up_to(app, height, error, monkeypatch):
    """The node fails to serve blocks up to height (as a pruned node does), later ones as usual."""
    plugin = app.plugin("bitcoin")
    real = plugin.fetch_blocks

    def fetch_blocks(start, count, watch):
        if start <= height:
            raise error
        return real(start, count, watch)

    monkeypatch.setattr(plugin, "fetch_blocks", fetch_blocks)


@pytest.mark.parametrize("error", [
    RpcError("getblock", -1, "Block not available (pruned data)"),
    BlockNotFound("block 0f... or one after it left the best chain while fetching"),
], ids=["pruned", "not-found"])
def test_a_rescan_the_node_cannot_serve_is_stopped_with_an_alert_and_new_blocks_are_still_applied(
        btc_app, chain, monkeypatch, error):
    """A rescan from a height the node can't serve (while the scanner's cursor is on its best
    chain) is stopped with its reason and one alert; it no longer holds up the main loop."""
    ann = btc_app.create_account("ann").account_id
    script = btc_app.plugin("bitcoin").watch_key(btc_app.deposit_address(str(ann), "bitcoin")[1])
    top = cursor(btc_app).height
    serve_no_blocks_up_to(btc_app, top, error, monkeypatch)
    request_id, _ = deposits.request_rescan(btc_app.engine, "bitcoin", top - 5, "operator: rescan")
    chain.pay((script, 50_000))
    chain.mine(CONFIRMATIONS)

    scanner = btc_app.scanner("bitcoin")
    assert scanner.tick().status == "ok"
    assert cursor(btc_app).height == chain.height()
    (d,) = btc_app.list_deposits(str(ann))[1]
    assert (d.amount, d.status) == (50_000, "CREDITED")
    state = deposits.backfill_state(btc_app.engine, request_id)
    assert state["finished_at"] is not None and state["stop_reason"] == f"failed at height {top - 5}: {error}"
    (alert,) = [json.loads(e.payload) for e in btc_app.events_after(0, 1000) if e.type == "alert.rescan_failed"]
    assert (alert["backfill_id"], alert["height"], alert["error"]) == (str(request_id), top - 5, str(error))

    chain.mine(1)
    assert scanner.tick().status == "ok" and scanner.run_once().backfilled == 0, "not tried again"
    assert [e.type for e in btc_app.events_after(0, 1000)].count("alert.rescan_failed") == 1


def test_a_rescan_meeting_a_node_outage_stays_open_and_the_run_backs_off(btc_app, chain, monkeypatch):
    top = cursor(btc_app).height
    serve_no_blocks_up_to(btc_app, top, NodeUnavailable("connection refused"), monkeypatch)
    request_id, _ = deposits.request_rescan(btc_app.engine, "bitcoin", top - 5, "operator: rescan")
    chain.mine(1)
    assert btc_app.scanner("bitcoin").tick().status == "node unavailable"
    assert deposits.backfill_state(btc_app.engine, request_id)["finished_at"] is None
    monkeypatch.undo()
    btc_app.scanner("bitcoin").next_attempt = 0
    assert btc_app.scanner("bitcoin").tick().status == "ok"
    state = deposits.backfill_state(btc_app.engine, request_id)
    assert state["finished_at"] is not None and state["stop_reason"] is None


def test_cli_cancel_rescan_ends_an_open_rescan_and_records_who_and_why(btc_app, chain, db_url, tmp_path):
    config_file = write_config(tmp_path / "custody.toml", db_url, chain.rpc.url)
    custody = [sys.executable, "-m", "custody.cli", "scan"]

    def run(*args):
        return subprocess.run([*custody, *args, "--config", str(config_file), "--chain", "bitcoin"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)

    queued = run("rescan", "--from-height", str(cursor(btc_app).height - 5), "--queue", "--staff", "carol")
    assert queued.returncode == 0, queued.stderr[-2000:]
    (request,) = table(btc_app, t.scan_backfills)
    refused = run("cancel-rescan", "--id", str(request["id"]), "--staff", "carol", "--reason", " ")
    assert refused.returncode == 2 and "reason" in refused.stderr
    cancelled = run("cancel-rescan", "--id", str(request["id"]), "--staff", "carol", "--reason", "wrong height")
    assert cancelled.returncode == 0, cancelled.stderr[-2000:]
    assert f"rescan {request['id']}: cancelled by carol" in cancelled.stdout
    (request,) = table(btc_app, t.scan_backfills)
    assert request["finished_at"] is not None and request["stop_reason"] == "cancelled by carol: wrong height"
    assert scan(btc_app).backfilled == 0

    again = run("cancel-rescan", "--id", str(request["id"]), "--staff", "carol", "--reason", "wrong height")
    assert again.returncode == 2 and "already ended: cancelled by carol" in again.stderr
    missing = run("cancel-rescan", "--id", str(request["id"] + 1), "--staff", "carol", "--reason", "typo")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_cli_rescan_refused_for_a_changed_config_records_no_request(btc_app, chain, db_url, tmp_path):
    """The config pins are checked before the request is recorded: exit 2 and nothing queued."""
    config_file = write_config(tmp_path / "custody.toml", db_url, chain.rpc.url, hot_xpub=OTHER_XPUB)
    for queue in ([], ["--queue"]):
        refused = subprocess.run([sys.executable, "-m", "custody.cli", "scan", "rescan", "--config", str(config_file),
                                  "--chain", "bitcoin", "--from-height", "1", "--staff", "carol", *queue],
                                 cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2 and "hot_xpub" in refused.stderr, refused.stderr[-2000:]
        assert table(btc_app, t.scan_backfills) == []


def test_rescan_requests_made_at_the_same_moment_are_one_request(btc_app):
    """The reuse of an open identical request was read, then written: two operators (or a retry
    loop) at the same moment recorded two requests, and the scanner read the range twice."""
    import threading

    barrier = threading.Barrier(8)
    answers = []

    def request():
        barrier.wait()
        answers.append(deposits.request_rescan(btc_app.engine, "bitcoin", 1, "operator: rescan"))

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({request_id for request_id, _ in answers}) == 1, answers
    assert sorted(created for _, created in answers) == [False] * 7 + [True]
    assert len(table(btc_app, t.scan_backfills)) == 1


def test_a_rescan_requested_again_after_it_started_is_a_new_request(btc_app):
    """The reuse matched an open request on its height alone: an operator who added addresses and
    ran the same rescan again got the partly done request back, and the blocks it had read were not
    read again with the new addresses (suspected by today's review)."""
    first, created = deposits.request_rescan(btc_app.engine, "bitcoin", 1, "operator: rescan")
    again, created_again = deposits.request_rescan(btc_app.engine, "bitcoin", 1, "operator: rescan")
    assert created and (again, created_again) == (first, False)  # not started: the same request
    with btc_app.engine.begin() as conn:
        assert store.set_backfill(conn, first, next_height=5)  # the scanner got to height 5
    later, created_later = deposits.request_rescan(btc_app.engine, "bitcoin", 1, "operator: rescan")
    assert created_later and later != first
