"""The signer limits the fees it signs over a rolling 24 hours (max_fees_per_24h on the chain's
native asset), self-transfers included: without it a compromised core could burn up to max_fee per
transaction between the exchange's own wallets, without end. A fee bump counts only what it pays
above the fee already counted for its spend, since only one of them can confirm."""
from __future__ import annotations

import sqlite3

import pytest

from hsm.config import ConfigError, parse
from hsm.replacements import CountedSpends
from tests.support import signer as S

HOT_KEY = [(S.HOT, S.HOT_BTC_PATH)]
POLICY = {"approval_quorum": 1, "assets": [{"asset": "BTC", "chain": "bitcoin", "max_fee": "8000",
                                             "max_fees_per_24h": "10000"}]}


def self_transfer(keystore, coin: str, fee: int, value: int = S.BTC) -> bytes:
    """One coin of ours to our own change address: no money leaves, only the fee."""
    change_pub = keystore.public_key(S.HOT, S.HOT_CHANGE_PATH)
    return S.make_psbt([(coin, 0, value, S.hot_script(keystore))], [(S.p2wpkh_script(change_pub), value - fee)],
                       change={0: (change_pub, bytes.fromhex(keystore.fingerprint(S.HOT)), S.HOT_CHANGE_PATH)})


def sign(signer, payload):
    return signer.sign("bitcoin", payload, HOT_KEY, [])


def test_self_transfers_use_up_the_fees_allowance_and_it_comes_back_after_the_window(make_signer, keystore):
    now = [5_000_000.0]
    signer = make_signer(clock=lambda: now[0], **POLICY)
    first = sign(signer, self_transfer(keystore, "01" * 32, fee=6_000))
    assert first.signed and first.transfers[0].internal
    out = sign(signer, self_transfer(keystore, "02" * 32, fee=5_000))  # 6,000 + 5,000 > 10,000
    assert (out.signed, out.refused_rule) == (False, "rolling_fees_24h")
    assert "5000 BTC on top of 6000" in out.refused_reason
    assert sign(signer, self_transfer(keystore, "02" * 32, fee=4_000)).signed  # 10,000: at the limit
    # Payments to others pay fees from the same allowance.
    out = sign(signer, S.simple_psbt(keystore, S.BTC // 10, input_txid="03" * 32, fee=1))
    assert out.refused_rule == "rolling_fees_24h"
    now[0] += 24 * 3600 + 1
    assert sign(signer, self_transfer(keystore, "04" * 32, fee=8_000)).signed


def test_a_fee_bump_counts_only_what_it_pays_above_its_spend(make_signer, keystore):
    now = [6_000_000.0]
    signer = make_signer(clock=lambda: now[0], **POLICY)
    for fee in (4_000, 6_000, 5_000, 7_000):  # the original and three replacements of one payment
        out = sign(signer, S.simple_psbt(keystore, S.BTC, input_txid="0a" * 32, fee=fee))
        assert out.signed, out.refused_reason
    assert signer.fees.spent_since("BTC", 0) == 7_000  # the highest fee of the spend, once
    assert sign(signer, self_transfer(keystore, "0b" * 32, fee=3_001)).refused_rule == "rolling_fees_24h"
    assert sign(signer, self_transfer(keystore, "0b" * 32, fee=3_000)).signed
    # A bump of the full allowance's spend needs allowance for its excess only.
    assert sign(signer, S.simple_psbt(keystore, S.BTC, input_txid="0a" * 32, fee=7_001)).refused_rule == \
        "rolling_fees_24h"


def test_the_fees_counted_survive_a_restart(make_signer, keystore):
    now = [7_000_000.0]
    first = make_signer(clock=lambda: now[0], **POLICY)
    assert sign(first, S.simple_psbt(keystore, S.BTC, input_txid="0c" * 32, fee=4_000)).signed
    assert sign(first, S.simple_psbt(keystore, S.BTC, input_txid="0c" * 32, fee=6_000)).signed  # a bump: +2,000
    first.audit.close(), first.limits.close(), first.policy.close()
    restarted = make_signer(clock=lambda: now[0] + 60, **POLICY)
    assert restarted.fees.spent_since("BTC", 0) == 6_000  # rebuilt from the audit log
    # The spend's counted fee is remembered too: a further bump to 8,000 adds 2,000 (8,000 in all).
    assert sign(restarted, S.simple_psbt(keystore, S.BTC, input_txid="0c" * 32, fee=8_000)).signed
    assert restarted.fees.spent_since("BTC", 0) == 8_000
    assert sign(restarted, self_transfer(keystore, "0d" * 32, fee=2_001)).refused_rule == "rolling_fees_24h"


def test_a_refused_request_uses_up_no_fees(make_signer, keystore):
    signer = make_signer(clock=lambda: 8_000_000.0, **{**POLICY, "deny": [S.address_for(S.foreign_script())]})
    for _ in range(3):
        assert sign(signer, S.simple_psbt(keystore, S.BTC, input_txid="0e" * 32, fee=6_000)).refused_rule == \
            "deny_list"
    assert signer.fees.spent_since("BTC", 0) == 0


def test_an_audit_log_from_before_fees_were_counted_counts_each_signed_fee():
    from hsm.limits import RollingLimits, fees_of

    fees = RollingLimits(now_s=1_000.0, counted=fees_of)
    old = {"kind": "signed", "at": 900.0, "data": {"at_s": 900.0, "outflow": {}, "fee": "700", "fee_asset": "BTC",
                                                    "payload_sha256": "ab" * 32}}
    new = {"kind": "signed", "at": 950.0, "data": {"at_s": 950.0, "outflow": {}, "fees": {"BTC": "30"},
                                                    "fee": "730", "fee_asset": "BTC", "payload_sha256": "cd" * 32}}
    for entry in (old, new, {"kind": "refused", "at": 960.0, "data": {"fee": "5", "fee_asset": "BTC"}}):
        fees.replay(entry)
    assert fees.spent_since("BTC", 0) == 730


def test_a_counted_spends_file_from_before_fees_were_counted_is_upgraded(tmp_path):
    path = tmp_path / "limits.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE counted_spends (spend_key TEXT PRIMARY KEY, at_s REAL NOT NULL)")
    old.execute("INSERT INTO counted_spends VALUES ('k', 10.0)")
    old.commit(), old.close()
    spends = CountedSpends(path)
    assert spends.counted_since("k", 0) == 0  # its fee unknown: a bump of it counts its whole fee
    spends.add("k", 20.0, fee=500, replaces=True)
    assert spends.counted_since("k", 0) == 500
    spends.add("k", 30.0, fee=400, replaces=True)  # a lower fee never lowers what was counted
    assert spends.counted_since("k", 15.0) is None  # and a bump keeps the window of the first spend
    assert spends.counted_since("k", 0) == 500
    spends.close()


def test_fee_limits_belong_to_the_native_coin_policy(tmp_path):
    raw = S.raw_config(tmp_path, assets=[{"asset": "ETH", "chain": "ethereum", "max_fees_per_24h": "10"},
                                         {"asset": "USDT", "chain": "ethereum", "contract": S.USDT_CONTRACT,
                                          "max_fees_per_24h": "10"}])
    with pytest.raises(ConfigError, match="native coin"):
        parse(raw)
    raw["policy"]["assets"].pop()
    assert parse(raw).policy.asset("ethereum").max_fees_per_24h == 10
    raw["policy"]["assets"][0]["max_fees_per_24h"] = "-1"
    with pytest.raises(ConfigError, match="max_fees_per_24h"):
        parse(raw)
