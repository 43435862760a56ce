"""Bitcoin deposits against a real bcoin regtest node: detection, confirmations,
crediting, reorgs, the UTXO set. The db_url fixture checks the ledger
invariants after every test (on SQLite and on PostgreSQL)."""
import json

import pytest
from sqlalchemy import select

from custody.db import schema as t
from custody.db.engine import make_engine, read_transaction
from custody.deposits import store
from custody.errors import FailedPrecondition
from custody.ledger.invariants import check
from custody.withdrawals.sender import BitcoinSender
from tests.support.bitcoin import CONFIRMATIONS, HOT_XPUB, deposit_key, random_script, spend
from tests.support.withdrawals import withdrawal_config
from tests.support.reconciliation import only_outside_spends

SATS = 100_000_000


def scan(app):
    return app.scanner("bitcoin").catch_up()


def script_of(app, address):
    return app.plugin("bitcoin").watch_key(address)


def account_with_address(app, name):
    account = app.create_account(name)
    _, address = app.deposit_address(str(account.account_id), "bitcoin")
    return account.account_id, address


def deposits_of(app, account_id):
    return app.list_deposits(str(account_id))[1]


def balance(app, account_id, asset="BTC"):
    return {b.asset: b for b in app.get_balances(str(account_id))[1]}[asset]


def rows(app, table, **where):
    with app.engine.connect() as conn:
        q = select(table)
        for k, v in where.items():
            q = q.where(table.c[k] == v)
        return [dict(r._mapping) for r in conn.execute(q)]


def event_types(app):
    return [e.type for e in app.events_after(0, 10_000)]


def job_would_spend(app, db_url, chain):
    """(wallet, txid, index) of the coins the withdrawal job would select now (BitcoinSender._spendable,
    at its fallback fee rate), the credited deposit coins included (include_deposit_wallet), the
    app's depth of CONFIRMATIONS."""
    config = withdrawal_config(db_url, chain.rpc.url, confirmations=CONFIRMATIONS, include_deposit_wallet=True)
    job = BitcoinSender(config, app.engine, app.plugin("bitcoin"), None, app.notifier.notify)
    with read_transaction(app.engine) as conn:
        coins = job._spendable(conn, config.withdrawals.fallback_fee_rate)
    return [(wallet, c.txid, c.index) for wallet, c in coins]


def test_deposit_is_pending_then_credited_exactly_at_the_configured_depth(btc_app, chain):
    """One payment: PENDING with 1, 2 confirmations, CREDITED at the asset's 3, shown as pending before."""
    account, address = account_with_address(btc_app, "ann")
    txid, _ = chain.pay((script_of(btc_app, address), 150_000_000))
    scan(btc_app)
    assert deposits_of(btc_app, account) == [], "a mempool transaction is not a deposit"
    for depth in range(1, CONFIRMATIONS):
        chain.mine(1)
        scan(btc_app)
        (d,) = deposits_of(btc_app, account)
        assert (d.status, d.confirmations, d.txid, d.index, d.amount, d.address) == (
            "PENDING", depth, txid, 0, 150_000_000, address)
        b = balance(btc_app, account)
        assert (b.available, b.pending) == (0, 150_000_000)
    chain.mine(1)
    scan(btc_app)
    (d,) = deposits_of(btc_app, account)
    assert (d.status, d.confirmations) == ("CREDITED", CONFIRMATIONS)
    b = balance(btc_app, account)
    assert (b.available, b.held, b.pending) == (150_000_000, 0, 0)
    types = event_types(btc_app)
    assert types.count("deposit.pending") == 1 and types.count("deposit.credited") == 1
    assert types.count("ledger.deposit") == 1
    ledger_event = next(e for e in btc_app.events_after(0, 100) if e.type == "ledger.deposit")
    assert json.loads(ledger_event.payload)["postings"] == [{"asset": "BTC", "debit": "wallet:bitcoin:deposit",
                                                               "credit": f"user:{account}:available",
                                                               "amount": "150000000"}]


