"""The scanner under failure: killed mid-scan, node outages, two instances,
changed settings; and the raw parser against the node's own decoding."""
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal

import pytest
from sqlalchemy import select

from chains.base import Watch
from chains.bitcoin.blocks import parse_block
from chains.bitcoin.regtest import RegtestMiner
from custody.app import Custody
from custody.db import schema as t
from custody.jobs import locks
from tests.support.bitcoin import (
    CONFIRMATIONS,
    chain_config,
    deposit_key,
    make_chain_config,
    node_folder,
    random_script,
    spend,
    start_node,
)
from tests.support.databases import ROOT


def scanned_heights(app):
    with app.engine.connect() as conn:
        return [r.height for r in conn.execute(select(t.scanned_blocks.c.height).order_by(t.scanned_blocks.c.height))]


def cursor_height(engine):
    with engine.connect() as conn:
        return conn.execute(select(t.scan_cursors.c.height)).scalar()


def credited_once(app, expected: dict[int, int]):
    with app.engine.connect() as conn:
        batches = conn.execute(select(t.ledger_batches.c.reference).where(t.ledger_batches.c.kind == "deposit")).all()
        deposits = conn.execute(select(t.deposits)).all()
    assert len(batches) == len({b.reference for b in batches}) == len(deposits), "a deposit was credited twice"
    assert all(d.status == "CREDITED" for d in deposits)
    for account, amount in expected.items():
        assert {b.asset: b for b in app.get_balances(str(account))[1]}["BTC"].available == amount


