"""Invariant 4 on a real bcoin node and a real signer: the ledger's wallet accounts against the
service's UTXO set, with every difference listed by what explains it, through a deposit and a
withdrawal from first sight to completion; and the differences nothing explains."""
from __future__ import annotations

from sqlalchemy import delete, select, update

from chains.bitcoin.addresses import script_to_address
from chains.bitcoin.params import network
from custody.db import schema as t
from custody.db.engine import read_transaction
from custody.db.types import as_utc
from custody.ledger.commands import Command
from custody.ledger.invariants import check
from custody.ledger.model import EQUITY, Posting
from custody.reconciliation.wallets import ChainWallets, reconcile
from tests.support.bitcoin import random_script
from tests.support.withdrawals import attempts, batches, fund_hot_wallet, reserved, sender

REGTEST = network("regtest")


def bitcoin_wallets(btc) -> ChainWallets:
    with read_transaction(btc.engine) as conn:
        compared, _ = reconcile(conn)
    (wallets,) = compared
    return wallets


def listed(wallets: ChainWallets) -> list[tuple[int, str]]:
    return sorted((i.amount, i.what.split(": ", 1)[1]) for i in wallets.items)


def step(btc, chain):
    chain.mine(1)
    btc.scanner("bitcoin").catch_up()


def test_each_difference_between_the_chain_and_the_ledger_is_listed_until_it_is_booked(btc, chain, signer):
    assert bitcoin_wallets(btc).items == [] and bitcoin_wallets(btc).on_chain == 0

    fund_hot_wallet(btc, chain, 3_000_000)  # paid from outside: no ledger entry says where it came from
    w = bitcoin_wallets(btc)
    assert (w.on_chain, w.in_ledger, w.unexplained) == (3_000_000, 0, 0)
    assert listed(w) == [(3_000_000, "paid the hot wallet from outside the service (not booked: treasury moves "
                                     "are not built)")]

    ann = btc.create_account("ann").account_id
    address = btc.deposit_address(str(ann), "bitcoin")[1]
    chain.pay((btc.plugin("bitcoin").watch_key(address), 700_000))
    step(btc, chain)
    (deposit,) = btc.list_deposits(str(ann))[1]
    w = bitcoin_wallets(btc)
    assert (w.on_chain, w.in_ledger, w.unexplained) == (3_700_000, 0, 0)
    assert (700_000, f"deposit {deposit.deposit_id}, PENDING") in listed(w)
    assert check(btc.engine).ok

    step(btc, chain)  # the second confirmation: credited
    w = bitcoin_wallets(btc)
    assert (w.on_chain, w.in_ledger, len(w.items), w.unexplained) == (3_700_000, 700_000, 1, 0)

    payee = script_to_address(random_script(), REGTEST)
    wid = btc.withdrawals.request("wallet-service", "w1", str(ann), "BTC", payee, "200000")[0]["id"]
    s = sender(btc, signer)
    s.tick()
    (attempt,) = attempts(btc)
    step(btc, chain)
    s.tick()
    assert btc.withdrawals.get(wid)[0]["status"] == "CONFIRMING"
    (batch,) = batches(btc)
    w = bitcoin_wallets(btc)
    assert w.unexplained == 0 and w.in_ledger == 700_000
    assert (-(200_000 + attempt["fee"]), f"payment attempt of batch {batch['id']}, which is CONFIRMING") \
        in listed(w)
    assert check(btc.engine).ok

    step(btc, chain)
    s.tick()
    assert btc.withdrawals.get(wid)[0]["status"] == "COMPLETED"
    w = bitcoin_wallets(btc)
    assert (w.on_chain, w.in_ledger, len(w.items), w.unexplained) == (
        3_700_000 - 200_000 - attempt["fee"], 700_000 - 200_000 - attempt["fee"], 1, 0)
    report = check(btc.engine)
    assert report.ok and any(f.invariant == "4" and f.severity == "info" and "listed in flight or waiting: 1 "
                             "item(s), 3000000" in f.message for f in report.findings), report.render()


def test_a_wallet_booking_with_nothing_on_chain_behind_it_is_a_violation(btc, chain, request):
    """A correction that adds to the hot wallet's account what no transaction brought."""
    fund_hot_wallet(btc, chain, 1_000_000)
    request.node.skip_invariants = True
    btc.writer.execute(Command(kind="adjustment", actor="t", postings=(
        Posting("BTC", "wallet:bitcoin:hot", EQUITY, 5_000),)))
    report = check(btc.engine)
    assert not report.ok
    with btc.engine.connect() as conn:
        batch_id, at = conn.execute(select(t.ledger_batches.c.id, t.ledger_batches.c.created_at)
                                    .where(t.ledger_batches.c.kind == "adjustment")).one()
    (violation,) = [f.message for f in report.findings if f.severity == "violation"]
    assert violation == (f"bitcoin: ledger batch {batch_id}: adjustment by t at {as_utc(at):%Y-%m-%d %H:%M:%S}, "
                         "booked on the wallet accounts; no chain event is booked so (-5000)")