def test_the_scanner_s_lookups_take_more_values_than_a_statement_may_bind(btc_app, chain):
    """A scanned group of blocks paying over 65,535 of our addresses, or as many transactions,
    bound one parameter per address id or txid: PostgreSQL refuses that many (SQLite's default
    build past 32,766), the group failed, and the scanner retried it for good, crediting nobody
    again (the deposits review paid 66,000 addresses on bcoin to show it). Each lookup now binds
    one parameter whatever the count."""
    ann, address = account_with_address(btc_app, "ann")
    txid, _ = chain.pay((script_of(btc_app, address), 80_000))
    chain.mine(CONFIRMATIONS)
    scan(btc_app)
    many = 70_000
    with read_transaction(btc_app.engine) as conn:
        (address_id,) = conn.execute(select(t.chain_addresses.c.id).where(t.chain_addresses.c.address == address)
                                     ).scalars().all()
        other_ids = range(10**9, 10**9 + many)
        other_keys = [(f"{n:064x}", 0) for n in range(many)]
        assert list(store.address_rows(conn, [address_id, *other_ids])) == [address_id]
        assert [a for a, _, _ in store.addresses_by_id(conn, "bitcoin", [address_id, *other_ids])] == [address_id]
        (deposit,) = store.deposits_by_key(conn, "bitcoin", [(txid, 0), *other_keys]).values()
        assert (deposit["account_id"], deposit["amount"], deposit["status"]) == (ann, 80_000, "CREDITED")
        assert store.known_utxos(conn, "bitcoin", [(txid, 0), *other_keys]) == {(txid, 0)}


def test_one_transaction_paying_several_users_and_repeat_payments_are_each_credited_once(btc_app, chain):
    """Three users in one transaction (one of them twice), a second transaction to the same
    address, and an unwatched output alongside: every deposit output credited once."""
    users = [account_with_address(btc_app, f"user-{i}") for i in range(3)]
    (a, addr_a), (b, addr_b), (c, addr_c) = users
    chain.pay((script_of(btc_app, addr_a), 1_000), (script_of(btc_app, addr_b), 2_000),
              (random_script(), 4_000), (script_of(btc_app, addr_c), 3_000), (script_of(btc_app, addr_a), 7))
    chain.pay((script_of(btc_app, addr_a), 500))
    chain.mine(CONFIRMATIONS)
    scan(btc_app)
    scan(btc_app)  # scanning again changes nothing
    assert balance(btc_app, a).available == 1_507
    assert balance(btc_app, b).available == 2_000
    assert balance(btc_app, c).available == 3_000
    deposits = rows(btc_app, t.deposits)
    assert sorted((d["amount"], d["status"]) for d in deposits) == [
        (7, "CREDITED"), (500, "CREDITED"), (1_000, "CREDITED"), (2_000, "CREDITED"), (3_000, "CREDITED")]
    assert len({(d["txid"], d["output_index"]) for d in deposits}) == 5
    assert len(rows(btc_app, t.ledger_batches, kind="deposit")) == 5
    assert len(rows(btc_app, t.utxos)) == 5, "the unwatched output is not ours"


def test_payments_to_addresses_the_service_does_not_watch_are_ignored(btc_app, chain):
    """Outputs to foreign scripts leave no deposit, no UTXO and no ledger entry."""
    account, _ = account_with_address(btc_app, "ann")
    chain.pay((random_script(), 10_000), (random_script(), 20_000))
    chain.mine(CONFIRMATIONS)
    result = scan(btc_app)
    assert result.applied == CONFIRMATIONS
    assert rows(btc_app, t.deposits) == [] and rows(btc_app, t.utxos) == []
    assert rows(btc_app, t.ledger_batches) == []
    assert balance(btc_app, account).pending == 0


