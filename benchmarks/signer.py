"""Signer throughput: signatures per second per keystore, with decode + policy
(+ rolling limits and audit log) included, against the bare signing rate of
the same backend in the same run. One-input, two-output Bitcoin PSBT.

Run alone: .venv/bin/python -m benchmarks.signer  (SoftHSM2 needed for its row)
"""
from __future__ import annotations

import os
import pathlib
import tempfile
import time

from hsm.keystores.pkcs11 import Pkcs11Keystore
from hsm.service import Signer
from tests.support import signer as S
from tests.support import softhsm

DURATION_S = float(os.environ.get("SIGNER_BENCH_SECONDS", "3"))


def rate(fn, duration_s: float = DURATION_S) -> float:
    fn()  # warm caches (derived keys, token objects)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration_s:
        for _ in range(20):
            fn()
        n += 20
    return n / elapsed


def bench(name: str, store, key: tuple[str, str], folder: pathlib.Path, durable: bool) -> dict:
    raw = S.raw_config(folder)
    raw["state"]["durable"] = durable
    from hsm import config as config_mod

    # Limits high enough that thousands of signatures don't hit them: we measure the checks, not refusals.
    for a in raw["policy"]["assets"]:
        a["max_per_24h"] = str(2**200)
    config = config_mod.parse(raw)
    signer = Signer(config, store)
    pub = store.public_key(*key)
    ours = S.p2wpkh_script(pub)
    payload = S.make_psbt([("11" * 32, 0, S.BTC, ours)], [(S.foreign_script(), 10_000), (ours, S.BTC - 12_000)])
    digest = bytes(range(32))

    def bare():
        store.sign_digest(key[0], key[1], digest)

    def full():
        out = signer.sign("bitcoin", payload, [key], [])
        assert out.signed, out.refused_reason

    def decode_policy_only():  # no audit/limits writes: what decode + checks cost
        decoder = signer.decoders["bitcoin"]
        explained = decoder.explain(payload, [key])
        signer.policy.check(explained, [], digest, time.time())
        decoder.sign(explained)

    result = {"keystore": name, "durable": durable, "bare": rate(bare), "decode_policy_sign": rate(decode_policy_only),
              "full": rate(full)}
    signer.audit.close()
    signer.limits.close()
    return result


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        store = S.make_keystore(tmp)
        for durable in (False, True):
            folder = tmp / f"sw-{durable}"
            folder.mkdir()
            rows.append(bench("software (coincurve)", store, (S.HOT, S.HOT_BTC_PATH), folder, durable))
        if softhsm.LIBRARY.exists():
            label = softhsm.new_token()
            token = Pkcs11Keystore.open(softhsm.LIBRARY, label, softhsm.PIN)
            token.generate_key("bench")
            for durable in (False, True):
                folder = tmp / f"hsm-{durable}"
                folder.mkdir()
                rows.append(bench("SoftHSM2 (PKCS#11)", token, ("bench", ""), folder, durable))
            token.close()
        else:
            print("SoftHSM2 not installed: its row is missing (apt-get install softhsm2)")
    print(f"{'keystore':22} {'fsync':6} {'bare sig/s':>11} {'decode+policy+sign/s':>21} {'ratio':>6} "
          f"{'+limits+audit /s':>17} {'ratio':>6}")
    for r in rows:
        print(f"{r['keystore']:22} {'yes' if r['durable'] else 'no':6} {r['bare']:11.0f} {r['decode_policy_sign']:21.0f} "
              f"{r['decode_policy_sign'] / r['bare']:6.2f} {r['full']:17.0f} {r['full'] / r['bare']:6.2f}")


if __name__ == "__main__":
    main()