def test_a_deposit_address_output_no_deposit_records_is_named_with_its_address_and_block(btc, chain, request):
    """FAILURE_MODES 31: a balance change with no ledger operation (a dust payment to a deposit
    address that the deposits table lacks, as a scanner that missed recording it would leave it)
    is named with its address and the first block where the chain and the ledger part."""
    ann = btc.create_account("ann").account_id
    address = btc.deposit_address(str(ann), "bitcoin")[1]
    watch = btc.plugin("bitcoin").watch_key(address)
    request.node.skip_invariants = True
    first = chain.height() + 1
    paid = []
    for amount in (600, 700):
        paid.append(chain.pay((watch, amount))[0])
        step(btc, chain)
        with btc.engine.begin() as conn:  # before it is credited
            conn.execute(delete(t.deposits).where(t.deposits.c.txid == paid[-1]))
    early, late = paid
    report = check(btc.engine)
    violations = [f.message for f in report.findings if f.severity == "violation"]
    assert sorted(violations) == sorted([
        f"bitcoin: {early}:0: paid a deposit address and no deposit records it (+600); block {first}, address {address}",
        f"bitcoin: {late}:0: paid a deposit address and no deposit records it (+700); block {first + 1}, "
        f"address {address}"])
    (summary,) = [f.message for f in report.findings if f.message.startswith("bitcoin (")]
    assert f"the first block where they part: {first} ({early})" in summary, summary


def test_a_batch_failed_after_its_transaction_was_mined_is_a_violation(btc, chain, signer, request):
    """The payment is in a block, so the coins are gone; a batch marked FAILED (here by hand) would
    release the user's hold and never book the payment: the chain holds less than the ledger says."""
    fund_hot_wallet(btc, chain, 3_000_000)
    payer = btc.create_account("payer").account_id
    btc.adjust_balance("alice-admin", "fund", str(payer), "BTC", "1000000", True, "test funding")
    btc.withdrawals.request("wallet-service", "w1", str(payer), "BTC", script_to_address(random_script(), REGTEST),
                            "200000")
    s = sender(btc, signer)
    s.tick()
    (attempt,) = attempts(btc)
    step(btc, chain)
    (batch,) = batches(btc)
    request.node.skip_invariants = True
    with btc.engine.begin() as conn:
        conn.execute(update(t.withdrawal_batches).values(status="FAILED"))
    report = check(btc.engine)
    ((coin_txid, coin_index),) = reserved(btc)
    u = t.utxos.c
    with btc.engine.connect() as conn:
        spent_from = conn.execute(select(t.chain_addresses.c.address).join(t.utxos, u.address_id == t.chain_addresses.c.id)
                                  .where(u.txid == coin_txid, u.output_index == coin_index)).scalar_one()
    assert [f.message for f in report.findings if f.severity == "violation"] == [
        f"bitcoin: {attempt['txid']}: payment attempt of batch {batch['id']}, which is FAILED with None: mined "
        f"and never booked ({-(200_000 + attempt['fee'])}); block {chain.height()}, address {spent_from}"]


def test_a_chain_with_no_plugin_to_say_how_is_not_compared(btc):
    """An account chain's balances must be read from its node; with no installed plugin the check
    says it did not compare it rather than passing it."""
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    with btc.engine.begin() as conn:
        conn.execute(t.chain_addresses.insert().values(
            chain="dogecoin", wallet="deposit", branch=0, key_index=0, address="D-x", watch_key=b"x", account_id=None,
            created_height=0, created_at=now))
    report = check(btc.engine)
    assert report.ok
    (skipped,) = [f.message for f in report.findings if f.severity == "skipped"]
    assert skipped.startswith("dogecoin: not compared: no chain plugin to tell how")


def test_admin_check_with_node_finds_a_spend_the_service_s_utxo_set_missed(btc_app, chain, tmp_path, request):
    """Invariant 4 trusts the UTXO set the scanner built; --node asks the node about each output
    that set holds unspent. A spend the set lacks (here removed from it by hand, as a scanner that
    missed it would leave it) passes the database check and is caught by the node's."""
    import subprocess
    import sys

    from custody.db.engine import write_transaction
    from tests.integration.test_scanner_robustness import write_config
    from tests.support.bitcoin import CONFIRMATIONS, deposit_key, spend
    from tests.support.databases import ROOT

    def admin_check():
        return subprocess.run([sys.executable, "-m", "custody.cli", "admin", "check", "--node", "--config",
                               str(config_file)], cwd=ROOT, capture_output=True, text=True, timeout=300)

    config_file = write_config(tmp_path / "custody.toml", btc_app.config.database_url, chain.rpc.url)
    ann = btc_app.create_account("ann").account_id
    address = btc_app.deposit_address(str(ann), "bitcoin")[1]
    txid, _ = chain.pay((btc_app.plugin("bitcoin").watch_key(address), 80_000))
    paid_in = chain.height() + 1
    chain.mine(CONFIRMATIONS)
    btc_app.scanner("bitcoin").catch_up()
    done = admin_check()
    assert done.returncode == 0, done.stdout + done.stderr
    assert (f"bitcoin: 1 unspent outputs asked of the node (scanned to {chain.height()}, node at "
            f"{chain.height()}): all unspent there") in done.stdout

    chain.miner.send(spend((txid, 0), 80_000, deposit_key(0), random_script()))
    chain.mine(1)  # the scanner has not seen this block: the node is ahead
    ahead = admin_check()
    assert ahead.returncode == 0, ahead.stdout + ahead.stderr
    assert "invariant 4: FLAGGED" in ahead.stdout and "the node is ahead of the scanner" in ahead.stdout

    btc_app.scanner("bitcoin").catch_up()
    request.node.skip_invariants = True
    with write_transaction(btc_app.engine) as conn:  # as a scanner that missed the spend would have left it
        conn.execute(update(t.utxos).where(t.utxos.c.txid == txid).values(spent_txid=None, spent_height=None))
    assert check(btc_app.engine).ok, "the database alone can't tell"
    caught = admin_check()
    assert caught.returncode == 1, caught.stdout + caught.stderr
    assert (f"invariant 4: VIOLATION: bitcoin: {txid}:0 (80000) is unspent in the service's UTXO set, spent or "
            f"absent on the node; block {paid_in}, address {address}") in caught.stdout