def test_an_unconfirmed_deposit_replaced_by_a_conflicting_transaction_is_never_credited(btc_app, chain):
    """FAILURE_MODES 12: the mempool is never counted; the conflicting transaction wins."""
    account, address = account_with_address(btc_app, "ann")
    chain.mine(1)
    coin = chain.miner._take_coin(20_000)
    chain.miner._used.discard((coin.txid, coin.index))
    to_user, raw_user = chain.miner.pay([(script_of(btc_app, address), 10_000)], broadcast=False)
    chain.miner._used.discard((coin.txid, coin.index))
    chain.miner.send(raw_user)
    scan(btc_app)
    assert rows(btc_app, t.deposits) == []
    chain.reorg(chain.height(), 0)  # bcoin: invalidating the tip wipes the mempool
    chain.mine(1)
    _, raw_back = chain.miner.pay([(random_script(), 10_000)], broadcast=False)  # the same coin, elsewhere
    chain.miner.send(raw_back)
    chain.mine(CONFIRMATIONS)
    scan(btc_app)
    assert rows(btc_app, t.deposits) == [] and balance(btc_app, account).available == 0


def test_a_pending_deposit_orphaned_by_a_reorg_is_credited_once_when_mined_again(btc_app, chain):
    account, address = account_with_address(btc_app, "ann")
    txid, raw = chain.pay((script_of(btc_app, address), 42_000))
    chain.mine(1)
    scan(btc_app)
    (d,) = deposits_of(btc_app, account)
    first_height = d.block_height
    assert d.status == "PENDING" and balance(btc_app, account).pending == 42_000

    chain.reorg(first_height, 2)  # the block is replaced; bcoin drops its transactions
    result = scan(btc_app)
    assert result.reorgs == 1
    (d,) = deposits_of(btc_app, account)
    assert (d.status, d.confirmations) == ("ORPHANED", 0)
    assert balance(btc_app, account).pending == 0
    assert rows(btc_app, t.utxos) == []

    chain.miner.send(raw)  # re-broadcast: mined again in another block
    chain.mine(1)
    scan(btc_app)
    (d,) = deposits_of(btc_app, account)
    assert (d.status, d.txid, d.confirmations) == ("PENDING", txid, 1)
    assert d.block_height == first_height + 2
    chain.mine(CONFIRMATIONS - 1)
    scan(btc_app)
    (d,) = deposits_of(btc_app, account)
    assert d.status == "CREDITED"
    assert balance(btc_app, account).available == 42_000
    assert len(rows(btc_app, t.ledger_batches, kind="deposit")) == 1
    assert event_types(btc_app).count("deposit.orphaned") == 1


def test_a_credited_deposit_dropped_by_a_deeper_reorg_is_reversed_and_the_account_frozen(btc_app, chain, db_url):
    account, address = account_with_address(btc_app, "ann")
    other = btc_app.create_account("ben").account_id
    chain.pay((script_of(btc_app, address), SATS))
    chain.mine(CONFIRMATIONS)
    scan(btc_app)
    (d,) = deposits_of(btc_app, account)
    assert d.status == "CREDITED"
    # The user moves most of it away before the reorg: the reversal leaves a negative balance.
    btc_app.transfer("exchange", "move-1", str(account), str(other), "BTC", str(60_000_000))

    chain.reorg(d.block_height, CONFIRMATIONS + 1)  # deeper than the confirmation depth
    scan(btc_app)
    (d,) = deposits_of(btc_app, account)
    assert d.status == "REVERSED"
    assert balance(btc_app, account).available == 40_000_000 - SATS
    (acct,) = rows(btc_app, t.accounts, id=account)
    assert acct["frozen"] and "reversed" in acct["frozen_reason"]
    (reversal,) = rows(btc_app, t.ledger_batches, kind="deposit_reversal")
    assert reversal["flagged"] and reversal["reference"] == f"deposit:{d.deposit_id}"
    alerts = [json.loads(e.payload) for e in btc_app.events_after(0, 100) if e.type == "alert.deposit_reversed"]
    assert [(a["deposit_id"], a["account_frozen"]) for a in alerts] == [(str(d.deposit_id), True)]
    engine = make_engine(db_url)
    try:
        report = check(engine)
    finally:
        engine.dispose()
    assert report.ok, report.render()  # not a violation...
    flagged = [f for f in report.findings if f.severity == "flagged"]
    assert any(f"user:{account}:available" in f.message for f in flagged), report.render()  # ...but reported
    with pytest.raises(FailedPrecondition, match="frozen"):
        btc_app.transfer("exchange", "move-2", str(account), str(other), "BTC", "1")


