"""FAILURE_MODES 25, deposits outside policy, against the real bcoin node: a payment
below the asset's min_deposit, or made while the asset's deposits are disabled, is
recorded with its status and reason, shown by ListDeposits and an event, never
credited, and follows reorgs like any other deposit."""
import json

import pytest
from sqlalchemy import select

from custody.app import Custody
from custody.db import schema as t
from custody.db.engine import read_transaction
from custody.v1 import custody_pb2 as pb
from custody.withdrawals.sender import BitcoinSender
from tests.support.bitcoin import CONFIRMATIONS, make_chain_config
from tests.support.servers import Clients, ServerThread
from tests.support.withdrawals import withdrawal_config

MIN = 10_000


@pytest.fixture
def policy_app(db_url, chain, request):
    btc = getattr(request, "param", {"min_deposit": str(MIN)})
    app = Custody(make_chain_config(db_url, chain.rpc.url, btc=btc))
    app.scanner("bitcoin").catch_up()
    yield app
    app.close()


@pytest.fixture
def api(policy_app):
    server = ServerThread(policy_app.config, policy_app)
    clients = Clients(server.address)
    yield clients
    clients.close()
    server.stop()


def address_of(app, name):
    account = app.create_account(name).account_id
    return account, app.deposit_address(str(account), "bitcoin")[1]


def scan(app):
    app.scanner("bitcoin").catch_up()


def events(app, kind):
    return [json.loads(e.payload) for e in app.events_after(0, 10_000) if e.type == kind]


def btc(app, account):
    return {b.asset: b for b in app.get_balances(str(account))[1]}["BTC"]


def test_a_deposit_below_the_minimum_is_recorded_shown_and_never_credited(policy_app, api, chain, db_url):
    """One transaction pays 9,999 and 10,000 sats to a user: the first is BELOW_MINIMUM with its
    reason (ListDeposits, an event), the second is credited at the configured depth. Both stay in
    the UTXO set, and the withdrawal job never spends the first."""
    account, address = address_of(policy_app, "ann")
    script = policy_app.plugin("bitcoin").watch_key(address)
    txid, _ = chain.pay((script, MIN - 1), (script, MIN))
    chain.mine(CONFIRMATIONS + 2)
    scan(policy_app)

    md = api.md()
    ok, small = api.custody.ListDeposits(pb.ListDepositsRequest(account_id=str(account)), metadata=md).deposits
    assert (small.txid, small.index, small.amount, small.status, small.confirmations) == (
        txid, 0, str(MIN - 1), pb.DEPOSIT_STATUS_BELOW_MINIMUM, CONFIRMATIONS + 2)
    assert small.reason == "9999 is below the BTC minimum deposit of 10000 base units"
    assert (ok.amount, ok.status, ok.reason) == (str(MIN), pb.DEPOSIT_STATUS_CREDITED, "")
    b = btc(policy_app, account)
    assert (b.available, b.pending) == (MIN, 0), "the small one is neither available nor pending"

    (event,) = events(policy_app, "deposit.below_minimum")
    assert (event["txid"], event["index"], event["amount"], event["status"], event["account_id"]) == (
        txid, 0, str(MIN - 1), "BELOW_MINIMUM", str(account))
    assert event["reason"] == small.reason
    assert [e["index"] for e in events(policy_app, "deposit.credited")] == [1]
    # The coins are ours on chain all the same: the UTXO set has both outputs...
    with read_transaction(policy_app.engine) as conn:
        utxos = conn.execute(select(t.utxos.c.txid, t.utxos.c.output_index, t.utxos.c.amount, t.utxos.c.wallet,
                                    t.utxos.c.spent_txid).order_by(t.utxos.c.output_index)).all()
    assert [tuple(u) for u in utxos] == [(txid, 0, MIN - 1, "deposit", None), (txid, 1, MIN, "deposit", None)]
    # ...but the withdrawal job, even one that spends deposit coins, takes only the credited one:
    # the other stays on its address for staff to refund or credit by hand.
    config = withdrawal_config(db_url, chain.rpc.url, confirmations=CONFIRMATIONS, btc={"min_deposit": str(MIN)},
                               include_deposit_wallet=True)
    job = BitcoinSender(config, policy_app.engine, policy_app.plugin("bitcoin"), None, policy_app.notifier.notify)
    with read_transaction(policy_app.engine) as conn:
        spendable = job._spendable(conn, config.withdrawals.fallback_fee_rate)
    assert [(wallet, c.txid, c.index, c.amount) for wallet, c in spendable] == [("deposit", txid, 1, MIN)]
    (asset,) = [a for a in api.custody.ListAssets(pb.ListAssetsRequest(), metadata=md).assets if a.asset == "BTC"]
    assert (asset.min_deposit, asset.deposits_enabled) == (str(MIN), True)


@pytest.mark.parametrize("policy_app", [{"deposits_enabled": False}], indirect=True)
def test_a_deposit_of_a_disabled_asset_is_recorded_and_never_credited(policy_app, chain):
    account, address = address_of(policy_app, "ann")
    txid, _ = chain.pay((policy_app.plugin("bitcoin").watch_key(address), 5 * MIN))
    chain.mine(CONFIRMATIONS)
    scan(policy_app)
    (d,) = policy_app.list_deposits(str(account))[1]
    assert (d.txid, d.status, d.reason, d.confirmations) == (
        txid, "ASSET_DISABLED", "deposits of BTC are disabled", CONFIRMATIONS)
    assert btc(policy_app, account).available == 0
    assert [e["txid"] for e in events(policy_app, "deposit.asset_disabled")] == [txid]
    assert events(policy_app, "deposit.credited") == []


