"""The signer verifies staff approvals of withdrawals itself (DESIGN 5, FAILURE_MODES 9, 11):
each external output above approval_above (0.5 BTC here; quorum 2 of alice, bob, carol)
needs a quorum of valid approvals over one withdrawal of exactly that destination and amount."""
from __future__ import annotations

import dataclasses
import pathlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chains.bitcoin.addresses import script_to_address
from hsm.approvals import Approval, WithdrawalApproval, approval_message, withdrawal_digest
from tests.support import signer as S

HOT_KEY = [(S.HOT, S.HOT_BTC_PATH)]
TO = S.foreign_script("payee")
ADDRESS = script_to_address(TO, S.REGTEST)


def withdrawal(wid="w1", amount=S.BTC, address=ADDRESS, *names, key=None) -> WithdrawalApproval:
    w = WithdrawalApproval(wid, 7, "BTC", address, amount, 1_000)
    return dataclasses.replace(w, approvals=tuple(approve(w, n, key) for n in names))


def approve(w: WithdrawalApproval, name: str, key=None) -> Approval:
    digest = withdrawal_digest(w.withdrawal_id, w.account_id, w.asset, "bitcoin", w.to_address, w.amount, w.fee)
    return Approval(name, (key or S.STAFF[name]).sign(approval_message("bitcoin", digest)))


def sign(signer, payload, withdrawals):
    return signer.sign("bitcoin", payload, HOT_KEY, [], withdrawals=withdrawals)