def test_a_coinbase_deposit_waits_for_maturity(btc_app, db_url, chain):
    """FAILURE_MODES 17: a coinbase output is not credited, nor spent by the withdrawal job, before
    depth 101: a pool payout straight to a user's deposit address, and a block mined to the hot
    wallet (the coins the job spends by default). Both are past the job's own depth (CONFIRMATIONS)
    long before: only maturity holds them back."""
    account, address = account_with_address(btc_app, "pool")
    hot = btc_app.plugin("bitcoin").derive_address(HOT_XPUB, 1)
    chain.miner.mine(1, address)
    chain.pay((random_script(), 1_000))  # its fee goes to the next coinbase: worth spending at any height
    chain.miner.mine(1, hot.address)
    chain.mine(CONFIRMATIONS + 95)  # 100 confirmations of the deposit's coinbase, 99 of the hot one's
    scan(btc_app)
    (d,) = deposits_of(btc_app, account)
    assert (d.status, d.confirmations, d.coinbase) == ("PENDING", 100, True)
    (hot_coin,) = rows(btc_app, t.utxos, wallet="hot")
    assert (hot_coin["coinbase"], hot_coin["block_height"]) == (True, d.block_height + 1)
    assert job_would_spend(btc_app, db_url, chain) == []

    chain.mine(1)  # 101 and 100
    scan(btc_app)
    (d,) = deposits_of(btc_app, account)
    assert (d.status, d.confirmations) == ("CREDITED", 101)
    assert job_would_spend(btc_app, db_url, chain) == [("deposit", d.txid, d.index)]

    chain.mine(1)  # 102 and 101
    scan(btc_app)
    assert job_would_spend(btc_app, db_url, chain) == [("hot", hot_coin["txid"], hot_coin["output_index"]),
                                                       ("deposit", d.txid, d.index)]


def test_the_utxo_set_tracks_hot_wallet_outputs_and_spends_without_crediting_anyone(btc_app, db_url, chain):
    """FAILURE_MODES 13: a sweep from a deposit address to the hot wallet is no deposit. The
    withdrawal job spends the sweep's output, never the deposit output it spent."""
    account, address = account_with_address(btc_app, "ann")
    txid, _ = chain.pay((script_of(btc_app, address), 80_000))
    chain.mine(CONFIRMATIONS)
    scan(btc_app)
    assert job_would_spend(btc_app, db_url, chain) == [("deposit", txid, 0)]  # credited: include_deposit_wallet
    (hot,) = [r for r in rows(btc_app, t.chain_addresses, wallet="hot") if r["key_index"] == 0]
    assert len(rows(btc_app, t.chain_addresses, wallet="cold")) == 3
    sweep = spend((txid, 0), 80_000, deposit_key(0), bytes(hot["watch_key"]))
    sweep_txid = chain.miner.send(sweep)
    chain.mine(1)
    sweep_height = chain.height()
    scan(btc_app)
    (deposit_utxo,) = rows(btc_app, t.utxos, wallet="deposit")
    (hot_utxo,) = rows(btc_app, t.utxos, wallet="hot")
    assert (deposit_utxo["txid"], deposit_utxo["spent_txid"]) == (txid, sweep_txid)
    assert (hot_utxo["txid"], hot_utxo["amount"], hot_utxo["spent_txid"]) == (sweep_txid, 79_000, None)
    assert len(rows(btc_app, t.deposits)) == 1 and balance(btc_app, account).available == 80_000
    assert job_would_spend(btc_app, db_url, chain) == [], "the sweep is not yet as deep as the job spends"
    chain.mine(CONFIRMATIONS - 1)
    scan(btc_app)
    assert job_would_spend(btc_app, db_url, chain) == [("hot", sweep_txid, 0)]

    # A reorg that drops the sweep un-spends the deposit output and forgets the hot one.
    chain.reorg(sweep_height, CONFIRMATIONS + 1)
    scan(btc_app)
    (deposit_utxo,) = rows(btc_app, t.utxos, wallet="deposit")
    assert deposit_utxo["spent_txid"] is None and rows(btc_app, t.utxos, wallet="hot") == []
    assert job_would_spend(btc_app, db_url, chain) == [("deposit", txid, 0)]


