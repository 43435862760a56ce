"""Signer throughput: signatures per second per keystore, with decode + policy
(+ rolling limits and audit log) included, against the bare signing rate of
the same backend in the same run. One-input, two-output Bitcoin PSBT.

The machine is shared, so its load changes while a benchmark runs: the bare
rate and the rates compared with it are measured interleaved (short blocks
in turn), so that each ratio compares numbers taken under the same load.

Run alone: .venv/bin/python -m benchmarks.signer  (SoftHSM2 needed for its row)
"""
from __future__ import annotations

import os
import pathlib
import tempfile
import threading
import time

from hsm.keystores.pkcs11 import Pkcs11Keystore
from hsm.service import Signer
from tests.support import signer as S
from tests.support import softhsm

DURATION_S = float(os.environ.get("SIGNER_BENCH_SECONDS", "3"))
BLOCK_S = 0.02  # one turn of one function in the interleaved measurement
CLIENTS = 8  # concurrent requests (the gRPC server's worker threads)


def interleaved_rates(fns: dict, duration_s: float = DURATION_S) -> dict[str, tuple[float, float]]:
    """(calls per second of wall time, per second of this thread's CPU time) of each function,
    measured in alternating blocks of about BLOCK_S. CPU time leaves out the time the machine's
    other processes take from this one; for work that waits on the disk only wall time means anything."""
    per_block = {}
    for name, fn in fns.items():
        fn()  # warm caches (derived keys, token objects)
        start = time.perf_counter()
        fn()
        per_block[name] = max(1, int(BLOCK_S / max(time.perf_counter() - start, 1e-7)))
    calls = dict.fromkeys(fns, 0)
    wall = dict.fromkeys(fns, 0.0)
    cpu = dict.fromkeys(fns, 0.0)
    while min(wall.values()) < duration_s:
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.thread_time()
            for _ in range(per_block[name]):
                fn()
            wall[name] += time.perf_counter() - start
            cpu[name] += time.thread_time() - start_cpu
            calls[name] += per_block[name]
    return {name: (calls[name] / wall[name], calls[name] / max(cpu[name], 1e-9)) for name in fns}


def concurrent_rate(fn, clients: int = CLIENTS, duration_s: float = DURATION_S) -> float:
    done = [0] * clients
    stop = time.perf_counter() + duration_s

    def client(i):
        while time.perf_counter() < stop:
            fn()
            done[i] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - start)


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

    # As the core builds them: the change goes to another key of ours, with its derivation hint
    # (software keystore only: a token key has no derivation paths).
    change_path = "m/84h/1h/1h/1/0"
    hinted = None
    if key[1]:
        hinted = S.make_psbt([("11" * 32, 0, S.BTC, ours)],
                             [(S.foreign_script(), 10_000), (S.hot_script(store, change_path), S.BTC - 12_000)],
                             change={1: (store.public_key(key[0], change_path),
                                         bytes.fromhex(store.fingerprint(key[0])), change_path)})

    def decode_policy_only(payload=payload):  # no audit writes: what decode + checks cost
        decoder = signer.decoders["bitcoin"]
        explained = decoder.explain(payload, [key])
        signer.policy.check(explained, [], digest, time.time())
        decoder.sign(explained)

    fns = {"bare": bare, "decode_policy_sign": decode_policy_only, "full": full}
    if hinted and not durable:
        fns["hinted"] = lambda: decode_policy_only(hinted)
        # The library itself, without the keystore's call (its cache lookup and Signature object).
        child = store._child(*key)
        fns["library"] = lambda: child.sign_recoverable(digest, hasher=None)
    measured = interleaved_rates(fns)
    rates = {"bare": measured["bare"][0], "decode_policy_sign": measured["decode_policy_sign"][0],
             "full": measured["full"][0], "bare_cpu": measured["bare"][1],
             "decode_policy_sign_cpu": measured["decode_policy_sign"][1]}
    if "hinted" in measured:
        rates["hinted"], rates["hinted_cpu"] = measured["hinted"]
        rates["library"], rates["library_cpu"] = measured["library"]
    rates["concurrent"] = concurrent_rate(full)
    rates.update(keystore=name, durable=durable)
    signer.audit.close()
    return rates


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
    print(f"load average before: {fmt_load(LOAD_BEFORE)}, after: {fmt_load(os.getloadavg())}")
    print("sig/s by wall-clock time; the decode+policy+sign ratio also by CPU time (same calls, same run)")
    print(f"{'keystore':22} {'fsync':6} {'bare sig/s':>11} {'decode+policy+sign/s':>21} {'ratio':>6} "
          f"{'(cpu)':>6} {'+limits+audit /s':>17} {'ratio':>6} {f'{CLIENTS} clients /s':>13} {'ratio':>6}")
    for r in rows:
        print(f"{r['keystore']:22} {'yes' if r['durable'] else 'no':6} {r['bare']:11.0f} "
              f"{r['decode_policy_sign']:21.0f} {r['decode_policy_sign'] / r['bare']:6.2f} "
              f"{r['decode_policy_sign_cpu'] / r['bare_cpu']:6.2f} "
              f"{r['full']:17.0f} {r['full'] / r['bare']:6.2f} {r['concurrent']:13.0f} "
              f"{r['concurrent'] / r['bare']:6.2f}")
    for r in rows:
        if "hinted" in r:
            print(f"{r['keystore']}: with a change derivation hint (as the core builds PSBTs): decode+policy+sign "
                  f"{r['hinted']:.0f}/s, ratio {r['hinted'] / r['bare']:.2f} (cpu {r['hinted_cpu'] / r['bare_cpu']:.2f})")
            print(f"{r['keystore']}: coincurve called directly (no keystore code) {r['library']:.0f}/s; "
                  f"decode+policy+sign against it: {r['decode_policy_sign'] / r['library']:.2f} "
                  f"(cpu {r['decode_policy_sign_cpu'] / r['library_cpu']:.2f})")


def fmt_load(load) -> str:
    return " ".join(f"{x:.2f}" for x in load)


LOAD_BEFORE = os.getloadavg()

if __name__ == "__main__":
    main()
