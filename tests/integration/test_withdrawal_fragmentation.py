"""FAILURE_MODES 29 on a real bcoin node with a real signer process: a hot wallet of 3,000
small coins. A withdrawal larger than max_inputs of them can pay is not built as one
oversized transaction: the largest coins are first merged (at most max_inputs per merge,
under the standard size), as many merges as the withdrawal needs; then it is paid."""
from __future__ import annotations

from embit.transaction import Transaction

from chains.bitcoin.addresses import script_to_address
from chains.bitcoin.params import network
from chains.bitcoin.psbt import vsize
from custody.app import Custody
from tests.support.bitcoin import HOT_XPUB, random_script
from tests.support.withdrawals import (BTC, WITHDRAWAL_FEE, attempts, available_held, batches, confirm, fund,
                                       ledger_balance, outputs_paying, reserved, sender, withdrawal_config)

REGTEST = network("regtest")
DUST, COINS, MAX_INPUTS = 3_000, 3_000, 250


def test_three_thousand_small_coins_are_merged_then_the_withdrawal_is_paid(db_url, chain, signer, monkeypatch):
    app = Custody(withdrawal_config(db_url, chain.rpc.url, confirmations=2, max_inputs=MAX_INPUTS))
    try:
        app.scanner("bitcoin").catch_up()
        start = chain.height()
        hot = app.plugin("bitcoin").derive_address(HOT_XPUB, 1).watch_key
        for _ in range(COINS // 1_500):
            chain.pay(*[(hot, DUST)] * 1_500)
        chain.mine(2)  # as deep as the sender spends
        app.scanner("bitcoin").catch_up()
        acct = app.create_account("payer").account_id
        fund(app, acct, BTC)
        script = random_script()
        amount = 2_000_000  # 667 of the coins: more than one transaction may spend
        wid = app.withdrawals.request("wallet-service", "k", str(acct), "BTC", script_to_address(script, REGTEST),
                                      str(amount))[0]["id"]
        s = sender(app, signer)
        s.tick()
        merges = [b for b in batches(app) if b["kind"] == "consolidation"]
        assert len(merges) == 3 and {b["status"] for b in merges} == {"BROADCAST"}
        assert app.withdrawals.get(wid)[0]["status"] == "APPROVED"
        assert len(reserved(app)) == 3 * MAX_INPUTS
        hot0 = app.plugin("bitcoin").derive_address(HOT_XPUB, 0).watch_key
        for a in attempts(app):
            tx = Transaction.parse(a["raw"])
            assert len(tx.vin) == MAX_INPUTS and [o.script_pubkey.data for o in tx.vout] == [hot0]
            assert vsize(len(tx.vin), [hot0]) <= 100_000
        merged = sum(MAX_INPUTS * DUST - a["fee"] for a in attempts(app))
        assert merged >= amount > merged - (MAX_INPUTS * DUST - attempts(app)[0]["fee"])  # no more merges than needed
        s.tick()
        assert len(batches(app)) == 3  # waiting for the merges, not merging more
        confirm(app, chain, s, blocks=2)
        # The merged coins paid the withdrawal in one small transaction.
        (payment,) = [b for b in batches(app) if b["kind"] == "withdrawals"]
        paying = [a for a in attempts(app) if a["batch_id"] == payment["id"]]
        assert len(Transaction.parse(paying[0]["raw"]).vin) <= 3
        confirm(app, chain, s, blocks=2)
        assert app.withdrawals.get(wid)[0]["status"] == "COMPLETED"
        assert {b["status"] for b in batches(app)} == {"COMPLETED"}
        first, token = app.withdrawals.batches("COMPLETED", page_size=3)
        rest, end = app.withdrawals.batches("COMPLETED", page_size=3, page_token=token)
        assert [b["id"] for b in first + rest] == sorted(b["id"] for b in batches(app)) and (len(rest), end) == (1, "")
        for b in first + rest:  # each batch with its own withdrawals and its own spending transaction
            assert b["withdrawal_ids"] == ([wid] if b["kind"] == "withdrawals" else []) and b["spent_by"] == [b["txid"]]
        # A page also ends before the batch that would take it past its budget of withdrawal ids.
        monkeypatch.setattr("custody.withdrawals.resolve.MAX_WITHDRAWAL_IDS_PER_PAGE", 0)
        merges, token = app.withdrawals.batches("COMPLETED", page_size=1000)
        assert [b["kind"] for b in merges] == ["consolidation"] * 3 and token
        assert [b["id"] for b in app.withdrawals.batches("COMPLETED", page_token=token)[0]] == [payment["id"]]
        assert outputs_paying(chain, script, start) == [(paying[0]["txid"], amount)]
        fees = sum(a["fee"] for a in attempts(app))
        assert ledger_balance(app, "fees:network") == -fees
        assert ledger_balance(app, "wallet:bitcoin:hot") == -(amount + fees)
        assert available_held(app, acct) == (BTC - amount - WITHDRAWAL_FEE, 0)
    finally:
        app.close()


def test_many_small_coins_are_merged_when_fees_are_low(db_url, chain, signer):
    """consolidate_above = 300: with 400 small coins, nothing waiting and the fallback rate
    (2 sat/vB) at the configured maximum, the 250 smallest are merged; once, not per pass."""
    app = Custody(withdrawal_config(db_url, chain.rpc.url, confirmations=2, max_inputs=MAX_INPUTS,
                                    consolidate_above=300, consolidation_max_fee_rate=2))
    try:
        app.scanner("bitcoin").catch_up()
        hot = app.plugin("bitcoin").derive_address(HOT_XPUB, 1).watch_key
        chain.pay(*[(hot, DUST)] * 350, *[(hot, DUST + 1)] * 50)
        chain.mine(2)  # as deep as the sender spends
        app.scanner("bitcoin").catch_up()
        s = sender(app, signer)
        s.tick()
        s.tick()
        (merge,) = batches(app)
        assert merge["kind"] == "consolidation" and merge["status"] == "BROADCAST"
        (attempt,) = attempts(app)
        tx = Transaction.parse(attempt["raw"])
        assert len(tx.vin) == MAX_INPUTS and tx.vout[0].value == MAX_INPUTS * DUST - attempt["fee"]  # the smallest
        confirm(app, chain, s, blocks=2)
        assert batches(app)[0]["status"] == "COMPLETED"
        assert ledger_balance(app, "fees:network") == -attempt["fee"]
        # 150 + 1 coins left: at or below 300, nothing more to merge.
        s.tick()
        assert len(batches(app)) == 1
    finally:
        app.close()