def test_deposit_addresses_are_stable_never_shared_and_new_on_request(btc_app):
    """FAILURE_MODES 33 and 23: one address per account until a new one is asked for."""
    a = btc_app.create_account("ann").account_id
    b = btc_app.create_account("ben").account_id
    _, first = btc_app.deposit_address(str(a), "bitcoin")
    assert btc_app.deposit_address(str(a), "bitcoin")[1] == first
    _, second = btc_app.deposit_address(str(a), "bitcoin", new=True, client="exchange", idempotency_key="second")
    _, bens = btc_app.deposit_address(str(b), "bitcoin")
    assert len({first, second, bens}) == 3
    assert btc_app.deposit_address(str(a), "bitcoin")[1] == second
    owners = {r["address"]: r["account_id"] for r in rows(btc_app, t.chain_addresses, wallet="deposit")}
    assert owners == {first: a, second: a, bens: b}



def test_an_output_paid_and_spent_within_one_scanned_batch_is_recorded_spent(btc_app, chain, request):
    """A deposit and its sweep in the same block, and another pair in consecutive blocks applied in
    one batch: the UTXO set must not keep spent outputs (they would be picked for withdrawals).
    The sweeps are made here with the deposit key, outside the service: invariant 4 names each as a
    spend of our coins that nothing booked (the ledger still holds the 110,000 the chain no longer does)."""
    account, address = account_with_address(btc_app, "ann")
    same_txid, _ = chain.pay((script_of(btc_app, address), 50_000))
    same_sweep = chain.miner.send(spend((same_txid, 0), 50_000, deposit_key(0), random_script()))
    chain.mine(1)
    next_txid, _ = chain.pay((script_of(btc_app, address), 60_000))
    chain.mine(1)
    next_sweep = chain.miner.send(spend((next_txid, 0), 60_000, deposit_key(0), random_script()))
    chain.mine(CONFIRMATIONS)
    scan(btc_app)  # every block above in one fetch batch
    spent = {(u["txid"], u["spent_txid"]) for u in rows(btc_app, t.utxos)}
    assert spent == {(same_txid, same_sweep), (next_txid, next_sweep)}
    assert balance(btc_app, account).available == 110_000
    only_outside_spends(btc_app.engine, request, {same_sweep: 50_000, next_sweep: 60_000})


def test_a_credited_deposit_reversed_by_a_deep_reorg_and_mined_again_ends_credited_once(btc_app, chain):
    """FAILURE_MODES 6, variant: the reversed transaction is re-mined in another block. The deposit
    is credited again under the same key: one net credit, the credit, reversal and re-credit all in
    the ledger and the events; the account stays frozen until staff review it (docs/deposits.md)."""
    account, address = account_with_address(btc_app, "ann")
    txid, raw = chain.pay((script_of(btc_app, address), SATS))
    chain.mine(CONFIRMATIONS)
    scan(btc_app)
    (d,) = deposits_of(btc_app, account)
    first_block = (d.block_height, d.block_hash)
    assert d.status == "CREDITED"

    chain.reorg(d.block_height, CONFIRMATIONS + 1)  # deeper than the confirmation depth; the tx vanishes
    scan(btc_app)
    (d,) = deposits_of(btc_app, account)
    assert d.status == "REVERSED" and balance(btc_app, account).available == 0

    chain.miner.send(raw)  # the same transaction, mined again in another block
    chain.mine(CONFIRMATIONS)
    scan(btc_app)
    (d,) = deposits_of(btc_app, account)
    assert (d.status, d.txid, d.index, d.confirmations) == ("CREDITED", txid, 0, CONFIRMATIONS)
    assert (d.block_height, d.block_hash) != first_block
    assert balance(btc_app, account).available == SATS, "credited exactly once overall"
    batches = rows(btc_app, t.ledger_batches)
    assert sorted((b["kind"], b["flagged"], b["reference"]) for b in batches) == [
        ("deposit", False, f"deposit:{d.deposit_id}"), ("deposit", False, f"deposit:{d.deposit_id}"),
        ("deposit_reversal", True, f"deposit:{d.deposit_id}")]
    types = [e for e in event_types(btc_app) if e.startswith(("deposit.", "alert."))]
    assert types == ["deposit.pending", "deposit.credited", "deposit.reversed", "alert.deposit_reversed",
                     "deposit.pending", "deposit.credited"]
    (acct,) = rows(btc_app, t.accounts, id=account)
    assert acct["frozen"], "a re-credit does not lift the freeze: staff review the account"