def test_a_quorum_over_the_matching_withdrawal_approves_its_output(signer, keystore):
    payload = S.simple_psbt(keystore, S.BTC, to=TO)
    assert sign(signer, payload, []).refused_rule == "approvals"
    assert sign(signer, payload, [withdrawal("w1", S.BTC, ADDRESS, "alice")]).refused_rule == "approvals"
    out = sign(signer, payload, [withdrawal("w1", S.BTC, ADDRESS, "alice", "carol")])
    assert out.signed, out.refused_reason
    # Below the threshold no approval is needed.
    assert sign(signer, S.simple_psbt(keystore, S.BTC // 2, to=TO), []).signed


def test_forged_duplicate_unknown_key_and_impostor_approvals_do_not_count(signer, keystore):
    payload = S.simple_psbt(keystore, S.BTC, to=TO)
    w = withdrawal("w1", S.BTC, ADDRESS, "alice")
    alice = w.approvals[0]
    bad = {
        "forged": Approval("bob", bytes(64)),
        "duplicate": alice,
        "unknown key": approve(w, "mallory", Ed25519PrivateKey.generate()),
        "impostor": approve(w, "bob", Ed25519PrivateKey.generate()),  # bob's name, not his key
    }
    for what, approval in bad.items():
        out = sign(signer, payload, [dataclasses.replace(w, approvals=(alice, approval))])
        assert (out.signed, out.refused_rule) == (False, "approvals"), what
        assert "1 valid of 2" in out.refused_reason, what
    assert sign(signer, payload, [dataclasses.replace(w, approvals=(alice, approve(w, "bob")))]).signed


def test_approvals_of_another_withdrawal_do_not_count(signer, keystore):
    payload = S.simple_psbt(keystore, S.BTC, to=TO)
    other = withdrawal("w2", S.BTC, ADDRESS, "alice", "bob")
    # Their signatures under w1's content: they were made over w2's, so they don't verify.
    moved = WithdrawalApproval("w1", 7, "BTC", ADDRESS, S.BTC, 1_000, other.approvals)
    assert sign(signer, payload, [moved]).refused_rule == "approvals"
    # A fully approved withdrawal to another address or of another amount does not cover this output.
    elsewhere = withdrawal("w3", S.BTC, script_to_address(S.foreign_script("other"), S.REGTEST), "alice", "bob")
    one_sat_less = withdrawal("w4", S.BTC - 1, ADDRESS, "alice", "bob")
    for w in (elsewhere, one_sat_less):
        out = sign(signer, payload, [w])
        assert (out.signed, out.refused_rule) == (False, "approvals") and ADDRESS in out.refused_reason


def test_one_approved_withdrawal_covers_one_output_only(signer, keystore):
    """Two identical outputs need two approved withdrawals: one approval can't pay twice."""
    change_pub = keystore.public_key(S.HOT, S.HOT_CHANGE_PATH)
    change = S.p2wpkh_address(change_pub, S.REGTEST)[1]
    payload = S.make_psbt([("11" * 32, 0, 5 * S.BTC, S.hot_script(keystore))],
                          [(TO, S.BTC), (TO, S.BTC), (change, 3 * S.BTC - 1_000)],
                          change={2: (change_pub, bytes.fromhex(keystore.fingerprint(S.HOT)), S.HOT_CHANGE_PATH)})
    w1 = withdrawal("w1", S.BTC, ADDRESS, "alice", "bob")
    assert sign(signer, payload, [w1]).refused_rule == "approvals"
    assert sign(signer, payload, [w1, w1]).refused_rule == "approvals"  # the same id twice counts once
    assert sign(signer, payload, [w1, withdrawal("w2", S.BTC, ADDRESS, "bob", "carol")]).signed


def test_whole_payload_approvals_still_approve(signer, keystore):
    from hsm.approvals import sign_approval

    payload = S.simple_psbt(keystore, S.BTC, to=TO)
    approvals = [sign_approval(S.STAFF[n], n, "bitcoin", payload) for n in ("alice", "bob")]
    assert signer.sign("bitcoin", payload, HOT_KEY, approvals).signed


def test_an_approved_withdrawal_is_paid_by_one_set_of_coins_only(make_signer, keystore):
    """A compromised core sends the same approved withdrawal again with other coins: both payments
    could confirm. Refused, also after a restart; a fee bump (the same coins) is still signed."""
    signer = make_signer()
    w1 = withdrawal("w1", S.BTC, ADDRESS, "alice", "bob")
    first = sign(signer, S.simple_psbt(keystore, S.BTC, to=TO, input_txid="aa" * 32), [w1])
    assert first.signed, first.refused_reason
    bump = sign(signer, S.simple_psbt(keystore, S.BTC, to=TO, input_txid="aa" * 32, fee=5_000), [w1])
    assert bump.signed and bump.txid != first.txid, bump.refused_reason
    again = sign(signer, S.simple_psbt(keystore, S.BTC, to=TO, input_txid="bb" * 32), [w1])
    assert (again.signed, again.refused_rule) == (False, "approvals")
    assert "withdrawal w1 was paid before by a transaction spending" in again.refused_reason
    other = sign(signer, S.simple_psbt(keystore, S.BTC, to=TO, input_txid="cc" * 32),
                 [withdrawal("w2", S.BTC, ADDRESS, "alice", "bob")])
    assert other.signed, "another withdrawal to the same address is its own payment"
    signer.audit.close()
    signer.policy.close()
    restarted = make_signer()
    assert sign(restarted, S.simple_psbt(keystore, S.BTC, to=TO, input_txid="dd" * 32), [w1]).refused_rule == \
        "approvals"


def test_an_approved_ethereum_withdrawal_is_paid_by_one_nonce_only(make_signer, keystore):
    """Approved once, it was signed again under each new nonce: every one of those transactions
    could confirm (a signer review). A replacement (the same nonce, a higher fee) is still signed,
    another nonce is refused, also after a restart."""
    to, amount = "0x" + "ab" * 20, 2 * S.ETH + 1  # approval_above 2 ETH; 8 ETH a day, replacements count

    def pay(signer, nonce, wid="w1", max_fee=2 * 10**9):
        digest = withdrawal_digest(wid, 7, "ETH", "ethereum", to, amount, 0)
        approved = WithdrawalApproval(wid, 7, "ETH", to, amount, 0, tuple(
            Approval(n, S.STAFF[n].sign(approval_message("ethereum", digest))) for n in ("alice", "bob")))
        return signer.sign("ethereum", S.eth_payload(to, amount, nonce=nonce, max_fee=max_fee),
                           [(S.HOT, S.HOT_ETH_PATH)], [], withdrawals=[approved])

    signer = make_signer()
    assert pay(signer, 0).signed
    assert pay(signer, 0, max_fee=3 * 10**9).signed  # a replacement: only one of the two can confirm
    again = pay(signer, 1)
    assert (again.signed, again.refused_rule) == (False, "approvals")
    assert f"withdrawal w1 was paid before by a transaction spending {S.hot_eth_address(keystore)}/0" in \
        again.refused_reason
    signer.audit.close()
    signer.policy.close()
    restarted = make_signer()
    assert pay(restarted, 2).refused_rule == "approvals"
    assert pay(restarted, 1, wid="w2").signed, "another withdrawal is its own payment"


def test_an_ethereum_only_signer_whose_limits_db_is_lost_refuses_to_start(make_signer, keystore, tmp_path):
    """limits_db now remembers the nonce that paid an approved ETH withdrawal; the "file lost"
    check counted only Bitcoin signatures, so an Ethereum-only signer started on an empty file and
    paid the withdrawal again under a new nonce (a review of today's changes)."""
    from hsm.errors import LimitsFileMissing

    to, amount = "0x" + "ab" * 20, 2 * S.ETH + 1
    digest = withdrawal_digest("w1", 7, "ETH", "ethereum", to, amount, 0)
    approved = WithdrawalApproval("w1", 7, "ETH", to, amount, 0, tuple(
        Approval(n, S.STAFF[n].sign(approval_message("ethereum", digest))) for n in ("alice", "bob")))
    signer = make_signer()
    assert signer.sign("ethereum", S.eth_payload(to, amount, nonce=0), [(S.HOT, S.HOT_ETH_PATH)], [],
                       withdrawals=[approved]).signed
    signer.audit.close()
    signer.policy.close()
    for suffix in ("", "-wal", "-shm"):
        pathlib.Path(str(signer.config.limits_db) + suffix).unlink(missing_ok=True)
    with pytest.raises(LimitsFileMissing, match="holds 1 signatures it remembers"):
        make_signer()
