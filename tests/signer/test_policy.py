"""Policy: each rule refuses when it should and allows when it should (FAILURE_MODES 9, 10, 11)."""
from __future__ import annotations

import pytest

from hsm.approvals import Approval, sign_approval
from tests.support import signer as S

HOT_KEY = [(S.HOT, S.HOT_BTC_PATH)]
ETH_KEY = [(S.HOT, S.HOT_ETH_PATH)]


def approvals(payload, *names, chain="bitcoin"):
    return [sign_approval(S.STAFF[n], n, chain, payload) for n in names]


def btc(signer, payload, approvals_=()):
    return signer.sign("bitcoin", payload, HOT_KEY, list(approvals_))


def test_small_payment_with_our_change_is_signed_and_explained(signer, keystore):
    """A payment below every threshold, change back to a derived address: signed, change marked internal."""
    out = btc(signer, S.simple_psbt(keystore, S.BTC // 10, fee=2_000))
    assert out.signed, out.refused_reason
    assert [(t.amount, t.internal) for t in out.transfers] == [(S.BTC // 10, False), (5 * S.BTC - S.BTC // 10 - 2_000, True)]
    assert out.fee == 2_000 and out.fee_asset == "BTC"


def test_change_to_an_address_the_signer_cannot_derive_counts_as_external(signer, keystore):
    """FAILURE_MODES 9: the 'change' claims our fingerprint but pays someone else: it is an external payment."""
    pub = keystore.public_key(S.HOT, S.HOT_CHANGE_PATH)
    fp = bytes.fromhex(keystore.fingerprint(S.HOT))
    payload = S.make_psbt([("11" * 32, 0, 5 * S.BTC, S.hot_script(keystore))],
                          [(S.foreign_script("dest"), S.BTC // 10), (S.foreign_script("thief"), 5 * S.BTC - S.BTC // 10 - 1000)],
                          change={1: (pub, fp, S.HOT_CHANGE_PATH)})
    out = btc(signer, payload)
    assert not out.signed and out.refused_rule == "max_per_transaction"
    assert [t.internal for t in out.transfers] == [False, False]


def test_change_hint_with_a_wrong_path_is_not_trusted(signer, keystore):
    """The hint names our change path but the script belongs to another index: not ours."""
    other = S.hot_script(keystore, "m/84h/1h/1h/1/7")
    pub = keystore.public_key(S.HOT, S.HOT_CHANGE_PATH)
    payload = S.make_psbt([("11" * 32, 0, 5 * S.BTC, S.hot_script(keystore))],
                          [(S.foreign_script(), S.BTC // 10), (other, 4 * S.BTC)],
                          change={1: (pub, bytes.fromhex(keystore.fingerprint(S.HOT)), S.HOT_CHANGE_PATH)})
    assert btc(signer, payload).transfers[1].internal is False


@pytest.mark.parametrize("path", ["m/84h/1h/1h/1/5000000", "m/84h/1h/1h/7/0", "m/84h/1h/1h/1/7h",
                                  "m/84h/1h/4000h/1/0", "m/84h/0h/1h/1/0", "m/99h/1h/1h/1/0", "m/84h/1h/1h/1/0/0"])
def test_change_to_our_key_at_a_path_nobody_records_counts_as_external(signer, keystore, path):
    """Our own key, but at a path no wallet scan would find (a huge or hardened index, another branch,
    account, coin type or purpose): a compromised core could move the hot wallet there, limits
    untouched, and only its own copy of the PSBT would say where. Not ours, so the limits apply."""
    pub = keystore.public_key(S.HOT, path)
    fp = bytes.fromhex(keystore.fingerprint(S.HOT))
    payload = S.make_psbt([("11" * 32, 0, 5 * S.BTC, S.hot_script(keystore))],
                          [(S.foreign_script(), S.BTC // 10), (S.p2wpkh_script(pub), 5 * S.BTC - S.BTC // 10 - 1_000)],
                          change={1: (pub, fp, path)})
    out = btc(signer, payload)
    assert out.transfers[1].internal is False and out.refused_rule == "max_per_transaction"


@pytest.mark.parametrize("path", ["m/84h/1h/1h/1/5000000", "m/0/1/2/3/4/5/6/7", "m/99h/1h/1h/1/0"])
def test_a_key_named_in_the_request_but_spending_nothing_does_not_make_an_output_ours(signer, keystore, path):
    """The request's keys are the caller's word: naming our key at a path no wallet scan finds,
    beside the input's, made an output paying it internal, past the limits, allow-list and
    approvals (a signer review: 50 BTC signed against a 2 BTC limit). Paying back a spent coin's
    own key stays ours."""
    pub = keystore.public_key(S.HOT, path)
    payload = S.make_psbt([("11" * 32, 0, 5 * S.BTC, S.hot_script(keystore))],
                          [(S.p2wpkh_script(pub), 5 * S.BTC - 1_000)])
    out = signer.sign("bitcoin", payload, [(S.HOT, S.HOT_BTC_PATH), (S.HOT, path)], [])
    assert out.transfers[0].internal is False and not out.signed and out.refused_rule == "max_per_transaction"
    back = S.make_psbt([("12" * 32, 0, 5 * S.BTC, S.hot_script(keystore))],
                       [(S.hot_script(keystore), 5 * S.BTC - 1_000)])
    out = signer.sign("bitcoin", back, [(S.HOT, S.HOT_BTC_PATH)], [])
    assert out.transfers[0].internal is True and out.signed


def test_the_audit_log_says_where_our_change_went(signer, keystore):
    import json

    assert btc(signer, S.simple_psbt(keystore, S.BTC // 10)).signed
    (signed,) = [json.loads(line) for line in signer.config.audit_log.read_text().splitlines()
                 if json.loads(line)["kind"] == "signed"]
    assert [d.get("path") for d in signed["data"]["destinations"]] == [None, f"{S.HOT} {S.HOT_CHANGE_PATH}"]


def test_input_without_its_utxo_is_refused(signer, keystore):
    payload = S.make_psbt([("11" * 32, 0, 5 * S.BTC, S.hot_script(keystore))], [(S.foreign_script(), 1000)],
                          with_utxo=False)
    out = btc(signer, payload)
    assert (out.signed, out.refused_rule) == (False, "decode") and "witness_utxo" in out.refused_reason


def test_input_not_spendable_by_the_given_keys_is_refused(signer, keystore):
    payload = S.make_psbt([("11" * 32, 0, S.BTC, S.foreign_script("not ours"))], [(S.foreign_script(), 1000)])
    assert btc(signer, payload).refused_rule == "keys"


def test_max_fee(signer, keystore):
    assert btc(signer, S.simple_psbt(keystore, 10_000, fee=100_000)).signed
    out = btc(signer, S.simple_psbt(keystore, 10_000, fee=100_001))
    assert (out.signed, out.refused_rule) == (False, "max_fee")


def test_max_per_transaction_counts_external_outputs_only(signer, keystore):
    approved = lambda p: approvals(p, "alice", "bob")  # noqa: E731
    at_limit = S.simple_psbt(keystore, 2 * S.BTC)
    assert btc(signer, at_limit, approved(at_limit)).signed  # 3 BTC of change doesn't count
    over = S.simple_psbt(keystore, 2 * S.BTC + 1)
    out = btc(signer, over, approved(over))
    assert (out.signed, out.refused_rule) == (False, "max_per_transaction")


def test_deny_list_refuses_and_allow_list_limits_external_destinations(make_signer, keystore):
    bad = S.foreign_script("sanctioned")
    good = S.foreign_script("partner")
    signer = make_signer(deny=[S.address_for(bad)], allow=[S.address_for(good)])
    assert btc(signer, S.simple_psbt(keystore, 1000, to=bad)).refused_rule == "deny_list"
    assert btc(signer, S.simple_psbt(keystore, 1000, to=S.foreign_script("stranger"))).refused_rule == "allow_list"
    assert btc(signer, S.simple_psbt(keystore, 1000, to=good)).signed


def test_internal_wallets_are_always_allowed_and_not_limited(make_signer, keystore):
    cold = S.foreign_script("cold wallet")
    signer = make_signer(allow=[], internal=[S.address_for(cold)])
    out = btc(signer, S.simple_psbt(keystore, 4 * S.BTC, to=cold))
    assert out.signed and all(t.internal for t in out.transfers)


def test_internal_xpub_addresses_are_recognised_by_derivation(make_signer, keystore):
    """A cold wallet given as an account xpub (keys elsewhere): its derived addresses are internal, others not."""
    from embit import bip39
    from embit.bip32 import HDKey

    cold_root = HDKey.from_seed(bip39.mnemonic_to_seed(S.OTHER_MNEMONIC))
    cold_xpub = cold_root.derive("m/84h/1h/0h").to_public().to_base58(version=bytes.fromhex("045f1cf6"))
    signer = make_signer(allow=[], internal_xpubs=[cold_xpub])
    pub = cold_root.derive("m/84h/1h/0h/0/3").to_public().key.sec()
    cold_script = S.p2wpkh_script(pub)
    hint = {0: (pub, cold_root.my_fingerprint, "m/84h/1h/0h/0/3")}
    good = S.make_psbt([("11" * 32, 0, 5 * S.BTC, S.hot_script(keystore))], [(cold_script, 5 * S.BTC - 1000)], change=hint)
    out = btc(signer, good)
    assert out.signed and out.transfers[0].internal
    wrong = S.make_psbt([("11" * 32, 0, 5 * S.BTC, S.hot_script(keystore))], [(S.foreign_script(), S.BTC)],
                        change=hint)
    assert btc(signer, wrong).refused_rule == "allow_list"


def test_rolling_24h_limit_refuses_then_allows_after_the_window(make_signer, keystore):
    now = [1_000_000.0]
    signer = make_signer(clock=lambda: now[0])
    for i in range(6):  # 6 x 0.5 BTC = the 3 BTC daily limit (6 spends of different coins)
        assert btc(signer, S.simple_psbt(keystore, S.BTC // 2, input_txid=f"{i + 1:064x}")).signed
    out = btc(signer, S.simple_psbt(keystore, 1))
    assert (out.signed, out.refused_rule) == (False, "rolling_24h")
    now[0] += 24 * 3600 + 1
    assert btc(signer, S.simple_psbt(keystore, S.BTC // 2)).signed


def test_a_clock_stepped_forward_and_back_again_does_not_forget_what_was_counted(make_signer, keystore):
    """A day's allowance signed; the clock steps 25 h ahead (a bad NTP answer) and back. The step
    itself lets one more allowance through (nothing tells it from a day passing), but after the
    correction everything counted before counts again: the window used to drop it for good, and
    a third allowance went out within the same real day (a signer review)."""
    now = [3_000_000.0]
    signer = make_signer(clock=lambda: now[0])
    coins = iter(range(1, 100))

    def pay():
        return btc(signer, S.simple_psbt(keystore, S.BTC // 2, input_txid=f"{next(coins):064x}")).signed

    assert [pay() for _ in range(7)] == [True] * 6 + [False]
    now[0] += 25 * 3600
    assert pay()
    now[0] -= 25 * 3600 - 60
    assert not any(pay() for _ in range(6))
    now[0] += 24 * 3600 + 1  # a real day later the first six have left the window; the step's one has not
    assert [pay() for _ in range(6)] == [True] * 5 + [False]


def test_rolling_limits_survive_a_restart(make_signer, keystore):
    now = [2_000_000.0]
    first = make_signer(clock=lambda: now[0])
    for i in range(6):
        assert btc(first, S.simple_psbt(keystore, S.BTC // 2, input_txid=f"{i + 1:064x}")).signed
    first.audit.close()
    first.limits.close()
    restarted = make_signer(clock=lambda: now[0] + 60)
    out = btc(restarted, S.simple_psbt(keystore, 1))
    assert (out.signed, out.refused_rule) == (False, "rolling_24h")


def _two_inputs(keystore, a_amount: int, b_amount: int) -> bytes:
    """Coins A and B of ours (1 BTC each in truth) paying 0.1 BTC out and 0.9 BTC change."""
    ours = S.hot_script(keystore)
    change_pub = keystore.public_key(S.HOT, S.HOT_CHANGE_PATH)
    fp = bytes.fromhex(keystore.fingerprint(S.HOT))
    outs = [(S.foreign_script("miner-friend"), S.BTC // 10), (S.p2wpkh_script(change_pub), S.BTC - S.BTC // 10)]
    return S.make_psbt([("aa" * 32, 0, a_amount, ours), ("bb" * 32, 0, b_amount, ours)], outs,
                       change={1: (change_pub, fp, S.HOT_CHANGE_PATH)})


def test_an_input_claimed_with_another_amount_than_it_was_signed_with_is_refused(make_signer, keystore):
    """CVE-2020-14199: each request understates the other coin, so each shows a 1,000 sat fee; their
    signatures would combine into one transaction paying 1 BTC to miners. The second is refused,
    also after a restart; the same claims again (a retry, a fee bump) are still signed."""
    signer = make_signer()
    first = btc(signer, _two_inputs(keystore, S.BTC, 1_000))
    assert first.signed and first.fee == 1_000
    assert btc(signer, _two_inputs(keystore, S.BTC, 1_000)).signed, "the same claims again"
    second = btc(signer, _two_inputs(keystore, 1_000, S.BTC))
    assert (second.signed, second.refused_rule) == (False, "inputs")
    assert f"{'aa' * 32}:0 was signed before as {S.BTC} sats" in second.refused_reason
    signer.audit.close()
    signer.limits.close()
    signer.policy.close()
    restarted = make_signer()
    assert btc(restarted, _two_inputs(keystore, 1_000, S.BTC)).refused_rule == "inputs"


def test_a_transaction_spending_one_outpoint_twice_is_refused(signer, keystore):
    """Invalid on chain, and a way to give one coin two claimed amounts in one request: listed as
    [A low, A true, B true, B low], memory and the table kept different claims, and two later
    requests could each show a small fee while their signatures combined into one paying miners."""
    ours = S.hot_script(keystore)
    payload = S.make_psbt([("aa" * 32, 0, 1_000, ours), ("aa" * 32, 0, S.BTC, ours)],
                          [(S.foreign_script(), S.BTC // 10)])
    out = btc(signer, payload)
    assert (out.signed, out.refused_rule) == (False, "decode") and "one outpoint twice" in out.refused_reason


def test_refused_payment_does_not_use_up_the_daily_allowance(make_signer, keystore):
    signer = make_signer()
    assert btc(signer, S.simple_psbt(keystore, S.BTC, fee=200_000)).refused_rule == "max_fee"
    p = S.simple_psbt(keystore, 2 * S.BTC)
    assert btc(signer, p, approvals(p, "alice", "bob")).signed


def test_approvals_quorum_of_distinct_staff_over_this_payload(signer, keystore):
    payload = S.simple_psbt(keystore, S.BTC)  # above approval_above (0.5 BTC)
    out = btc(signer, payload)
    assert (out.signed, out.refused_rule) == (False, "approvals")
    assert not btc(signer, payload, approvals(payload, "alice")).signed
    assert btc(signer, payload, approvals(payload, "alice", "carol")).signed


def test_bad_approvals_do_not_count(signer, keystore):
    """Forged, other-payload, duplicate-approver and unknown-key approvals don't make a quorum."""
    payload = S.simple_psbt(keystore, S.BTC)
    other = S.simple_psbt(keystore, S.BTC + 1)
    (alice,) = approvals(payload, "alice")
    forged = Approval("bob", bytes(64))
    for_other = approvals(other, "bob")[0]
    duplicate = approvals(payload, "alice")[0]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    mallory = sign_approval(Ed25519PrivateKey.generate(), "mallory", "bitcoin", payload)
    impostor = sign_approval(Ed25519PrivateKey.generate(), "bob", "bitcoin", payload)  # bob's name, not his key
    for bad in (forged, for_other, duplicate, mallory, impostor):
        out = btc(signer, payload, [alice, bad])
        assert (out.signed, out.refused_rule) == (False, "approvals"), bad
        assert "1 valid" in out.refused_reason
    eth_chain = sign_approval(S.STAFF["bob"], "bob", "ethereum", payload)  # same bytes, other chain
    assert btc(signer, payload, [alice, eth_chain]).refused_rule == "approvals"
    assert btc(signer, payload, [alice, approvals(payload, "bob")[0]]).signed


def test_approval_binds_the_canonical_payload_base64_or_binary(signer, keystore):
    import base64

    payload = S.simple_psbt(keystore, S.BTC)
    ok = approvals(payload, "alice", "bob")
    assert btc(signer, base64.b64encode(payload), ok).signed


def test_one_sat_more_than_approved_is_refused(signer, keystore):
    """FAILURE_MODES 9: the amount is 1 sat off what staff approved: the approvals don't count."""
    approved = S.simple_psbt(keystore, S.BTC)
    sent = S.simple_psbt(keystore, S.BTC + 1)
    assert btc(signer, sent, approvals(approved, "alice", "bob")).refused_rule == "approvals"


def test_ethereum_payment_and_chain_id_rules(signer, keystore):
    """FAILURE_MODES 10: wrong chain id and legacy (no chain id) transactions are refused."""
    import rlp

    to = "0x" + "22" * 20
    assert signer.sign("ethereum", S.eth_payload(to, S.ETH), ETH_KEY, []).signed
    wrong = signer.sign("ethereum", S.eth_payload(to, S.ETH, chain_id=1), ETH_KEY, [])
    assert (wrong.signed, wrong.refused_rule) == (False, "chain_id")
    legacy = rlp.encode([0, 10**9, 21000, bytes.fromhex("22" * 20), S.ETH, b""])
    assert signer.sign("ethereum", legacy, ETH_KEY, []).refused_rule == "chain_id"
    assert signer.sign("ethereum", S.eth_payload(to, S.ETH, max_fee=10**12), ETH_KEY, []).refused_rule == "max_fee"
    assert signer.sign("ethereum", S.eth_payload(to, 6 * S.ETH), ETH_KEY, []).refused_rule == "max_per_transaction"
    big = S.eth_payload(to, 3 * S.ETH)
    assert signer.sign("ethereum", big, ETH_KEY, []).refused_rule == "approvals"
    assert signer.sign("ethereum", big, ETH_KEY, approvals(big, "bob", "carol", chain="ethereum")).signed


def test_ethereum_contract_calls_are_explained_or_refused(signer, keystore):
    recipient = "33" * 20
    transfer = bytes.fromhex("a9059cbb") + bytes(12) + bytes.fromhex(recipient) + (500 * 10**6).to_bytes(32, "big")
    out = signer.sign("ethereum", S.eth_payload(S.USDT_CONTRACT, 0, data=transfer, gas=60_000), ETH_KEY, [])
    assert out.signed and [(t.destination, t.asset, t.amount) for t in out.transfers] == [
        ("0x" + recipient, "USDT", 500 * 10**6)]
    unknown = signer.sign("ethereum", S.eth_payload("0x" + "44" * 20, 0, data=transfer, gas=60_000), ETH_KEY, [])
    assert unknown.refused_rule == "decode" and "not a token" in unknown.refused_reason
    approve = bytes.fromhex("095ea7b3") + transfer[4:]
    assert signer.sign("ethereum", S.eth_payload(S.USDT_CONTRACT, 0, data=approve, gas=60_000),
                       ETH_KEY, []).refused_rule == "decode"


def test_ethereum_access_list_must_have_eip2930_shape(signer, keystore):
    """A malformed access list is refused (nodes would reject the signed transaction, its nonce stuck);
    a well-formed one is signed and kept as it was sent."""
    import rlp
    from eth_account import Account

    from hsm.decode.ethereum import unsigned_transaction

    def payload(access_list):
        return unsigned_transaction(S.ANVIL_CHAIN_ID, 0, 10**9, 2 * 10**9, 30_000, "0x" + "22" * 20, S.ETH,
                                    b"", access_list)

    address, key = b"\x55" * 20, b"\x66" * 32
    for bad in ([b"junk", [b"\x01"]], [[address]], [[address, [key], []]], [[address[:19], [key]]],
                [[address, key]], [[address, [key[:31]]]], [[address, [[key]]]], [[[address], [key]]]):
        out = signer.sign("ethereum", payload(bad), ETH_KEY, [])
        assert (out.signed, out.refused_rule) == (False, "decode"), bad
        assert "access_list" in out.refused_reason
    access_list = [[address, [key, b"\x77" * 32]], [b"\x88" * 20, []]]
    good = signer.sign("ethereum", payload(access_list), ETH_KEY, [])
    assert good.signed, good.refused_reason
    assert Account.recover_transaction(good.raw_transaction).lower() == S.hot_eth_address(keystore)
    assert rlp.decode(good.raw_transaction[1:])[8] == access_list


def test_never_signs_what_it_cannot_decode(signer):
    """There is no bare-digest path: a 32-byte 'payload' is refused by the decoder."""
    digest = bytes(range(32))
    assert signer.sign("bitcoin", digest, HOT_KEY, []).refused_rule == "decode"
    assert signer.sign("ethereum", digest, ETH_KEY, []).refused_rule in ("decode", "chain_id")
    assert signer.sign("dogecoin", digest, HOT_KEY, []).refused_rule == "chain"


def test_the_rolling_window_keeps_a_week_of_entries_not_more():
    """Entries that left the window are kept (a clock stepped back counts them again), but only for
    KEEP_S: a signer running for months must not hold every signature it ever made."""
    from hsm.limits import KEEP_S, WINDOW_S, RollingLimits

    limits = RollingLimits(now_s=0.0)
    most = 0
    for minute in range(30 * 24 * 60):  # a month, one payment of 1 a minute
        limits.record("BTC", 1, minute * 60.0, "")
        assert limits.spent_since("BTC", minute * 60.0 - WINDOW_S) == min(minute + 1, 24 * 60)
        most = max(most, len(limits._window["BTC"]))
    assert most <= 1.2 * (KEEP_S + WINDOW_S) / 60
    assert limits.spent_since("BTC", (30 * 24 * 60 - 1) * 60.0 - 3 * WINDOW_S) == 3 * 24 * 60  # three days back