def test_a_deposit_mined_again_after_a_reorg_keeps_the_policy_decision_it_got_first(db_url, chain):
    """Staff disable deposits during a chain incident, when reorgs happen. A credited deposit the
    reorg reversed was judged again by today's policy when it was mined again: ASSET_DISABLED, its
    credit gone for good and the account frozen (a deposit review). A deposit refused first
    (below the minimum then) stays refused, whatever the policy says now."""
    from custody.app import Custody
    from tests.support.bitcoin import make_chain_config

    app = Custody(make_chain_config(db_url, chain.rpc.url, btc={"min_deposit": 10_000}))
    try:
        scan(app)
        ann, ann_address = account_with_address(app, "ann")
        bob, bob_address = account_with_address(app, "bob")
        txid, raw = chain.pay((script_of(app, ann_address), SATS), (script_of(app, bob_address), 5_000))
        chain.mine(CONFIRMATIONS)
        scan(app)
        assert [d.status for d in deposits_of(app, ann) + deposits_of(app, bob)] == ["CREDITED", "BELOW_MINIMUM"]
        height = deposits_of(app, ann)[0].block_height
    finally:
        app.close()
    app = Custody(make_chain_config(db_url, chain.rpc.url, btc={"min_deposit": 0, "deposits_enabled": False}))
    try:
        chain.reorg(height, CONFIRMATIONS + 1)
        scan(app)
        assert [d.status for d in deposits_of(app, ann) + deposits_of(app, bob)] == ["REVERSED", "ORPHANED"]
        chain.miner.send(raw)  # the same transaction, mined again
        chain.mine(CONFIRMATIONS)
        scan(app)
        (d,), (refused,) = deposits_of(app, ann), deposits_of(app, bob)
        assert (d.status, d.txid) == ("CREDITED", txid) and balance(app, ann).available == SATS
        assert refused.status == "BELOW_MINIMUM" and balance(app, bob).available == 0
    finally:
        app.close()


def test_a_credited_deposit_the_new_branch_holds_again_deep_enough_stays_credited(btc_app, chain):
    """A reorg that replaces the deposit's block with one holding the same transaction (a stale tip,
    the common case) changes where it is, not whether it is: no reversal, no frozen account, no
    second credit; the reorg and the new branch are applied in one transaction."""
    account, address = account_with_address(btc_app, "ann")
    txid, raw = chain.pay((script_of(btc_app, address), SATS))
    chain.mine(CONFIRMATIONS)
    scan(btc_app)
    (d,) = deposits_of(btc_app, account)
    assert d.status == "CREDITED"
    old_block = (d.block_height, d.block_hash)

    chain.miner.invalidate(d.block_height)  # bcoin drops the transaction with the block...
    chain.miner.send(raw)  # ...so it is sent again, and mined at the same height in another block
    chain.mine(CONFIRMATIONS + 1)
    result = scan(btc_app)
    assert result.reorgs == 1
    (d,) = deposits_of(btc_app, account)
    assert (d.status, d.txid, d.block_height) == ("CREDITED", txid, old_block[0]) and d.block_hash != old_block[1]
    assert d.confirmations == CONFIRMATIONS + 1
    assert balance(btc_app, account).available == SATS
    assert [b["kind"] for b in rows(btc_app, t.ledger_batches)] == ["deposit"]
    types = [e for e in event_types(btc_app) if e.startswith(("deposit.", "alert."))]
    assert types == ["deposit.pending", "deposit.credited", "deposit.remined"]
    (acct,) = rows(btc_app, t.accounts, id=account)
    assert not acct["frozen"]
    (utxo,) = [u for u in rows(btc_app, t.utxos) if u["txid"] == txid]
    assert utxo["block_hash"] == d.block_hash and utxo["spent_txid"] is None


