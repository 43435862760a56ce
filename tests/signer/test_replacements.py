"""A fee bump (same inputs, same external outputs, a higher fee) counts once against the
signer's rolling 24-hour limit (3 BTC here); any other spend counts in full."""
from __future__ import annotations

from tests.support import signer as S

HOT_KEY = [(S.HOT, S.HOT_BTC_PATH)]
COIN_A, COIN_B = "aa" * 32, "bb" * 32


POLICY = {"approval_quorum": 1, "assets": [{"asset": "BTC", "chain": "bitcoin", "max_per_transaction": str(2 * S.BTC),
                                             "max_per_24h": str(3 * S.BTC), "max_fee": "1000000"}]}


def test_a_fee_bump_counts_once_and_other_spends_count(make_signer, keystore):
    def pay(signer, amount, coin, fee=1_000, to=None):
        payload = S.simple_psbt(keystore, amount, input_txid=coin, fee=fee, to=to)
        return signer.sign("bitcoin", payload, HOT_KEY, [])

    now = [3_000_000.0]
    signer = make_signer(clock=lambda: now[0], **POLICY)
    assert pay(signer, 2 * S.BTC, COIN_A).signed
    # Two bumps of the same payment: each alone would exceed the limit if counted again (2 + 2 > 3).
    for fee in (2_000, 4_000):
        out = pay(signer, 2 * S.BTC, COIN_A, fee=fee)
        assert out.signed, out.refused_reason
    assert signer.limits.spent_since("BTC", 0) == 2 * S.BTC
    # The same payment from another coin is another spend; and the same coin paying someone else too.
    assert pay(signer, 2 * S.BTC, COIN_B).refused_rule == "rolling_24h"
    assert pay(signer, 2 * S.BTC, COIN_A, to=S.foreign_script("someone new")).refused_rule == "rolling_24h"
    assert pay(signer, S.BTC, COIN_B).signed  # 2 + 1 = 3: at the limit
    # Remembered across a restart of the signer.
    signer.audit.close(), signer.limits.close(), signer.policy.close()
    restarted = make_signer(clock=lambda: now[0] + 60, **POLICY)
    assert restarted.limits.spent_since("BTC", 0) == 3 * S.BTC  # rebuilt from the audit log: bumps add nothing
    assert pay(restarted, 2 * S.BTC, COIN_A, fee=8_000).signed
    assert pay(restarted, 1, "cc" * 32).refused_rule == "rolling_24h"
    restarted.policy.close()


def test_the_spend_key_reads_the_inputs_of_any_psbt(signer, keystore):
    """The inputs the decoder reads (and signs) are the PSBT's outpoints, as embit's full parse
    reads them; base64 payloads too."""
    import base64

    from embit.psbt import PSBT

    payload = S.simple_psbt(keystore, S.BTC, input_txid=COIN_A)
    expected = [f"{i.txid.hex()}:{i.vout}" for i in PSBT.parse(payload).tx.vin]
    decoder = signer.decoders["bitcoin"]
    for given in (payload, base64.b64encode(payload)):
        assert [outpoint for outpoint, _, _ in decoder.explain(given, HOT_KEY).inputs] == expected == [f"{COIN_A}:0"]