"""The signer checks the staff approvals of each withdrawal it pays (real signer process,
real bcoin node): the core passes each withdrawal's content and its Ed25519 approvals; an
output above the signer's approval_above needs the signer's own quorum over it."""
from __future__ import annotations


from chains.bitcoin.addresses import script_to_address
from chains.bitcoin.params import network
from custody.app import Custody
from tests.support.bitcoin import random_script
from tests.support.withdrawals import (BTC, approve_signature, confirm, fund, fund_hot_wallet, refusals, sender,
                                       start_signer, withdrawal_config)

REGTEST = network("regtest")



def test_the_signer_pays_only_outputs_its_own_staff_quorum_approved(btc, chain, tmp_path):
    # The core asks one approval above 0.1 BTC and two above 1 BTC; the signer wants two above 0.5 BTC.
    signer = start_signer(tmp_path, approval_quorum=2, assets=[{
        "asset": "BTC", "chain": "bitcoin", "max_per_transaction": str(50 * BTC), "max_per_24h": str(500 * BTC),
        "max_fee": "1000000", "approval_above": str(BTC // 2)}])
    try:
        fund_hot_wallet(btc, chain, 5 * BTC)
        acct = btc.create_account("payer").account_id
        fund(btc, acct, 5 * BTC)
        big_to, mid_to, small_to = (script_to_address(random_script(), REGTEST) for _ in range(3))
        big = btc.withdrawals.request("wallet-service", "big", str(acct), "BTC", big_to, str(2 * BTC))[0]["id"]
        mid = btc.withdrawals.request("wallet-service", "mid", str(acct), "BTC", mid_to, str(BTC * 6 // 10))[0]["id"]
        small = btc.withdrawals.request("wallet-service", "small", str(acct), "BTC", small_to, str(BTC // 20))[0]["id"]
        for staff in ("alice", "bob"):
            btc.withdrawals.approve(staff, big, approve_signature(btc, big, staff))
        btc.withdrawals.approve("alice", mid, approve_signature(btc, mid, "alice"))  # enough for the core only
        s = sender(btc, signer)
        s.tick()
        # The signer refused the one output its quorum did not approve, naming it; the others went out.
        w = btc.withdrawals.get(mid)[0]
        assert w["status"] == "FAILED" and "approvals" in w["reason"] and mid_to in w["reason"]
        (refusal,) = refusals(signer)
        assert refusal["data"]["rule"] == "approvals"
        assert btc.withdrawals.get(big)[0]["status"] == "BROADCAST"
        assert btc.withdrawals.get(small)[0]["status"] == "BROADCAST"  # below the threshold: none needed
        confirm(btc, chain, s)
        assert {btc.withdrawals.get(x)[0]["status"] for x in (big, small)} == {"COMPLETED"}
    finally:
        signer.stop()


def test_batches_are_split_to_fit_the_signers_per_transaction_maximum(db_url, chain, tmp_path):
    """Signer and core both know the 0.05 BTC maximum: 4 x 0.02 BTC go out in two transactions
    (0.04 each) instead of one refused batch; a 0.06 BTC withdrawal can never be signed and fails."""
    cap = 5_000_000
    app = Custody(withdrawal_config(db_url, chain.rpc.url, confirmations=2, signer_max_per_transaction=str(cap)))
    signer = start_signer(tmp_path, assets=[{"asset": "BTC", "chain": "bitcoin", "max_per_transaction": str(cap),
                                             "max_per_24h": str(500 * BTC), "max_fee": "1000000"}])
    try:
        app.scanner("bitcoin").catch_up()
        fund_hot_wallet(app, chain, BTC, BTC)
        acct = app.create_account("payer").account_id
        fund(app, acct, BTC)
        small = [app.withdrawals.request("wallet-service", f"k{i}", str(acct), "BTC",
                                         script_to_address(random_script(), REGTEST), "2000000")[0]["id"]
                 for i in range(4)]
        big = app.withdrawals.request("wallet-service", "big", str(acct), "BTC",
                                      script_to_address(random_script(), REGTEST), "6000000")[0]["id"]
        s = sender(app, signer)
        s.tick()
        w = app.withdrawals.get(big)[0]
        assert w["status"] == "FAILED" and "above the signer's maximum of 5000000" in w["reason"]
        rows = [app.withdrawals.get(x)[0] for x in small]
        assert {r["status"] for r in rows} == {"BROADCAST"}
        assert [r["batch_id"] for r in rows].count(rows[0]["batch_id"]) == 2 and len({r["batch_id"] for r in rows}) == 2
        assert refusals(signer) == []
        confirm(app, chain, s)
        assert {app.withdrawals.get(x)[0]["status"] for x in small} == {"COMPLETED"}
    finally:
        signer.stop()
        app.close()