def test_a_reorg_orphans_a_below_minimum_deposit_and_a_re_mine_records_it_again_uncredited(policy_app, chain):
    account, address = address_of(policy_app, "ann")
    txid, raw = chain.pay((policy_app.plugin("bitcoin").watch_key(address), 1))
    chain.mine(1)
    scan(policy_app)
    (d,) = policy_app.list_deposits(str(account))[1]
    assert d.status == "BELOW_MINIMUM"
    chain.reorg(d.block_height, 2)
    scan(policy_app)
    (d,) = policy_app.list_deposits(str(account))[1]
    assert (d.status, d.confirmations) == ("ORPHANED", 0)
    chain.miner.send(raw)
    chain.mine(CONFIRMATIONS)
    scan(policy_app)
    (d,) = policy_app.list_deposits(str(account))[1]
    assert (d.status, d.txid, d.confirmations) == ("BELOW_MINIMUM", txid, CONFIRMATIONS)
    assert btc(policy_app, account).available == 0
    assert len(events(policy_app, "deposit.below_minimum")) == 2


def test_a_zero_value_output_is_below_minimum_and_later_deposits_are_still_credited(btc_app, chain):
    """min_deposit at its default (0): a 0-sat output to a deposit address (valid on chain) is
    BELOW_MINIMUM, never sent to the ledger (which refuses 0 and would halt the scanner for
    every user); a payment to another user in a later block is credited."""
    assert btc_app.config.asset("BTC").min_deposit == 0
    mallory, mallorys = address_of(btc_app, "mallory")
    ann, anns = address_of(btc_app, "ann")
    plugin = btc_app.plugin("bitcoin")
    zero_txid, _ = chain.pay((plugin.watch_key(mallorys), 0))
    chain.mine(1)
    scan(btc_app)
    chain.pay((plugin.watch_key(anns), 70_000))
    chain.mine(CONFIRMATIONS + 1)  # past the 0-value output's confirmation depth too

    scanner = btc_app.scanner("bitcoin")
    assert scanner.tick().status == "ok"
    assert scanner.run_once().height == chain.height()
    (zero,) = btc_app.list_deposits(str(mallory))[1]
    assert (zero.txid, zero.amount, zero.status, zero.reason) == (
        zero_txid, 0, "BELOW_MINIMUM", "0 is below the BTC minimum deposit of 1 base units")
    (paid,) = btc_app.list_deposits(str(ann))[1]
    assert (paid.amount, paid.status) == (70_000, "CREDITED")
    assert btc(btc_app, ann).available == 70_000 and btc(btc_app, mallory).available == 0
    assert [e["txid"] for e in events(btc_app, "deposit.below_minimum")] == [zero_txid]


def test_a_zero_value_deposit_left_pending_by_an_older_version_is_moved_below_minimum_by_the_upgrade(
        btc_app, chain, db_url):
    """A database where a 0-value deposit was recorded PENDING (before this fix) would halt the
    scanner at its confirmation depth; migration 0015 makes it BELOW_MINIMUM and the scanner goes on."""
    from alembic import command
    from sqlalchemy import update

    from custody.db import schema as t
    from custody.db.migrate import alembic_config, upgrade

    mallory, mallorys = address_of(btc_app, "mallory")
    chain.pay((btc_app.plugin("bitcoin").watch_key(mallorys), 0))
    chain.mine(1)
    scan(btc_app)
    with btc_app.engine.begin() as conn:  # as the older version recorded it
        conn.execute(update(t.deposits).values(status="PENDING", reason=None))
    command.downgrade(alembic_config(db_url), "0014")
    upgrade(db_url)

    chain.mine(CONFIRMATIONS)
    assert btc_app.scanner("bitcoin").tick().status == "ok"
    (zero,) = btc_app.list_deposits(str(mallory))[1]
    assert (zero.status, zero.reason) == ("BELOW_MINIMUM", "0 is below the BTC minimum deposit of 1 base units")


def test_a_zero_value_deposit_orphaned_by_an_older_version_and_mined_again_stays_below_minimum(btc_app, chain):
    """An older version recorded a 0-value output PENDING (no reason); orphaned then, migration 0015
    did not touch it (it moved only PENDING ones). Mined again, it keeps the decision it got first,
    "accepted", but a credit of 0 would halt the scanner for every user: still BELOW_MINIMUM."""
    from sqlalchemy import update

    mallory, mallorys = address_of(btc_app, "mallory")
    txid, raw = chain.pay((btc_app.plugin("bitcoin").watch_key(mallorys), 0))
    chain.mine(1)
    scan(btc_app)
    (d,) = btc_app.list_deposits(str(mallory))[1]
    chain.reorg(d.block_height, 2)
    scan(btc_app)
    with btc_app.engine.begin() as conn:  # as the older version left it
        conn.execute(update(t.deposits).where(t.deposits.c.id == int(d.deposit_id)).values(reason=None))
    chain.miner.send(raw)
    chain.mine(CONFIRMATIONS + 1)
    scan(btc_app)
    (d,) = btc_app.list_deposits(str(mallory))[1]
    assert (d.txid, d.amount, d.status) == (txid, 0, "BELOW_MINIMUM")