def test_a_credited_deposit_mined_again_too_shallow_is_still_reversed(btc_app, chain):
    """Held again by the new branch but not as deep as a credit needs: reversed as before (the
    account frozen), and credited again once deep enough."""
    account, address = account_with_address(btc_app, "ann")
    _, raw = chain.pay((script_of(btc_app, address), SATS))
    chain.mine(CONFIRMATIONS)
    scan(btc_app)
    (d,) = deposits_of(btc_app, account)
    chain.miner.invalidate(d.block_height)
    chain.mine(CONFIRMATIONS)  # a longer branch without it...
    chain.miner.send(raw)
    chain.mine(1)  # ...that holds it at its tip only
    scan(btc_app)
    (d,) = deposits_of(btc_app, account)
    assert d.status == "PENDING" and balance(btc_app, account).available == 0
    assert [b["kind"] for b in rows(btc_app, t.ledger_batches)] == ["deposit", "deposit_reversal"]
    chain.mine(CONFIRMATIONS - 1)
    scan(btc_app)
    assert deposits_of(btc_app, account)[0].status == "CREDITED" and balance(btc_app, account).available == SATS


def test_a_reorg_deeper_than_the_remembered_blocks_halts_the_scanner_with_one_alert(db_url, chain):
    """The scanner keeps max_reorg_depth blocks and the fork block below them; a deeper reorg stops
    it with an alert event and nothing changed: no guessed fork point, the deposit left as it was
    for staff to judge."""
    from custody.app import Custody
    from tests.support.bitcoin import make_chain_config

    app = Custody(make_chain_config(db_url, chain.rpc.url, max_reorg_depth=3))
    try:
        app.scanner("bitcoin").catch_up()
        account, address = account_with_address(app, "ann")
        chain.pay((script_of(app, address), 9_000))
        chain.mine(1)
        scan(app)
        (d,) = deposits_of(app, account)
        chain.mine(5)
        scan(app)
        (d,) = deposits_of(app, account)
        assert d.status == "CREDITED"
        with app.engine.connect() as conn:
            before = store.load_cursor(conn, "bitcoin")
            remembered = store.recent_blocks(conn, "bitcoin", 100)
        assert len(remembered) == 4, "only max_reorg_depth blocks and the one below them are kept"

        chain.reorg(d.block_height, 8)  # replaces 6 blocks: below everything remembered
        first = app.scanner("bitcoin").tick()
        assert first.status == "halted" and "reorg deeper than 3" in first.detail
        app.scanner("bitcoin").next_attempt = 0
        assert app.scanner("bitcoin").tick().status == "halted"
        with app.engine.connect() as conn:
            assert store.load_cursor(conn, "bitcoin") == before, "the cursor did not move"
        (after,) = deposits_of(app, account)
        assert (after.status, after.block_hash) == ("CREDITED", d.block_hash), "nothing guessed or unwound"
        alerts = [json.loads(e.payload) for e in app.events_after(0, 1000) if e.type == "alert.reorg_too_deep"]
        assert [(a["cursor_height"], a["max_reorg_depth"]) for a in alerts] == [(before.height, 3)]
    finally:
        app.close()


