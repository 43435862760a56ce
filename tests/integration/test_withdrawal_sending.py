"""Withdrawals on a real bcoin regtest node, signed by a real signer process:
batching, coin selection, signing, storing, broadcast, confirmation, ledger postings."""
from __future__ import annotations

import threading
import time

import pytest
from embit.transaction import Transaction
from sqlalchemy import select, text

from chains.bitcoin.addresses import script_to_address
from chains.bitcoin.params import network
from custody.app import Custody
from custody.db import schema as t
from custody.db.engine import is_postgres, read_transaction, write_transaction
from custody.deposits.store import freeze_account
from custody.withdrawals.sender import BitcoinSender, CrashForTest
from tests.support.bitcoin import HOT_XPUB, random_script
from tests.support.withdrawals import (BTC, WITHDRAWAL_FEE, attempts, available_held, batches, confirm, events, fund,
                                       fund_hot_wallet, ledger_balance, outputs_paying, sender, withdrawal_config)

REGTEST = network("regtest")



def run_batch(btc, chain, signer, n):
    fund_hot_wallet(btc, chain, 3 * BTC)
    acct = btc.create_account("payer").account_id
    fund(btc, acct, 5 * BTC)
    payees = [(script_to_address(random_script(), REGTEST), 1_000_000 + i * 1000) for i in range(n)]
    ids = [btc.withdrawals.request("wallet-service", f"k{i}", str(acct), "BTC", addr, str(amount))[0]["id"]
           for i, (addr, amount) in enumerate(payees)]
    s = sender(btc, signer)
    s.tick()
    assert {btc.withdrawals.get(i)[0]["status"] for i in ids} == {"BROADCAST"}, btc.withdrawals.get(ids[0])[0]["reason"]
    (attempt,) = attempts(btc)
    confirm(btc, chain, s)
    done = [btc.withdrawals.get(i)[0] for i in ids]
    assert {w["status"] for w in done} == {"COMPLETED"}
    assert {w["txid"] for w in done} == {attempt["txid"]}
    # Exactly the payments on chain, plus one change output to our hot wallet.
    tx = Transaction.parse(attempt["raw"])
    outputs = [(script_to_address(o.script_pubkey.data, REGTEST), o.value) for o in tx.vout]
    assert outputs[:n] == payees
    change_address = btc.plugin("bitcoin").derive_address(HOT_XPUB, 0).address
    assert len(outputs) == n + 1 and outputs[n][0] == change_address
    total_in = 3 * BTC
    network_fee = total_in - sum(v for _, v in outputs)
    assert network_fee == attempt["fee"]
    assert sum(w["network_fee"] for w in done) == network_fee
    # The ledger: the user paid amounts + withdrawal fees; the hot wallet lost amounts + network fee.
    paid = sum(a for _, a in payees)
    _, bs = btc.get_balances(str(acct))
    b = next(b for b in bs if b.asset == "BTC")
    assert (b.available, b.held) == (5 * BTC - paid - n * WITHDRAWAL_FEE, 0)
    assert ledger_balance(btc, "fees:revenue") == n * WITHDRAWAL_FEE
    assert ledger_balance(btc, "fees:network") == -network_fee
    assert ledger_balance(btc, "wallet:bitcoin:hot") == -(paid + network_fee)
    # Each withdrawal went through every state, once.
    _, history = btc.withdrawals.get(ids[0])
    assert [h["to_status"] for h in history] == ["APPROVED", "QUEUED", "SIGNING", "SIGNED", "BROADCAST",
                                                 "CONFIRMING", "COMPLETED"]
    # Running again changes nothing (completion posted exactly once).
    s.tick()
    assert ledger_balance(btc, "fees:revenue") == n * WITHDRAWAL_FEE
    return tx


def test_one_withdrawal_end_to_end(btc, chain, signer):
    run_batch(btc, chain, signer, 1)


