"""What goes wrong on the way out, on a real bcoin regtest node and a real signer process:
the signer refuses, the node refuses, a client cancels a QUEUED withdrawal."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from chains.bitcoin.addresses import script_to_address
from chains.bitcoin.params import network
from custody.app import Custody
from custody.db import schema as t
from custody.db.engine import read_transaction
from custody.withdrawals.sender import CrashForTest
from tests.support.bitcoin import account_xprv, random_script, spend
from tests.support.withdrawals import (BTC, WITHDRAWAL_FEE, attempts, available_held, batches, confirm, events, fund,
                                       fund_hot_wallet, ledger_balance, refusals, reserved, sender, start_signer,
                                       withdrawal_config)

REGTEST = network("regtest")


def payee() -> str:
    return script_to_address(random_script(), REGTEST)


def make_app(db_url, chain, **rules):
    app = Custody(withdrawal_config(db_url, chain.rpc.url, confirmations=2, **rules))
    app.scanner("bitcoin").catch_up()
    return app


@pytest.fixture
def btc(db_url, chain):
    app = make_app(db_url, chain)
    yield app
    app.close()


def request(app, acct, address, amount, key):
    return app.withdrawals.request("wallet-service", key, str(acct), "BTC", address, str(amount))[0]["id"]


def status(app, wid):
    return app.withdrawals.get(wid)[0]


def statuses(app, wid):
    return [h["to_status"] for h in app.withdrawals.get(wid)[1]]


# -- the signer refuses ---------------------------------------------------------------------------------
def test_signer_refusal_fails_the_named_withdrawal_and_requeues_the_rest(btc, chain, tmp_path):
    denied, allowed = payee(), payee()
    signer = start_signer(tmp_path, deny=[denied])
    try:
        fund_hot_wallet(btc, chain, BTC)
        acct = btc.create_account("payer").account_id
        fund(btc, acct, BTC)
        bad = request(btc, acct, denied, 2_000_000, "bad")
        good = request(btc, acct, allowed, 3_000_000, "good")
        s = sender(btc, signer)
        s.tick()
        # The signer's refusal, with its rule and reason, on the withdrawal it names; its hold released.
        w = status(btc, bad)
        assert w["status"] == "FAILED" and w["batch_id"] is None
        assert "deny_list" in w["reason"] and denied in w["reason"]
        assert statuses(btc, bad) == ["APPROVED", "QUEUED", "SIGNING", "FAILED"]
        assert app_history_actor(btc, bad) == "signer"
        # The other one went back to the queue, and out in a batch of its own in the same pass.
        requeued = app_history(btc, good)[3]
        assert requeued["to_status"] == "APPROVED" and "requeued" in requeued["reason"]
        assert "deny_list" in requeued["reason"]
        s.tick()
        assert status(btc, good)["status"] == "BROADCAST"
        assert statuses(btc, good) == ["APPROVED", "QUEUED", "SIGNING", "APPROVED", "QUEUED", "SIGNING", "SIGNED",
                                       "BROADCAST"]
        assert available_held(btc, acct) == (BTC - 3_000_000 - WITHDRAWAL_FEE, 3_000_000 + WITHDRAWAL_FEE)
        # No retry loop: more passes never ask the signer about the refused one again.
        confirm(btc, chain, s)
        s.tick()
        assert len(refusals(signer)) == 1
        assert status(btc, bad)["status"] == "FAILED" and status(btc, good)["status"] == "COMPLETED"
        assert available_held(btc, acct) == (BTC - 3_000_000 - WITHDRAWAL_FEE, 0)
        assert ledger_balance(btc, "fees:revenue") == WITHDRAWAL_FEE
        (attempt,) = attempts(btc)
        assert status(btc, good)["txid"] == attempt["txid"]
        # The refused batch's coin was released and spent by the second batch.
        assert reserved(btc) and all(o[0] != attempt["txid"] for o in reserved(btc))
    finally:
        signer.stop()


def app_history(app, wid):
    return app.withdrawals.get(wid)[1]


def app_history_actor(app, wid):
    return app.withdrawals.get(wid)[1][-1]["actor"]


def test_a_refusal_naming_no_destination_fails_the_batch_with_the_reason(btc, chain, tmp_path):
    signer = start_signer(tmp_path, assets=[{"asset": "BTC", "chain": "bitcoin", "max_per_transaction": "1000000",
                                             "max_per_24h": str(BTC), "max_fee": "1000000"}])
    try:
        fund_hot_wallet(btc, chain, BTC)
        acct = btc.create_account("payer").account_id
        fund(btc, acct, BTC)
        wid = request(btc, acct, payee(), 2_000_000, "k")
        s = sender(btc, signer)
        for _ in range(3):
            s.tick()
        w = status(btc, wid)
        assert w["status"] == "FAILED" and "max_per_transaction" in w["reason"]
        assert len(refusals(signer)) == 1
        assert available_held(btc, acct) == (BTC, 0)
        assert attempts(btc) == [] and reserved(btc) == []
        with read_transaction(btc.engine) as conn:
            (batch,) = conn.execute(select(t.withdrawal_batches)).all()
        assert batch.status == "FAILED" and "max_per_transaction" in batch.reason
    finally:
        signer.stop()


# -- the node refuses -----------------------------------------------------------------------------------
def hot_key(index: int = 1):
    return account_xprv(1).derive(f"m/0/{index}").key


def signed_not_sent(app, chain, signer, amount=2_000_000):
    """One withdrawal signed and stored, then the process 'dies' before broadcasting."""
    fund_hot_wallet(app, chain, BTC)
    acct = app.create_account("payer").account_id
    fund(app, acct, BTC)
    wid = request(app, acct, payee(), amount, "k")
    with pytest.raises(CrashForTest):
        sender(app, signer, crash_at="after_store").tick()
    assert status(app, wid)["status"] == "SIGNED"
    return acct, wid


def conflict(chain, outpoint, amount=BTC):
    """Someone else (another wallet holding the hot key) spends our reserved coin first."""
    raw = spend(outpoint, amount, hot_key(), random_script())
    return chain.miner.send(raw)


def test_node_refusal_with_an_input_spent_on_chain_fails_nothing(btc, chain, signer):
    acct, wid = signed_not_sent(btc, chain, signer)
    (outpoint,) = reserved(btc)
    conflict(chain, outpoint)
    chain.mine(1)  # the other spend confirms; our scanner has not seen it yet
    s = sender(btc, signer)
    s.tick()
    # Refused, but an input is spent on chain: not failed, not requeued (no second payment), hold kept.
    assert status(btc, wid)["status"] == "SIGNED"
    assert available_held(btc, acct) == (BTC - 2_000_000 - WITHDRAWAL_FEE, 2_000_000 + WITHDRAWAL_FEE)
    btc.scanner("bitcoin").catch_up()
    s.tick()
    assert status(btc, wid)["status"] == "SIGNED" and reserved(btc) == [outpoint]
    assert len(attempts(btc)) == 1
    # A spend that is none of ours (FAILURE_MODES 2): an alert, the batch held for staff, once.
    s.tick()
    (batch,) = batches(btc)
    assert batch["status"] == "NEEDS_STAFF" and "none of its transactions" in batch["reason"]
    (alert,) = events(btc, "alert.withdrawal_inputs_spent_elsewhere")
    assert alert["batch_id"] == batch["id"] and alert["withdrawal_ids"] == [wid]
    assert app_history_actor(btc, wid) == "withdrawal-job"
    assert app_history_reason(btc, wid).startswith("held for staff")
    assert available_held(btc, acct) == (BTC - 2_000_000 - WITHDRAWAL_FEE, 2_000_000 + WITHDRAWAL_FEE)
    # Staff settle it on the chain's proof: the spend paid nobody of ours, so the withdrawal fails
    # (hold released) and the hot wallet's loss is booked to suspense, once.
    (spender,) = btc.withdrawals.batches()[0][0]["spent_by"]
    confirm(btc, chain, s, blocks=1)
    _, (w,) = btc.withdrawals.resolve_batch("alice-admin", batch["id"], spender, "hot key used elsewhere")
    assert w["status"] == "FAILED" and "paid none" in w["reason"] and app_history_actor(btc, wid) == "alice-admin"
    assert available_held(btc, acct) == (BTC, 0)
    assert ledger_balance(btc, "wallet:bitcoin:hot") == -BTC and ledger_balance(btc, "suspense") == -BTC
    assert batches(btc)[0]["status"] == "FAILED" and btc.withdrawals.batches() == ([], "")


def app_history_reason(app, wid):
    return app.withdrawals.get(wid)[1][-1]["reason"]


# -- cancel while QUEUED --------------------------------------------------------------------------------
def test_cancel_while_queued_dissolves_the_batch_and_requeues_the_others(btc, chain, signer):
    fund_hot_wallet(btc, chain, BTC)
    acct = btc.create_account("payer").account_id
    fund(btc, acct, BTC)
    keep, drop = payee(), payee()
    kept = request(btc, acct, keep, 2_000_000, "keep")
    dropped = request(btc, acct, drop, 3_000_000, "drop")
    s = sender(btc, signer)
    first = s.build()
    assert {status(btc, kept)["batch_id"], status(btc, dropped)["batch_id"]} == {first}
    (coin,) = reserved(btc)
    cancelled = btc.withdrawals.cancel("wallet-service", dropped)
    assert cancelled["status"] == "CANCELLED" and cancelled["batch_id"] is None
    assert available_held(btc, acct) == (BTC - 2_000_000 - WITHDRAWAL_FEE, 2_000_000 + WITHDRAWAL_FEE)
    s.tick()
    with read_transaction(btc.engine) as conn:
        old = conn.execute(select(t.withdrawal_batches).where(t.withdrawal_batches.c.id == first)).one()
    assert old.status == "FAILED" and "left the batch" in old.reason
    w = status(btc, kept)
    assert w["status"] == "BROADCAST" and w["batch_id"] != first and w["requeues"] == 0  # not its own doing
    assert reserved(btc) == [coin]  # released by the old batch, reserved by the new one
    confirm(btc, chain, s)
    assert status(btc, kept)["status"] == "COMPLETED" and status(btc, dropped)["status"] == "CANCELLED"
    from embit.transaction import Transaction

    (attempt,) = attempts(btc)
    outputs = [script_to_address(o.script_pubkey.data, REGTEST) for o in Transaction.parse(attempt["raw"]).vout]
    assert keep in outputs and drop not in outputs
    assert available_held(btc, acct) == (BTC - 2_000_000 - WITHDRAWAL_FEE, 0)
    # After signing starts, cancel is refused.
    with pytest.raises(Exception, match="until signing starts"):
        btc.withdrawals.cancel("wallet-service", kept)


def test_others_leaving_its_batch_again_and_again_never_fails_a_withdrawal(btc, chain, signer):
    """Another client cancels its withdrawal out of the victim's QUEUED batch more often than
    max_requeues: each dissolution requeues the victim without counting it, the victim and an
    unrelated withdrawal are paid."""
    fund_hot_wallet(btc, chain, 5_000_000)
    victim, other, third = (btc.create_account(n).account_id for n in ("victim", "other", "third"))
    for acct in (victim, other, third):
        fund(btc, acct, BTC)
    vid = request(btc, victim, payee(), 100_000, "v")
    s = sender(btc, signer)
    for i in range(btc.config.withdrawals.max_requeues + 2):
        oid = request(btc, other, payee(), 100_000, f"o{i}")
        batch = s.build()
        assert status(btc, vid)["batch_id"] == batch == status(btc, oid)["batch_id"]
        btc.withdrawals.cancel("wallet-service", oid)
        s.sign(batch)  # dissolved before signing
        w = status(btc, vid)
        assert (w["status"], w["batch_id"], w["requeues"]) == ("APPROVED", None, 0)
    tid = request(btc, third, payee(), 100_000, "t")
    s.tick()
    confirm(btc, chain, s)
    assert status(btc, vid)["status"] == "COMPLETED" and status(btc, tid)["status"] == "COMPLETED"
    assert available_held(btc, victim) == (BTC - 100_000 - WITHDRAWAL_FEE, 0)


def test_a_batch_whose_step_fails_does_not_stop_the_others(btc, chain, signer, monkeypatch, caplog):
    """One batch's signing step raises every pass (a bug, a bad row): the error is logged with the
    batch's id and raised at the end of the pass, and meanwhile the other withdrawals are paid."""
    fund_hot_wallet(btc, chain, BTC, BTC)  # one coin for each batch
    acct = btc.create_account("payer").account_id
    fund(btc, acct, BTC)
    stuck_id = request(btc, acct, payee(), 100_000, "stuck")
    s = sender(btc, signer)
    stuck = s.build()
    other = request(btc, acct, payee(), 200_000, "other")
    sign = s.sign

    def broken(batch_id):
        if batch_id == stuck:
            raise RuntimeError("cannot sign this one")
        sign(batch_id)
    monkeypatch.setattr(s, "sign", broken)
    for _ in range(3):
        with pytest.raises(RuntimeError, match="cannot sign this one"):
            s.tick()
        chain.mine(1)
        btc.scanner("bitcoin").catch_up()
    assert f"batch {stuck}: broken failed" in caplog.text and "cannot sign this one" in caplog.text
    assert status(btc, other)["status"] == "COMPLETED" and status(btc, stuck_id)["status"] == "QUEUED"
    monkeypatch.setattr(s, "sign", sign)  # fixed: it goes out too
    s.tick()
    confirm(btc, chain, s)
    assert status(btc, stuck_id)["status"] == "COMPLETED"
    assert available_held(btc, acct) == (BTC - 300_000 - 2 * WITHDRAWAL_FEE, 0)