def test_a_reorg_exactly_max_reorg_depth_deep_is_unwound_and_one_block_deeper_halts(db_url, chain):
    """max_reorg_depth = 3: a reorg replacing the 3 newest blocks is unwound (its fork block is
    remembered); one replacing 4 halts the scanner with an alert."""
    from custody.app import Custody
    from tests.support.bitcoin import make_chain_config

    app = Custody(make_chain_config(db_url, chain.rpc.url, max_reorg_depth=3))
    try:
        scanner = app.scanner("bitcoin")
        scanner.catch_up()
        account, address = account_with_address(app, "ann")
        chain.mine(3)
        chain.pay((script_of(app, address), 9_000))
        chain.mine(2)
        scan(app)
        (d,) = deposits_of(app, account)
        assert (d.status, d.block_height) == ("PENDING", chain.height() - 1)

        chain.reorg(chain.height() - 2, 4)  # depth 3: the block below the deposit's, it and the tip
        assert scanner.tick().status == "ok"
        with app.engine.connect() as conn:
            assert store.load_cursor(conn, "bitcoin").height == chain.height()
        (d,) = deposits_of(app, account)
        assert d.status == "ORPHANED"
        assert "alert.reorg_too_deep" not in event_types(app)

        with app.engine.connect() as conn:
            before = store.load_cursor(conn, "bitcoin")
        chain.reorg(before.height - 3, 5)  # depth 4
        result = scanner.tick()
        assert result.status == "halted" and "reorg deeper than 3" in result.detail
        with app.engine.connect() as conn:
            assert store.load_cursor(conn, "bitcoin") == before
        assert event_types(app).count("alert.reorg_too_deep") == 1
    finally:
        app.close()


def test_a_mainnet_service_pointed_at_a_regtest_node_scans_nothing(db_url, chain, caplog):
    """A script is the same bytes on every network: a mainnet config whose rpc_url reached a
    regtest (or testnet) node, by a mistake or a failover, credited free coins as real BTC. The
    plugin could tell, but nothing asked it (found by the chain plugin review)."""
    from custody.app import Custody
    from tests.support.bitcoin import account_xprv, make_chain_config

    def xpub(n):  # mainnet account keys
        return account_xprv(n).to_public().to_base58()

    app = Custody(make_chain_config(db_url, chain.rpc.url, network="mainnet", deposit_xpub=xpub(0),
                                    hot_xpub=xpub(1), cold_xpub=xpub(2)))
    try:
        from custody.errors import Unavailable

        scanner = app.scanner("bitcoin")
        ann = app.create_account("ann").account_id
        with pytest.raises(Unavailable, match="not scanned yet"):  # no address before the chain is scanned
            app.deposit_address(str(ann), "bitcoin")
        assert "runs 'regtest' but the config says network = 'mainnet'" in caplog.text  # why: for staff, in the log
        chain.pay((app.plugin("bitcoin").watch_key(app.plugin("bitcoin").derive_address(xpub(0), 0).address),
                   2 * 10**8))
        chain.mine(CONFIRMATIONS)
        result = scanner.tick()
        assert result.status == "halted"
        assert "runs 'regtest' but the config says network = 'mainnet'" in result.detail
        scanner.next_attempt = 0
        assert scanner.tick().status == "halted"
        (alert,) = [json.loads(e.payload) for e in app.events_after(0, 1000) if e.type == "alert.node_wrong_network"]
        assert alert["chain"] == "bitcoin" and "runs 'regtest'" in alert["reason"]  # one page, not one a retry
        assert app.list_deposits(str(ann))[1] == []
        assert {b.asset: b.available for b in app.get_balances(str(ann))[1]}["BTC"] == 0
        engine = make_engine(db_url)
        try:
            with engine.connect() as conn:  # not one block was taken from that node
                assert store.load_cursor(conn, "bitcoin") is None
        finally:
            engine.dispose()
    finally:
        app.close()


def test_scan_once_against_a_node_on_another_network_is_one_line_and_exit_1(db_url, chain, tmp_path):
    """`custody scan --once` halted by the network check printed a traceback (found by the docs review)."""
    import subprocess
    import sys

    from custody.db.migrate import upgrade
    from tests.integration.test_scanner_robustness import write_config
    from tests.support.bitcoin import account_xprv

    def xpub(n):
        return account_xprv(n).to_public().to_base58()

    upgrade(db_url)
    config = write_config(tmp_path / "custody.toml", db_url, chain.rpc.url, network="mainnet",
                          deposit_xpub=xpub(0), hot_xpub=xpub(1), cold_xpub=xpub(2))
    r = subprocess.run([sys.executable, "-m", "custody.cli", "scan", "--config", str(config), "--once"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "scanner halted" in r.stderr and "runs 'regtest'" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