def write_config(path, db_url, rpc_url, **chain):
    settings = chain_config(rpc_url, **chain)
    lines = ['[database]', f'url = "{db_url}"', '[[assets]]', 'asset = "BTC"', 'chain = "bitcoin"', 'decimals = 8',
             f'confirmations = {CONFIRMATIONS}', '[chains.bitcoin]']
    for key, value in settings.items():
        lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_scanner_killed_mid_scan_resumes_with_no_gap_and_no_double_credit(db_url, chain, tmp_path):
    config = make_chain_config(db_url, chain.rpc.url, blocks_per_commit=1, max_reorg_depth=5000)
    app = Custody(config)
    try:
        app.scanner("bitcoin").catch_up()
        start = cursor_height(app.engine)
        accounts = [app.create_account(f"user-{i}").account_id for i in range(4)]
        scripts = [app.plugin("bitcoin").watch_key(app.deposit_address(str(a), "bitcoin")[1]) for a in accounts]
        expected = dict.fromkeys(accounts, 0)
        for i in range(24):  # one deposit in each of 24 blocks, then many empty blocks
            chain.pay((scripts[i % 4], 1_000 + i))
            expected[accounts[i % 4]] += 1_000 + i
            chain.mine(1)
        chain.mine(400)
        tip = chain.height()
        config_file = write_config(tmp_path / "custody.toml", db_url, chain.rpc.url, blocks_per_commit=1,
                                   max_reorg_depth=5000)
        scan = subprocess.Popen([sys.executable, "-m", "custody.cli", "scan", "--config", str(config_file), "--once"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while (cursor_height(app.engine) or 0) < start + 30:
            assert scan.poll() is None and time.monotonic() < deadline, scan.stderr.read().decode()[-2000:]
            time.sleep(0.005)
        os.kill(scan.pid, signal.SIGKILL)
        scan.wait()
        killed_at = cursor_height(app.engine)
        assert start + 30 <= killed_at < tip, "the kill should land in the middle of the scan"

        done = subprocess.run([sys.executable, "-m", "custody.cli", "scan", "--config", str(config_file), "--once"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert cursor_height(app.engine) == tip
        assert scanned_heights(app) == list(range(start - 6, tip + 1)), "every block applied exactly once, in order"
        credited_once(app, expected)
    finally:
        app.close()


def test_a_node_outage_is_retried_with_backoff_and_no_block_is_skipped(db_url, tmp_path):
    nodes = start_node(node_folder("outage"))
    try:
        rpc_url = nodes.rpc_url("bitcoin")
        miner = RegtestMiner(__import__("chains.bitcoin.rpc", fromlist=["BitcoinRPC"]).BitcoinRPC(rpc_url))
        miner.ensure_ready(spendable=3)
        app = Custody(make_chain_config(db_url, rpc_url, rpc_retries=3, rpc_backoff_s=0.01, rpc_timeout_s=2))
        now = [1000.0]
        scanner = app.scanner("bitcoin")
        scanner.clock = lambda: now[0]
        sleeps = []
        app.plugin("bitcoin").rpc.sleep = sleeps.append
        try:
            assert scanner.tick().status == "ok"
            account = app.create_account("ann").account_id
            script = app.plugin("bitcoin").watch_key(app.deposit_address(str(account), "bitcoin")[1])
            miner.pay([(script, 5_000)])
            miner.mine(1)
            before = cursor_height(app.engine)

            nodes.down(("bitcoin",))
            first = scanner.tick()
            assert first.status == "node unavailable" and "unreachable after 4 attempts" in first.detail
            assert sleeps == [0.01, 0.02, 0.04], "the client retries with exponential backoff"
            assert scanner.tick().status == "waiting", "the scanner itself backs off between runs"
            now[0] += 1.0
            assert scanner.tick().status == "node unavailable"
            assert scanner.next_attempt - now[0] == 2.0  # doubled
            assert cursor_height(app.engine) == before, "nothing moved while the node was away"

            nodes.up(("bitcoin",))  # same data folder: the same chain comes back
            miner.mine(CONFIRMATIONS)
            now[0] += 2.0
            assert scanner.tick().status == "ok"
            assert cursor_height(app.engine) == miner.height()
            heights = scanned_heights(app)
            assert heights == list(range(heights[0], heights[-1] + 1))
            credited_once(app, {account: 5_000})
        finally:
            app.close()
    finally:
        nodes.down()


def test_only_one_scanner_per_chain_runs_at_a_time_across_instances(db_url, chain):
    """On both databases (SQLite: `custody serve` and `custody scan` on one file)."""
    first = Custody(make_chain_config(db_url, chain.rpc.url))
    second = Custody(make_chain_config(db_url, chain.rpc.url))
    try:
        first.scanner("bitcoin").catch_up()
        chain.mine(2)
        with locks.exclusive(first.engine, "custody.scan.bitcoin") as held:
            assert held
            assert second.scanner("bitcoin").run_once().busy
        result = second.scanner("bitcoin").run_once()
        assert not result.busy and result.applied == 2
        assert first.scanner("bitcoin").run_once().applied == 0
    finally:
        first.close()
        second.close()


def test_the_parser_agrees_with_the_nodes_own_decoding_of_a_varied_block(chain, btc_app):
    """FAILURE_MODES 19 (golden block): every output of every transaction, matched on raw
    scriptPubKey, with the txid, index and value the node reports."""
    scripts = [random_script(), b"\x00\x20" + bytes(range(32)), b"\x51\x20" + bytes(range(32, 64)),
               b"\x76\xa9\x14" + bytes(20) + b"\x88\xac", b"\xa9\x14" + bytes(range(20)) + b"\x87",
               b"\x6a\x04test"]
    account = btc_app.create_account("ann").account_id
    address = btc_app.deposit_address(str(account), "bitcoin")[1]
    txid, _ = chain.pay(*[(s, 1_000 + i) for i, s in enumerate(scripts)],
                        (btc_app.plugin("bitcoin").watch_key(address), 70_000))
    block_hash = chain.mine(1)[0]
    chain.miner.send(spend((txid, 6), 70_000, deposit_key(0), random_script()))  # a segwit spend, next block
    chain.mine(1)
    for h in (block_hash, chain.rpc.call("getbestblockhash")):
        decoded = chain.rpc.call("getblock", h, True, True)
        expected = [(tx["txid"], out["n"], int(Decimal(out["value"]) * 100_000_000))
                    for tx in decoded["tx"] for out in tx["vout"]]
        keys = {bytes.fromhex(out["scriptPubKey"]["hex"]) for tx in decoded["tx"] for out in tx["vout"]}
        parsed = parse_block(bytes.fromhex(chain.rpc.call("getblock", h, False)), decoded["height"], keys)
        assert [(r.txid, r.index, r.amount) for r in parsed.receipts] == expected
        assert parsed.hash == h and parsed.parent_hash == decoded["previousblockhash"]
    spent = btc_app.plugin("bitcoin").fetch_block(decoded["height"], Watch(set(), {(txid, 6)}))
    assert [(s.spent_txid, s.spent_index) for s in spent.spends] == [(txid, 6)]


def test_blocks_fetched_ahead_then_reorged_away_are_never_applied(db_url, chain):
    """The plugin fetches the next batch's raw blocks ahead. A reorg replaces them before the scanner
    uses them; the deposit is in the first of them, deep enough within that batch to be credited.
    The scanner checks a batch's last block against the node's best chain before applying it, so it
    ends on the node's chain and nothing is credited, reversed or frozen for the branch it left."""
    app = Custody(make_chain_config(db_url, chain.rpc.url, blocks_per_commit=8))
    try:
        scanner = app.scanner("bitcoin")
        scanner.catch_up()
        account = app.create_account("ann").account_id
        script = app.plugin("bitcoin").watch_key(app.deposit_address(str(account), "bitcoin")[1])
        start = chain.height()
        chain.mine(8)
        chain.pay((script, 8_000))
        chain.mine(8)  # the deposit is in block start + 9, with 8 confirmations at start + 16
        assert scanner.run_once(max_blocks=8).applied == 8  # start+1..start+8; start+9..start+16 fetched ahead
        assert app.plugin("bitcoin")._ahead is not None
        time.sleep(0.5)  # lets the fetcher process fetch them before the reorg (the test holds either way)

        chain.reorg(start + 9, 10)  # replaces start+9..start+16; bcoin drops the deposit's transaction
        scanner.catch_up()
        with app.engine.connect() as conn:
            cursor = conn.execute(select(t.scan_cursors)).one()
            remembered = conn.execute(select(t.scanned_blocks.c.height, t.scanned_blocks.c.hash)).all()
            deposits = conn.execute(select(t.deposits.c.status)).scalars().all()
            flagged = conn.execute(select(t.ledger_batches.c.id).where(t.ledger_batches.c.flagged)).all()
            frozen = conn.execute(select(t.accounts.c.frozen).where(t.accounts.c.id == account)).scalar()
        assert (cursor.height, cursor.hash) == (chain.height(), chain.rpc.call("getbestblockhash"))
        assert all(chain.rpc.call("getblockhash", h) == block_hash for h, block_hash in remembered if h > start)
        assert deposits == [] and flagged == [] and not frozen, "the stale blocks were never applied"
        balance = {b.asset: b for b in app.get_balances(str(account))[1]}["BTC"]
        assert (balance.available, balance.pending) == (0, 0)
    finally:
        app.close()


def test_a_failed_block_commit_makes_the_scanner_read_its_unspent_outputs_again(btc_app, chain, monkeypatch):
    """Blocks whose transaction fails may still have committed (a connection lost during the
    commit): the scanner drops the unspent outputs it keeps in memory and reads them again,
    so that a later spend of an output those blocks created is still seen."""
    from sqlalchemy.exc import OperationalError

    from custody.deposits import store

    scanner = btc_app.scanner("bitcoin")
    account = btc_app.create_account("ann").account_id
    script = btc_app.plugin("bitcoin").watch_key(btc_app.deposit_address(str(account), "bitcoin")[1])
    txid, _ = chain.pay((script, 70_000))
    chain.mine(1)
    real_move = store.move_cursor

    def move_then_lose_the_connection(conn, *args):
        real_move(conn, *args)
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(store, "move_cursor", move_then_lose_the_connection)
    assert scanner.tick().status == "error"
    assert scanner.outpoints is None
    monkeypatch.setattr(store, "move_cursor", real_move)
    scanner.next_attempt = 0.0
    assert scanner.tick().status == "ok"
    with btc_app.engine.connect() as conn:
        assert scanner.outpoints == store.unspent_outpoints(conn, "bitcoin")
        (deposit,) = conn.execute(select(t.deposits.c.txid, t.deposits.c.output_index)).all()
    assert deposit.txid == txid and (txid, deposit.output_index) in scanner.outpoints


def test_an_address_registered_while_its_block_is_being_applied_still_gets_its_payment(btc_app, chain, monkeypatch):
    """register_deposit_address with a creation height above the cursor, while the scanner applies a
    group of blocks it read before the address existed, one of them paying it: the backfill the
    registration asks for finds the payment."""
    from custody.deposits import service as deposits
    from custody.deposits import store
    from tests.support.bitcoin import DEPOSIT_XPUB

    plugin, scanner = btc_app.plugin("bitcoin"), btc_app.scanner("bitcoin")
    ann = btc_app.create_account("ann").account_id
    far = plugin.derive_address(DEPOSIT_XPUB, 100_000)
    chain.mine(2)
    created_height = chain.height()  # handed out by an earlier system at this height
    chain.pay((far.watch_key, 70_000))
    chain.mine(1 + CONFIRMATIONS)
    real_fetch, registered = plugin.fetch_blocks, []

    def fetch_then_register(start, count, watch):
        blocks = real_fetch(start, count, watch)
        if not registered and start <= created_height + 1 < start + len(blocks):
            with btc_app.engine.connect() as conn:
                assert store.load_cursor(conn, "bitcoin").height < created_height, "registered above the cursor"
            deposits.register_deposit_address(btc_app.engine, plugin, "bitcoin", DEPOSIT_XPUB, ann, 100_000,
                                              created_height)
            registered.append(start)
        return blocks

    monkeypatch.setattr(plugin, "fetch_blocks", fetch_then_register)
    scanner.catch_up()
    monkeypatch.setattr(plugin, "fetch_blocks", real_fetch)
    assert registered
    scanner.catch_up()
    with btc_app.engine.connect() as conn:
        found = conn.execute(select(t.deposits.c.amount, t.deposits.c.status, t.deposits.c.account_id)).all()
    assert [(d.amount, d.status, d.account_id) for d in found] == [(70_000, "CREDITED", ann)]


def test_a_node_behind_the_cursor_on_the_same_chain_is_waited_for_not_unwound(btc_app, chain, monkeypatch):
    """A node that restarts, resyncs or is swapped for one still syncing reports a lower tip on our
    own chain: that is no reorg, and nothing is orphaned, reversed or frozen."""
    from chains.base import BlockRef

    plugin, scanner = btc_app.plugin("bitcoin"), btc_app.scanner("bitcoin")
    ann = btc_app.create_account("ann").account_id
    chain.pay((plugin.watch_key(btc_app.deposit_address(str(ann), "bitcoin")[1]), 50_000))
    chain.mine(CONFIRMATIONS)
    scanner.catch_up()
    top = chain.height()
    behind = BlockRef(top - CONFIRMATIONS, plugin.block_hash(top - CONFIRMATIONS))
    monkeypatch.setattr(plugin, "tip", lambda: behind)
    assert scanner.tick().status == "ok"
    assert cursor_height(btc_app.engine) == top
    monkeypatch.undo()
    chain.mine(1)
    scanner.catch_up()
    with btc_app.engine.connect() as conn:
        assert [d.status for d in conn.execute(select(t.deposits.c.status))] == ["CREDITED"]
        assert conn.execute(select(t.accounts.c.frozen).where(t.accounts.c.id == ann)).scalar() is False
        assert conn.execute(select(t.ledger_batches.c.kind).where(t.ledger_batches.c.flagged)).all() == []
    # A lower tip that is not a block we applied is still a reorg (the existing reorg tests run it on the node).
    assert not scanner._node_behind(BlockRef(top - 1, "00" * 32))


@pytest.mark.parametrize("answer", ["not found", "no blocks", "off the best chain"])
def test_a_node_announcing_a_tip_it_cannot_serve_is_backed_off_not_spun_on(btc_app, chain, monkeypatch, answer):
    """A node whose tip is above the cursor while its blocks there are missing (pruned, half
    synced, a broken proxy in front of it) made the run read the tip again without end, hammering
    the node and holding the scan lock. The run now gives up after a few tries and backs off."""
    from chains.base import BlockNotFound, BlockRef
    from custody.deposits.scanner import MAX_REREADS_PER_RUN

    plugin, scanner = btc_app.plugin("bitcoin"), btc_app.scanner("bitcoin")
    scanner.catch_up()
    before = cursor_height(btc_app.engine)
    chain.mine(2)
    real_tip, real_fetch = plugin.tip, plugin.fetch_blocks
    calls = []

    def fetch(start, count, watch):
        calls.append(start)
        if len(calls) > 50:
            raise AssertionError("the scanner keeps asking: it spins on the node")
        if answer == "not found":
            raise BlockNotFound(f"no block at {start}")
        if answer == "no blocks":
            return []
        return real_fetch(start, count, watch)

    monkeypatch.setattr(plugin, "fetch_blocks", fetch)
    if answer == "off the best chain":  # the node serves blocks its best chain no longer has
        monkeypatch.setattr(plugin, "block_hash", lambda height: "00" * 32)
        monkeypatch.setattr(plugin, "tip", lambda: BlockRef(real_tip().height, real_tip().hash))
    result = scanner.tick()
    assert result.status == "node unavailable" and "times in a row" in result.detail, result
    assert len(calls) == MAX_REREADS_PER_RUN
    assert scanner.next_attempt > 0, "the scanner backs off before it tries again"
    assert cursor_height(btc_app.engine) == before
    monkeypatch.undo()
    scanner.next_attempt = 0.0
    assert scanner.tick().status == "ok"
    assert cursor_height(btc_app.engine) == chain.height()


def test_a_best_chain_that_keeps_flipping_is_backed_off_not_followed_without_end(db_url, chain, monkeypatch):
    """Two tips of one height served in turn (two nodes behind a round-robin proxy in a stale-block
    race): every tip read was a reorg, and one run flipped without end, crediting and reversing a
    deposit and freezing its account each time. After a few unwinds in a row the run backs off."""
    from chains.base import Block, BlockRef
    from custody.deposits.scanner import MAX_UNWINDS_IN_A_ROW

    app = Custody(make_chain_config(db_url, chain.rpc.url, confirmations=1))
    try:
        scanner, plugin = app.scanner("bitcoin"), app.plugin("bitcoin")
        scanner.catch_up()
        top = chain.height()
        real, parent = plugin.block_hash(top), plugin.block_hash(top - 1)
        other = Block(top, "ab" * 32, parent, (), ())
        real_hash, real_fetch = plugin.block_hash, plugin.fetch_blocks
        serving, tips = ["real"], []

        def tip():
            tips.append(1)
            assert len(tips) < 40, "the run follows the flips without end"
            serving[0] = "other" if serving[0] == "real" else "real"
            return BlockRef(top, real if serving[0] == "real" else other.hash)

        def block_hash(height):
            return (real if serving[0] == "real" else other.hash) if height == top else real_hash(height)

        def fetch(start, count, watch):
            if start == top and serving[0] == "other":
                return [other]
            return real_fetch(start, min(count, top - start + 1), watch)

        monkeypatch.setattr(plugin, "tip", tip)
        monkeypatch.setattr(plugin, "block_hash", block_hash)
        monkeypatch.setattr(plugin, "fetch_blocks", fetch)
        result = scanner.tick()
        assert result.status == "node unavailable" and "changed" in result.detail, result
        assert len(tips) <= 2 * MAX_UNWINDS_IN_A_ROW + 2
    finally:
        app.close()


@pytest.mark.parametrize("failure", ["unreachable", "rpc error", "not found"])
def test_a_block_the_node_fails_to_serve_is_waited_for_never_skipped(db_url, chain, monkeypatch, failure):
    """FAILURE_MODES 18: over 220 blocks with deposits before, in and after it, the node fails to serve
    block N (unreachable, an RPC error, 'not found' below its tip) for several runs while serving the
    others. The cursor stays below N, nothing from N on is recorded or credited; once the node serves
    N again every deposit is credited exactly once and every block applied once, in order."""
    from chains.base import BlockNotFound, NodeUnavailable
    from chains.bitcoin.rpc import RpcError

    app = Custody(make_chain_config(db_url, chain.rpc.url, blocks_per_commit=16, max_reorg_depth=5000))
    try:
        scanner, plugin = app.scanner("bitcoin"), app.plugin("bitcoin")
        scanner.catch_up()
        start = chain.height()
        n = start + 105  # in the middle of the group of 16 blocks start+97..start+112
        # A deposit in each of these blocks: credited and still pending below that group, in it before
        # N, in N, right after N, and far after it.
        offsets = [1, 40, 95, 100, 104, 105, 106, 150, 210]
        accounts = [app.create_account(f"user-{i}").account_id for i in range(len(offsets))]
        paid_in = {}
        for i, (account, offset) in enumerate(zip(accounts, offsets)):
            chain.mine(start + offset - 1 - chain.height())
            chain.pay((plugin.watch_key(app.deposit_address(str(account), "bitcoin")[1]), 10_000 + i))
            chain.mine(1)
            paid_in[account] = chain.height()
        chain.mine(start + 220 - chain.height())
        assert n in paid_in.values()

        error = {"unreachable": NodeUnavailable("the node closed the connection"),
                 "rpc error": RpcError("getblock", -32603, "Internal error"),
                 "not found": BlockNotFound(f"no block at height {n}")}[failure]
        real_raw_blocks, failing, refused = plugin._raw_blocks, [True], []

        def raw_blocks(first, count):  # the plugin's fetch of raw blocks first..first+count-1, in order
            for height, item in enumerate(real_raw_blocks(first, count), first):
                if height == n and failing[0]:
                    refused.append(height)
                    raise error
                yield item

        monkeypatch.setattr(plugin, "_raw_blocks", raw_blocks)
        for run in range(4):
            scanner.next_attempt = 0.0
            result = scanner.tick()
            assert result.status in ("node unavailable", "error"), result
            cursor = cursor_height(app.engine)
            assert start + 96 <= cursor, f"run {run}: the blocks before N's group were served and must be applied"
            assert cursor <= n - 1, f"run {run}: the cursor is at {cursor}, block {n} was never applied"
            assert scanned_heights(app)[-1] == cursor
            with app.engine.connect() as conn:
                recorded = conn.execute(select(t.deposits.c.account_id, t.deposits.c.block_height)).all()
                utxo_heights = conn.execute(select(t.utxos.c.block_height)).scalars().all()
            assert sorted(recorded) == sorted((a, h) for a, h in paid_in.items() if h <= cursor), (
                "exactly the deposits up to the cursor")
            assert all(h <= cursor for h in utxo_heights)
            for account, height in paid_in.items():
                b = {b.asset: b for b in app.get_balances(str(account))[1]}["BTC"]
                credited = height + CONFIRMATIONS - 1 <= cursor
                assert (b.available > 0, b.pending > 0) == (credited, height <= cursor and not credited), account
        assert len(refused) >= 4, "the node was asked for block N on every run"

        failing[0] = False  # the node serves block N again
        scanner.next_attempt = 0.0
        assert scanner.tick().status == "ok"
        assert cursor_height(app.engine) == chain.height()
        assert scanned_heights(app) == list(range(start - 6, chain.height() + 1)), "every block once, in order"
        credited_once(app, {account: 10_000 + i for i, account in enumerate(accounts)})
        with app.engine.connect() as conn:
            heights = conn.execute(select(t.deposits.c.account_id, t.deposits.c.block_height)).all()
        assert sorted(heights) == sorted(paid_in.items())
        credited = [e for e in app.events_after(0, 10_000) if e.type == "deposit.credited"]
        assert len(credited) == len(accounts)
    finally:
        app.close()