def test_a_reviewer_sees_how_often_an_address_was_paid_before_not_how_often_it_was_asked(btc, chain, signer):
    """Rejected requests (fraud among them) were counted as 'destination used before', a sign of a
    safe address to a reviewer; and a later request counted towards an earlier one's."""
    fund_hot_wallet(btc, chain, 3 * BTC)
    acct = str(btc.create_account("payer").account_id)
    fund(btc, acct, 5 * BTC)
    payee = script_to_address(random_script(), REGTEST)
    paid = btc.withdrawals.request("wallet-service", "paid", acct, "BTC", payee, "1000000")[0]["id"]
    s = sender(btc, signer)
    s.tick()
    confirm(btc, chain, s)
    assert btc.withdrawals.get(paid)[0]["status"] == "COMPLETED"
    for key in ("fraud-1", "fraud-2"):
        w = btc.withdrawals.request("wallet-service", key, acct, "BTC", payee, str(BTC // 2))[0]
        btc.withdrawals.reject("alice", w["id"], "fraud: phishing address")
    first = btc.withdrawals.request("wallet-service", "big-1", acct, "BTC", payee, str(BTC // 2))[0]["id"]
    later = btc.withdrawals.request("wallet-service", "big-2", acct, "BTC", payee, str(BTC // 2))[0]["id"]
    items, _ = btc.withdrawals.review_list()
    facts = {w["id"]: f for w, f in items}
    assert set(facts) == {first, later}
    assert [facts[i]["destination_seen_before"] for i in (first, later)] == [1, 1]
    assert [facts[i]["withdrawn_24h"] for i in (first, later)] == [1_000_000 + BTC // 2, 1_000_000 + BTC]


def test_an_approval_again_under_a_rotated_key_does_not_send_a_broadcast_withdrawal_back(db_url, chain, signer):
    """An approver whose key was replaced approves again after the withdrawal went out: the new
    signature was stored in place of the old one, the count reached the quorum again and the
    withdrawal moved from BROADCAST back to APPROVED, was batched again and paid twice (a review
    of today's changes). A reviewed withdrawal now only answers as it is."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.support.signer import STAFF, staff_public_hex
    from tests.support.withdrawals import approve_signature

    app = Custody(withdrawal_config(db_url, chain.rpc.url, confirmations=2))
    try:
        app.scanner("bitcoin").catch_up()
        fund_hot_wallet(app, chain, 3 * BTC, 3 * BTC)
        payer = str(app.create_account("payer").account_id)
        fund(app, payer, 5 * BTC)
        wid = app.withdrawals.request("wallet-service", "w", payer, "BTC", script_to_address(random_script(), REGTEST),
                                      str(BTC // 2))[0]["id"]
        assert app.withdrawals.approve("alice", wid, approve_signature(app, wid, "alice"))["status"] == "APPROVED"
        sender(app, signer).tick()
        assert app.withdrawals.get(wid)[0]["status"] == "BROADCAST"
    finally:
        app.close()
    alice_new = Ed25519PrivateKey.generate()
    rotated = [{"name": "alice", "ed25519_public_key": alice_new.public_key().public_bytes(
                   serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()},
               *({"name": n, "ed25519_public_key": staff_public_hex(n)} for n in STAFF if n != "alice")]
    app = Custody(withdrawal_config(db_url, chain.rpc.url, confirmations=2, staff=rotated))
    try:
        w, _ = app.withdrawals.get(wid)
        again = app.withdrawals.approve("alice", wid, alice_new.sign(app.withdrawals.approval_message(w)))
        assert again["status"] == "BROADCAST"
        sender(app, signer).tick()
        assert app.withdrawals.get(wid)[0]["status"] in ("BROADCAST", "CONFIRMING") and len(attempts(app)) == 1
        _, history = app.withdrawals.get(wid)
        assert [h["to_status"] for h in history].count("APPROVED") == 1
    finally:
        app.close()


def one_withdrawal_approved(btc, chain) -> tuple[str, str]:
    """A withdrawal of 0.01 BTC from an account funded with 5 BTC, the hot wallet holding 3 BTC:
    (the account, the withdrawal), approved (below the review threshold)."""
    fund_hot_wallet(btc, chain, 3 * BTC)
    acct = str(btc.create_account("payer").account_id)
    fund(btc, acct, 5 * BTC)
    wid = btc.withdrawals.request("wallet-service", "k", acct, "BTC", script_to_address(random_script(), REGTEST),
                                  "1000000")[0]["id"]
    return acct, wid


def one_withdrawal_sent(btc, chain, signer):
    """A withdrawal of 0.01 BTC from a funded account, batched, signed and sent: (its id, the job)."""
    _, wid = one_withdrawal_approved(btc, chain)
    s = sender(btc, signer)
    s.tick()
    return wid, s


def test_a_stale_sign_of_a_batch_that_went_on_signs_and_moves_nothing(btc, chain, signer):
    """A job that listed the batch as QUEUED before another instance took it on (a PostgreSQL lock
    lost with its session) asks to sign it late: it is not signed again, and nothing moves."""
    wid, s = one_withdrawal_sent(btc, chain, signer)
    (batch,) = batches(btc)
    assert batch["status"] == "BROADCAST"
    audit_log = signer.config_path.parent / "audit.log"
    decisions = len(audit_log.read_text().splitlines())
    s.sign(batch["id"])
    assert batches(btc)[0]["status"] == "BROADCAST" and len(attempts(btc)) == 1
    assert btc.withdrawals.get(wid)[0]["status"] == "BROADCAST"
    assert len(audit_log.read_text().splitlines()) == decisions, "the signer was not asked again"


def test_a_frozen_accounts_approved_withdrawal_waits_until_it_is_unfrozen(btc, chain, signer):
    """Frozen after its withdrawal was approved (a reversed deposit, or staff): the withdrawal is not sent."""
    acct, wid = one_withdrawal_approved(btc, chain)
    assert btc.withdrawals.get(wid)[0]["status"] == "APPROVED"
    btc.set_frozen("alice-admin", acct, True, "deposit reversed by a reorg")
    s = sender(btc, signer)
    s.tick()
    assert btc.withdrawals.get(wid)[0]["status"] == "APPROVED" and attempts(btc) == []
    btc.set_frozen("alice-admin", acct, False, "the deposit was mined again")
    s.tick()
    assert btc.withdrawals.get(wid)[0]["status"] == "BROADCAST"
    confirm(btc, chain, s)
    assert btc.withdrawals.get(wid)[0]["status"] == "COMPLETED"


def test_an_account_frozen_after_batching_leaves_the_batch_before_signing(btc, chain, signer):
    fund_hot_wallet(btc, chain, 3 * BTC)
    ann, ben = (str(btc.create_account(name).account_id) for name in ("ann", "ben"))
    for acct in (ann, ben):
        fund(btc, acct, 5 * BTC)
    wids = {acct: btc.withdrawals.request("wallet-service", f"k-{acct}", acct, "BTC",
                                          script_to_address(random_script(), REGTEST), "1000000")[0]["id"]
            for acct in (ann, ben)}
    s = sender(btc, signer)
    batch_id = s.build()
    assert {btc.withdrawals.get(w)[0]["status"] for w in wids.values()} == {"QUEUED"}
    btc.set_frozen("alice-admin", ann, True, "compliance hold")
    s.sign(batch_id)
    assert attempts(btc) == [], "nothing was signed"
    assert {btc.withdrawals.get(w)[0]["status"] for w in wids.values()} == {"APPROVED"}
    s.tick()
    assert btc.withdrawals.get(wids[ben])[0]["status"] == "BROADCAST"
    assert btc.withdrawals.get(wids[ann])[0]["status"] == "APPROVED", "the frozen account's waits"


def test_a_freeze_that_commits_while_the_sender_checks_the_batch_is_seen(btc, chain, signer):
    """The freeze's transaction is open when the sender starts its check: the sender waits for it
    (PostgreSQL: the account rows are read FOR SHARE; SQLite: the write lock) instead of sending."""
    fund_hot_wallet(btc, chain, 3 * BTC)
    ann, ben = (str(btc.create_account(name).account_id) for name in ("ann", "ben"))
    for acct in (ann, ben):
        fund(btc, acct, 5 * BTC)
    wids = [btc.withdrawals.request("wallet-service", f"k-{acct}", acct, "BTC",
                                    script_to_address(random_script(), REGTEST), "1000000")[0]["id"]
            for acct in (ann, ben)]
    s = sender(btc, signer)
    batch_id = s.build()
    failures = []
    with write_transaction(btc.engine) as conn:
        freeze_account(conn, int(ann), "compliance hold")
        checking = threading.Thread(target=lambda: _record_failure(failures, s.sign, batch_id))
        checking.start()
        _wait_until_waiting_or_done(btc.engine, checking)
    checking.join(60)
    assert not checking.is_alive() and failures == []
    assert attempts(btc) == [], "nothing was signed"
    assert {btc.withdrawals.get(w)[0]["status"] for w in wids} == {"APPROVED"}


def _record_failure(failures: list, call, *args) -> None:
    try:
        call(*args)
    except Exception as exc:  # noqa: BLE001 - the test thread reports it
        failures.append(exc)


def _wait_until_waiting_or_done(engine, thread: threading.Thread) -> None:
    """Until the thread waits for a lock (PostgreSQL shows it) or has finished; on SQLite, which
    shows no waiters, a second."""
    if not is_postgres(engine):
        thread.join(1.0)
        return
    deadline = time.monotonic() + 30
    while thread.is_alive() and time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar():
                return
        time.sleep(0.02)


def test_completion_rechecks_a_spend_the_scanner_unwound_after_the_sender_read_it(btc, chain, signer):
    """follow() reads the spend and the cursor, then completes in its own transaction. A reorg the
    scanner unwinds in between must not let the withdrawal complete on the stale read."""
    wid, s = one_withdrawal_sent(btc, chain, signer)
    (attempt,) = attempts(btc)
    mined_at = chain.height() + 1
    chain.mine(2)
    btc.scanner("bitcoin").catch_up()
    _, _, spends, _ = s._state(attempt["batch_id"])  # what follow() read: spent at mined_at, 2 deep
    assert {sp.spent_height for sp in spends} == {mined_at}
    chain.reorg(mined_at, 3)  # bcoin drops the transaction with the blocks
    btc.scanner("bitcoin").catch_up()
    s._confirmed(attempt["batch_id"], attempt, mined_at)  # acting on the stale read
    assert btc.withdrawals.get(wid)[0]["status"] == "BROADCAST", "not completed on a spend that is gone"
    s.tick()  # sent again
    confirm(btc, chain, s)
    assert btc.withdrawals.get(wid)[0]["status"] == "COMPLETED"


def test_a_completed_withdrawal_whose_block_a_reorg_drops_is_sent_again(btc, chain, signer):
    """COMPLETED at 2 confirmations; a 3-block reorg (within max_reorg_depth) drops the transaction
    (bcoin forgets it). Nothing sent it again: the ledger said paid, the payee had nothing, the
    input stayed reserved for good and later withdrawals waited for a refill (a withdrawal review).
    The completed batch is watched: its stored transaction goes out again, once, with an alert."""
    fund_hot_wallet(btc, chain, 3 * BTC)
    acct = str(btc.create_account("payer").account_id)
    fund(btc, acct, 5 * BTC)
    payee = random_script()
    wid = btc.withdrawals.request("wallet-service", "k", acct, "BTC", script_to_address(payee, REGTEST),
                                  "1000000")[0]["id"]
    s = sender(btc, signer)
    s.tick()
    (attempt,) = attempts(btc)
    mined_at = chain.height() + 1
    confirm(btc, chain, s)
    assert btc.withdrawals.get(wid)[0]["status"] == "COMPLETED"
    chain.reorg(mined_at, 3)
    btc.scanner("bitcoin").catch_up()
    assert outputs_paying(chain, payee, mined_at) == []
    s.tick()
    s.tick()  # in the mempool now: not sent twice, no second alert
    confirm(btc, chain, s)
    assert outputs_paying(chain, payee, mined_at) == [(attempt["txid"], 1_000_000)]
    assert [e["txid"] for e in events(btc, "alert.withdrawal_resent_after_reorg")] == [attempt["txid"]]
    assert btc.withdrawals.get(wid)[0]["status"] == "COMPLETED" and batches(btc)[0]["status"] == "COMPLETED"
    assert available_held(btc, acct) == (5 * BTC - 1_000_000 - WITHDRAWAL_FEE, 0)


def test_a_batch_of_twenty_in_one_transaction(btc, chain, signer):
    tx = run_batch(btc, chain, signer, 20)
    assert len(tx.vin) == 1


@pytest.mark.parametrize("step", ["after_sign", "after_store", "after_broadcast", "before_complete"])
def test_crash_at_each_step_then_restart_pays_once(btc, chain, signer, step):
    fund_hot_wallet(btc, chain, BTC)
    acct = btc.create_account("payer").account_id
    fund(btc, acct, BTC)
    addr = script_to_address(random_script(), REGTEST)
    wid = btc.withdrawals.request("wallet-service", "k", str(acct), "BTC", addr, "2000000")[0]["id"]
    crashing = sender(btc, signer, crash_at=step)
    with pytest.raises(CrashForTest):
        for _ in range(4):
            crashing.tick()
            chain.mine(1)
            btc.scanner("bitcoin").catch_up()
    # "Restart": a new job on the same database and node.
    s = sender(btc, signer)
    for _ in range(4):
        s.tick()
        chain.mine(1)
        btc.scanner("bitcoin").catch_up()
    s.tick()
    w, _ = btc.withdrawals.get(wid)
    assert w["status"] == "COMPLETED"
    # Exactly one payment to the payee on chain among our attempts, and one debit in the ledger.
    txids = {a["txid"] for a in attempts(btc)}
    assert w["txid"] in txids
    with read_transaction(btc.engine) as conn:
        spenders = set(conn.execute(select(t.utxos.c.spent_txid).where(t.utxos.c.spent_txid.is_not(None))).scalars())
    assert spenders == {w["txid"]}
    assert ledger_balance(btc, "fees:revenue") == WITHDRAWAL_FEE
    _, bs = btc.get_balances(str(acct))
    b = next(b for b in bs if b.asset == "BTC")
    assert (b.available, b.held) == (BTC - 2_000_000 - WITHDRAWAL_FEE, 0)


def test_the_deposit_wallet_pays_with_credited_deposits_only(db_url, chain, signer):
    """include_deposit_wallet: a credited deposit's coin pays withdrawals, signed with the deposit
    wallet's keys (deposit_account_path; every input was signed at the hot wallet's path, so the
    signer refused and the withdrawals failed); a deposit outside policy (below the minimum) stays on
    its address for staff to refund or credit by hand: spending it would move coins the ledger never
    counted."""
    config = withdrawal_config(db_url, chain.rpc.url, confirmations=2, include_deposit_wallet=True,
                               btc={"min_deposit": str(4_500_000)})
    btc = Custody(config)
    try:
        btc.scanner("bitcoin").catch_up()
        depositor = btc.create_account("depositor").account_id
        script = btc.plugin("bitcoin").watch_key(btc.deposit_address(str(depositor), "bitcoin")[1])
        chain.pay((script, 5_000_000), (script, 4_000_000))  # credited; below the minimum
        chain.mine(2)
        btc.scanner("bitcoin").catch_up()
        with read_transaction(btc.engine) as conn:
            coins = {r.status: (r.txid, r.output_index) for r in conn.execute(select(t.deposits))}
        assert set(coins) == {"CREDITED", "BELOW_MINIMUM"}
        fund(btc, depositor, BTC)  # a balance from trades, say
        (w, _) = btc.withdrawals.request("wallet-service", "k-dep", str(depositor), "BTC",
                                         script_to_address(random_script(), REGTEST), str(6_000_000))
        s = sender(btc, signer)
        s.tick()  # the credited coin alone can't pay it with its fee; the other is not ours to spend
        assert btc.withdrawals.get(w["id"])[0]["status"] == "APPROVED" and attempts(btc) == []
        fund_hot_wallet(btc, chain, 2_000_000)
        s.tick()
        (attempt,) = attempts(btc)
        spent = {(i.txid.hex(), i.vout) for i in Transaction.parse(attempt["raw"]).vin}
        assert coins["CREDITED"] in spent and coins["BELOW_MINIMUM"] not in spent
        confirm(btc, chain, s)  # the deposit coin signed at deposit_account_path: mined, paid
        assert btc.withdrawals.get(w["id"])[0]["status"] == "COMPLETED"
    finally:
        btc.close()


def test_a_withdrawal_larger_than_the_hot_wallet_waits_and_the_others_go(btc, chain, signer, caplog):
    """The oldest withdrawal (9M sats) is more than the hot wallet holds (6M): the three of 100k
    behind it are paid, it waits APPROVED with a warning saying how much is missing, and is
    paid once the hot wallet is refilled."""
    fund_hot_wallet(btc, chain, 3_000_000, 3_000_000)
    acct = btc.create_account("payer").account_id
    fund(btc, acct, BTC)

    def request(key, amount):
        return btc.withdrawals.request("wallet-service", key, str(acct), "BTC",
                                       script_to_address(random_script(), REGTEST), str(amount))[0]["id"]
    big = request("big", 9_000_000)
    small = [request(f"small-{i}", 100_000) for i in range(3)]
    s = sender(btc, signer)
    s.tick()
    confirm(btc, chain, s)
    assert [btc.withdrawals.get(i)[0]["status"] for i in small] == ["COMPLETED"] * 3
    assert btc.withdrawals.get(big)[0]["status"] == "APPROVED" and btc.withdrawals.get(big)[0]["batch_id"] is None
    assert f"withdrawal {big} of 9000000 sats waits: the spendable coins are " in caplog.text
    fund_hot_wallet(btc, chain, 5_000_000)
    s.tick()
    confirm(btc, chain, s)
    assert btc.withdrawals.get(big)[0]["status"] == "COMPLETED"
    assert available_held(btc, acct) == (BTC - 9_300_000 - 4 * WITHDRAWAL_FEE, 0)


def test_coin_amounts_are_compared_as_numbers(db_url, chain):
    """SQLite stores amounts as text: coins of 500, 2,000 and 100,000 sats with min_utxo = 2,000
    must leave exactly the last two spendable (as text, "500" >= "2000" > "100000")."""
    app = Custody(withdrawal_config(db_url, chain.rpc.url, confirmations=2, min_utxo=2_000))
    try:
        app.scanner("bitcoin").catch_up()
        fund_hot_wallet(app, chain, 500, 2_000, 100_000)
        s = BitcoinSender(app.config, app.engine, app.plugin("bitcoin"), None, app.notifier.notify)
        with read_transaction(app.engine) as conn:
            spendable = s._spendable(conn, 1)  # 1 sat/vB: an input's fee is far below min_utxo
        assert [c.amount for _, c in spendable] == [100_000, 2_000]
    finally:
        app.close()
