"""Withdrawal benchmarks, self-contained: `.venv/bin/python -m benchmarks.withdrawals [--quick]`.

1. RequestWithdrawal accepted per second through gRPC (to PENDING_REVIEW) on
   PostgreSQL: the server (custody app + gRPC) runs in its own process, client
   threads in this one; every request holds amount + fee in the ledger.
2. A batch of 500 approved withdrawals, approval to broadcast, on PostgreSQL
   with a real bcoin regtest node and a real signer process: build (coin
   selection + reservations + PSBT), sign, store, broadcast (until the mempool
   shows it), timed per step.
3. That transaction's virtual size against the smallest possible for the same
   inputs and outputs (71-byte low-R signatures on every input).

Nothing here asserts on timings; the invariants are checked at the end.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import threading
import time
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

SERVER = r"""
import sys, time
from custody.app import Custody
from tests.support.servers import ServerThread
from tests.support.withdrawals import withdrawal_config
config = withdrawal_config(sys.argv[1])
app = Custody(config)
server = ServerThread(config, app)
print("ADDRESS", server.address, flush=True)
sys.stdin.read()
server.stop(); app.close()
"""


def request_rate(url: str, seconds: float, concurrency: int, accounts: int) -> dict:
    import grpc

    from custody.app import Custody
    from custody.v1 import custody_pb2 as S
    from tests.support.servers import Clients
    from tests.support.withdrawals import PAYEE, fund, withdrawal_config

    app = Custody(withdrawal_config(url))
    ids = [str(app.create_account(f"bench-{i}").account_id) for i in range(accounts)]
    for i in ids:
        fund(app, i, 10_000 * 10**8)
    app.close()
    server = subprocess.Popen([sys.executable, "-c", SERVER, url], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    address = ""
    while not address:
        line = server.stdout.readline()
        if not line:
            raise SystemExit("the benchmark server exited")
        if line.startswith("ADDRESS "):
            address = line.split()[1]
    counts = [0] * concurrency
    refused: list[str] = []
    stop = time.monotonic() + seconds

    def client(n: int) -> None:
        c = Clients(address)
        k = 0
        while time.monotonic() < stop:
            account = ids[(n + k * concurrency) % len(ids)]
            try:
                w = c.custody.RequestWithdrawal(S.RequestWithdrawalRequest(
                    idempotency_key=f"b{concurrency}-{n}-{k}", account_id=account, asset="BTC", to_address=PAYEE,
                    amount="20000000"), metadata=Clients.md("wallet-service"), timeout=30).withdrawal
                assert w.status == S.WITHDRAWAL_STATUS_PENDING_REVIEW
                counts[n] += 1
            except grpc.RpcError as exc:
                refused.append(exc.details())
            k += 1
        c.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - t0
    server.stdin.close()
    server.wait(timeout=30)
    return {"accepted": sum(counts), "refused": len(refused), "seconds": elapsed,
            "per_s": sum(counts) / elapsed, "concurrency": concurrency, "first_refusal": refused[:1]}


def batch_of(url: str, n: int, tmp: pathlib.Path) -> dict:
    from embit.transaction import Transaction

    from chains.bitcoin.addresses import script_to_address
    from chains.bitcoin.params import network
    from chains.bitcoin.psbt import vsize
    from custody.app import Custody
    from tests.support.bitcoin import Chain, node_folder, random_script, start_node
    from tests.support.withdrawals import BTC, attempts, fund, fund_hot_wallet, sender, start_signer, withdrawal_config

    nodes = start_node(node_folder("bench-withdrawals"))
    signer = start_signer(tmp)
    try:
        chain = Chain(nodes.rpc_url("bitcoin"))
        chain.miner.ensure_ready(spendable=5)
        app = Custody(withdrawal_config(url, chain.rpc.url, confirmations=1))
        app.scanner("bitcoin").catch_up()
        fund_hot_wallet(app, chain, 10 * BTC)
        accounts = [app.create_account(f"batch-{i}").account_id for i in range(math.ceil(n / 20))]
        for a in accounts:
            fund(app, a, 5 * BTC)
        regtest = network("regtest")
        for i in range(n):
            app.withdrawals.request("wallet-service", f"w{i}", str(accounts[i // 20]), "BTC",
                                    script_to_address(random_script(), regtest), str(1_000_000 + i))
        s = sender(app, signer)
        t0 = time.perf_counter()
        batch = s.build()
        t1 = time.perf_counter()
        s.sign(batch)
        t2 = time.perf_counter()
        s.follow(batch)
        t3 = time.perf_counter()
        (attempt,) = attempts(app)
        tx = Transaction.parse(attempt["raw"])
        assert len(tx.vout) == n + 1 and attempt["txid"] in chain.rpc.call("getrawmempool")
        base = len(tx.serialize()) - sum(len(w.serialize()) for w in [i.witness for i in tx.vin]) - 2
        total = len(tx.serialize())
        weight = base * 3 + total
        actual = math.ceil(weight / 4)
        scripts = [o.script_pubkey.data for o in tx.vout]
        # Smallest: each witness = count(1) + sig push(1 + 71, low-R) + pubkey push(1 + 33) = 107 bytes.
        wit_min = len(tx.vin) * 107
        minimum = math.ceil((base * 4 + 2 + wit_min) / 4)
        chain.mine(1)
        app.scanner("bitcoin").catch_up()
        s.tick()
        app.close()
        return {"n": n, "inputs": len(tx.vin), "outputs": len(tx.vout), "build_s": t1 - t0, "sign_s": t2 - t1,
                "broadcast_s": t3 - t2, "total_s": t3 - t0, "vsize": actual, "estimated": vsize(len(tx.vin), scripts),
                "minimum": minimum, "fee": attempt["fee"], "fee_rate": attempt["fee_rate"]}
    finally:
        signer.stop()
        nodes.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from benchmarks.common import check_invariants, database  # noqa: F401
    from custody.ledger import invariants

    seconds = 3.0 if args.quick else 10.0
    results = {}
    with database("postgresql") as (url, engine):
        for concurrency in (1, 16):
            r = request_rate(url, seconds, concurrency, accounts=400)
            results[f"requests_c{concurrency}"] = r
            print(f"RequestWithdrawal via gRPC on PostgreSQL, {concurrency} concurrent: {r['per_s']:.0f}/s "
                  f"({r['accepted']} accepted in {r['seconds']:.1f} s, {r['refused']} refused {r['first_refusal']})",
                  flush=True)
        report = invariants.check(engine)
        print("invariants after the request runs:", "OK" if report.ok else report.render())
    with database("postgresql") as (url, engine), tempfile.TemporaryDirectory() as tmp:
        b = batch_of(url, 100 if args.quick else 500, pathlib.Path(tmp))
        results["batch"] = b
        print(f"batch of {b['n']}: approval to broadcast {b['total_s']:.2f} s (build {b['build_s']:.2f}, sign "
              f"{b['sign_s']:.2f}, store + broadcast {b['broadcast_s']:.2f}); {b['inputs']} input(s), "
              f"{b['outputs']} outputs", flush=True)
        print(f"virtual size {b['vsize']} vB; estimated before signing {b['estimated']} vB; smallest with "
              f"71-byte (low-R) signatures {b['minimum']} vB ({b['vsize'] - b['minimum']:+d} vB); fee {b['fee']} "
              f"sats at {b['fee_rate']} sat/vB", flush=True)
        report = invariants.check(engine)
        print("invariants after the batch:", "OK" if report.ok else report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
