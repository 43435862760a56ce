"""grpc_transfer: Transfer RPCs through a real `custody serve` process, against health Check on the same server."""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

from benchmarks.common import (
    ASSET, FUNDING, ROOT, BenchResult, Row, Target, check_invariants, database, progress, rate, store_idempotency_keys,
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    rounds: int
    seconds: float       # length of each measured phase
    warmup: float
    aged_keys: int = 500_000  # idempotency keys stored before the "aged" rounds
    aged_rounds: int = 1
    concurrency: int = 64
    clients: int = 1     # client processes; the 64 calls are split between them
    # Informational: one more round at each of these numbers of calls in flight,
    # showing how latency grows with the queue the clients keep at the server.
    sweep: tuple[int, ...] = (16, 32)
    # One more round at each of these offered rates (calls/s), paced: the 64 callers send on a fixed
    # schedule instead of as fast as the server answers, and latency counts from the scheduled time.
    paced: tuple[int, ...] = (3000,)


FULL = Sizes(rounds=4, seconds=8.0, warmup=2.0)
QUICK = Sizes(rounds=1, seconds=2.0, warmup=1.0, aged_keys=20_000, sweep=(), paced=())
GAP = 0.5  # seconds between phases, so one phase's stragglers do not overlap the next


# -- the server ------------------------------------------------------------------------------

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def write_config(path: pathlib.Path, url: str) -> None:
    from custody.api.auth import token_digest
    from tests.support.config import TEST_ASSETS
    from tests.support.servers import SCOPES, TOKENS

    lines = ["[database]", f"url = {_toml_value(url)}", "", "[server]", 'listen = "127.0.0.1:0"', ""]
    for name, token in TOKENS.items():
        lines += ["[[clients]]", f"name = {_toml_value(name)}", f"token_sha256 = {_toml_value(token_digest(token))}",
                  f"scopes = {_toml_value(SCOPES[name])}", ""]
    for asset in TEST_ASSETS:
        lines += ["[[assets]]", *[f"{k} = {_toml_value(v)}" for k, v in asset.items()], ""]
    path.write_text("\n".join(lines))


def start_server(config: pathlib.Path, log: pathlib.Path) -> tuple[subprocess.Popen, int]:
    script = ROOT / ".venv" / "bin" / "custody"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "custody.cli"]
    cmd += ["serve", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"), cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"custody serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        for line in log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == "listening":
                return proc, int(entry["port"])
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"custody serve did not start listening:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the clients (separate processes) --------------------------------------------------------------

def _client_main(address: str, plan: list[tuple[str, float, float, bool, int]], first_task: int, tasks: int,
                 accounts: list[tuple[str, str]], out) -> None:
    out.put(asyncio.run(_client(address, plan, first_task, tasks, accounts)))


async def _client(address, plan, first_task, tasks, accounts):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from custody.v1 import custody_pb2, custody_pb2_grpc
    from tests.support.servers import bearer

    channel = grpc.aio.insecure_channel(address)
    await asyncio.wait_for(channel.channel_ready(), 30)
    # The client's own full garbage collections (about 30 ms each, walking its
    # modules) would stall every call in flight and show up as server latency.
    gc.collect()
    gc.freeze()
    health = health_pb2_grpc.HealthStub(channel).Check
    transfer = custody_pb2_grpc.CustodyServiceStub(channel).Transfer
    metadata = tuple(bearer("exchange"))
    check_request = health_pb2.HealthCheckRequest(service="")
    prefix = uuid.uuid4().hex[:12]
    results = []
    for phase, (kind, start, seconds, recorded, offered) in enumerate(plan):
        await asyncio.sleep(max(0.0, start - time.time()))
        end_wall = start + seconds
        end = time.perf_counter() + (end_wall - time.time())
        stats = {"kind": kind, "recorded": recorded, "latencies": [], "errors": 0, "first_error": ""}
        phase_started = time.perf_counter()

        async def worker(i: int) -> None:
            lat = stats["latencies"]
            a, b = accounts[first_task + i]
            slot, slots = first_task + i, len(accounts)  # paced runs have a task for every slot
            j = 0
            while time.perf_counter() < end:
                if offered:
                    # Call j of this slot is due at its place in one even schedule of all slots. A call
                    # sent late still counts from when it was due (no "coordinated omission").
                    t0 = phase_started + (j * slots + slot) / offered
                    if t0 >= end:
                        break
                    await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
                else:
                    t0 = time.perf_counter()
                try:
                    if kind == "health":
                        await health(check_request)
                    else:
                        source, target = (a, b) if j % 2 == 0 else (b, a)
                        await transfer(custody_pb2.TransferRequest(
                            idempotency_key=f"{prefix}-{phase}-{i}-{j}", from_account_id=source,
                            to_account_id=target, asset=ASSET, amount="1"), metadata=metadata)
                    lat.append(time.perf_counter() - t0)
                except grpc.aio.AioRpcError as exc:
                    stats["errors"] += 1
                    stats["first_error"] = stats["first_error"] or f"{exc.code().name}: {exc.details()}"
                j += 1

        await asyncio.gather(*(worker(i) for i in range(tasks)))
        stats["elapsed"] = time.perf_counter() - phase_started
        results.append(stats)
    await channel.close()
    return results


# -- the benchmark ---------------------------------------------------------------------------------

def _percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def _cpu_seconds(pid: int, children: bool = True) -> float:
    """CPU time of a process and (children=True) its live children (the server's ledger writer process)."""
    import psutil

    try:
        process = psutil.Process(pid)
        total = 0.0
        for p in (process, *(process.children(recursive=True) if children else ())):
            times = p.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return float("nan")


def _run_clients(address: str, plan: list, slots: list, sizes: Sizes, server_pid: int, label: str) -> list[dict]:
    """Runs the plan in the client process(es); returns one merged dict per recorded phase."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    per = [sizes.concurrency // sizes.clients + (1 if c < sizes.concurrency % sizes.clients else 0)
           for c in range(sizes.clients)]
    procs = []
    first = 0
    for n in per:
        p = ctx.Process(target=_client_main, args=(address, plan, first, n, slots, queue), daemon=True)
        p.start()
        procs.append(p)
        first += n
    # Sample server and client CPU time at the phase boundaries.
    cpu = []
    for kind, phase_start, seconds, recorded, _offered in plan:
        time.sleep(max(0.0, phase_start - time.time()))
        before = (_cpu_seconds(server_pid), sum(_cpu_seconds(p.pid) for p in procs),
                  _cpu_seconds(server_pid, children=False))
        time.sleep(max(0.0, phase_start + seconds - time.time()))
        after = (_cpu_seconds(server_pid), sum(_cpu_seconds(p.pid) for p in procs),
                 _cpu_seconds(server_pid, children=False))
        cpu.append((after[0] - before[0], after[1] - before[1], after[2] - before[2]))
        if recorded:
            progress(f"grpc_transfer sqlite{label}: {kind} phase done (server process cpu "
                     f"{100 * cpu[-1][0] / seconds:.0f}%, client cpu {100 * cpu[-1][1] / seconds:.0f}%)")
    outputs = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    phases = []
    for idx, (kind, _start, seconds, recorded, _offered) in enumerate(plan):
        if not recorded:
            continue
        merged = {"kind": kind, "count": 0, "errors": 0, "first_error": "", "latencies": [],
                  "elapsed": max(o[idx]["elapsed"] for o in outputs),
                  "server_cpu": cpu[idx][0] / seconds, "client_cpu": cpu[idx][1] / seconds,
                  "server_main_cpu": cpu[idx][2] / seconds}
        for o in outputs:
            merged["count"] += len(o[idx]["latencies"])
            merged["errors"] += o[idx]["errors"]
            merged["first_error"] = merged["first_error"] or o[idx]["first_error"]
            merged["latencies"] += o[idx]["latencies"]
        merged["rate"] = merged["count"] / merged["elapsed"]
        phases.append(merged)
    return phases


def _plan(start: float, rounds: int, seconds: float, warmup: float,
          offered: int = 0) -> list[tuple[str, float, float, bool, int]]:
    """Phases (kind, start, seconds, recorded, offered calls/s; 0: as fast as the server answers)."""
    plan = []
    t = start
    if warmup:
        plan = [("transfer", t, warmup, False, 0), ("health", t + warmup + GAP, warmup / 2, False, 0)]
        t += warmup * 1.5 + 2 * GAP
    for r in range(rounds):
        for kind in (("health", "transfer") if r % 2 == 0 else ("transfer", "health")):
            plan.append((kind, t, seconds, True, offered))
            t += seconds + GAP
    return plan


def _summary(phases: list[dict], kind: str) -> dict:
    runs = [p for p in phases if p["kind"] == kind]
    lat = sorted(x for r in runs for x in r["latencies"])
    return {
        "rate": max(r["rate"] for r in runs), "rates": [r["rate"] for r in runs],
        "p50": _percentile(lat, 0.50) * 1000, "p99": _percentile(lat, 0.99) * 1000,
        "errors": sum(r["errors"] for r in runs),
        "first_error": next((r["first_error"] for r in runs if r["first_error"]), ""),
        "server_cpu": max(r["server_cpu"] for r in runs), "client_cpu": max(r["client_cpu"] for r in runs),
        "server_main_cpu": max(r["server_main_cpu"] for r in runs),
        "server_cpu_per_call_ms": min(r["server_cpu"] * 1000 / r["rate"] for r in runs if r["rate"]),
    }


def grpc_transfer(sizes: Sizes) -> BenchResult:
    from sqlalchemy import text

    from custody.app import Custody
    from custody.db.engine import make_engine
    from tests.support.config import make_config

    result = BenchResult("grpc_transfer")
    result.details.append(
        f"`custody serve` runs as its own process (SQLite database, 127.0.0.1, insecure port, no TLS) so the client "
        f"and server do not share a GIL; its ledger writer runs in a child process (the default "
        f"`ledger_writer = \"process\"`). {sizes.clients} client process(es) keep {sizes.concurrency} calls in flight "
        f"with grpc.aio: one asyncio task per call slot, each issuing its next call as soon as the last returns; "
        f"like the server, the client freezes its start-up objects out of the garbage collector (`gc.freeze()`), "
        f"so that its own full collections do not show up as call latency. "
        f"Transfer calls carry the 'exchange' bearer token and a unique idempotency key; task i moves 1 unit between "
        f"its own two funded accounts, alternating direction. Baseline: grpc.health.v1.Health/Check (no auth) "
        f"on the same server and channel. {sizes.rounds} interleaved rounds of {sizes.seconds:.0f} s per phase after "
        f"a {sizes.warmup:.0f} s warm-up; rate = calls completed / phase time, best round of each; latencies are per "
        f"call, client-side, over all rounds. "
        + (f"Then one more round of each at {' and '.join(map(str, sizes.sweep))} calls in flight (informational "
           f"rows: with a closed loop, the mean latency is the calls in flight divided by the rate, so fewer calls "
           f"in flight wait in a shorter queue at the server). " if sizes.sweep else "")
        + (f"Then one more round of each paced at {' and '.join(f'{n:,}' for n in sizes.paced)} calls/s offered: "
           f"the {sizes.concurrency} tasks send on one even schedule instead of as soon as the last call returns, "
           f"and each latency counts from the time its call was due, so a late send counts against the server "
           f"(this reads the issue's 'at least 3,000 calls/s with p99 under 20 ms at 64 concurrent calls' as a "
           f"latency at that load; the closed-loop rows above measure it at saturation). "
           if sizes.paced else "")
        + f"Then, with the server still running, {sizes.aged_keys:,} more "
        f"idempotency keys are stored in its database and {sizes.aged_rounds} more round(s) are run "
        f"(the '+N stored keys' rows). The machine has {os.cpu_count()} CPUs for server, client and everything else.")
    progress("grpc_transfer sqlite: setting up")
    pairs = sizes.concurrency
    with database("sqlite") as (url, _engine):
        folder = pathlib.Path(url.removeprefix("sqlite:///")).parent
        app = Custody(make_config(url))
        try:
            accounts = [app.create_account(f"grpc-{i}").account_id for i in range(2 * pairs)]
            futures = [app.submit_adjustment("alice-admin", f"fund-{a}", str(a), ASSET, str(FUNDING), True,
                                             "benchmark funding") for a in accounts]
            for f in futures:
                f.result()
        finally:
            app.close()
        config = folder / "custody.toml"
        write_config(config, url)
        log = folder / "server.log"
        server, port = start_server(config, log)
        progress(f"grpc_transfer sqlite: `custody serve` pid {server.pid} listening on 127.0.0.1:{port}")
        slots = [(str(accounts[2 * i]), str(accounts[2 * i + 1])) for i in range(pairs)]
        address = f"127.0.0.1:{port}"
        engine = make_engine(url)
        try:
            fresh = _run_clients(address, _plan(time.time() + 3.0, sizes.rounds, sizes.seconds, sizes.warmup),
                                 slots, sizes, server.pid, "")
            swept = {n: _run_clients(address, _plan(time.time() + 3.0, 1, sizes.seconds, 0), slots,
                                     dataclasses.replace(sizes, concurrency=n), server.pid, f" ({n} in flight)")
                     for n in sizes.sweep}
            paced = {n: _run_clients(address, _plan(time.time() + 3.0, 1, sizes.seconds, 0, offered=n), slots,
                                     sizes, server.pid, f" ({n:,} calls/s offered)")
                     for n in sizes.paced}
            started = time.perf_counter()
            store_idempotency_keys(engine, sizes.aged_keys)
            progress(f"grpc_transfer sqlite: stored {sizes.aged_keys:,} more idempotency keys "
                     f"({time.perf_counter() - started:.1f}s)")
            aged = _run_clients(address, _plan(time.time() + 3.0, sizes.aged_rounds, sizes.seconds, 0),
                                slots, sizes, server.pid, " (aged)")
        finally:
            stop_server(server)
            progress(f"grpc_transfer sqlite: server stopped (exit code {server.returncode})")
        try:
            check_invariants(engine, "grpc_transfer sqlite", result)
            with engine.connect() as conn:
                transfers, commits = conn.execute(text(
                    "SELECT count(*), count(DISTINCT created_at) FROM ledger_batches WHERE kind = 'transfer'")).one()
        finally:
            engine.dispose()
        errors_in_log = [line for line in log.read_text().splitlines() if '"level": "error"' in line]

    for label, phases in (("", fresh), (f" (+{sizes.aged_keys:,} stored keys)", aged)):
        tr, hc = _summary(phases, "transfer"), _summary(phases, "health")
        ratio = tr["rate"] / hc["rate"]
        result.rows.append(Row(
            "grpc_transfer", "sqlite", f"Transfer calls/s, {sizes.concurrency} in flight{label}", tr["rate"], "/s",
            "health Check calls/s", hc["rate"], ratio,
            [Target(">= 60% of health", ratio >= 0.6), Target(">= 3,000/s", tr["rate"] >= 3000),
             Target(f"p99 < 20 ms (is {tr['p99']:.1f} ms)", tr["p99"] < 20)]))
        result.rows.append(Row(
            "grpc_transfer", "sqlite",
            f"Transfer p50 latency{label} (p99 {tr['p99']:.1f} ms; health p99 {hc['p99']:.1f} ms)",
            tr["p50"], "ms", "health Check p50", hc["p50"], tr["p50"] / hc["p50"]))
        for kind, s in (("transfer", tr), ("health", hc)):
            result.details.append(
                f"- {kind}{label}: rounds {', '.join(rate(x) for x in s['rates'])} calls/s; p50 {s['p50']:.1f} ms, "
                f"p99 {s['p99']:.1f} ms; errors {s['errors']}{' (first: ' + s['first_error'] + ')' if s['errors'] else ''}; "
                f"server CPU {100 * s['server_cpu']:.0f}% of one core (server process {100 * s['server_main_cpu']:.0f}%, "
                f"the rest its ledger writer process), client process(es) "
                f"{100 * s['client_cpu']:.0f}%; server CPU per call {s['server_cpu_per_call_ms']:.3f} ms")
        progress(f"grpc_transfer sqlite{label}: transfer {rate(tr['rate'])}/s (p50 {tr['p50']:.1f} ms, "
                 f"p99 {tr['p99']:.1f} ms), health {rate(hc['rate'])}/s (p50 {hc['p50']:.1f} ms, "
                 f"p99 {hc['p99']:.1f} ms), ratio {ratio:.2f}"
                 + (f"; ERRORS: transfer {tr['errors']} ({tr['first_error']}), health {hc['errors']}"
                    if tr["errors"] or hc["errors"] else ""))
    for n, phases in swept.items():
        tr, hc = _summary(phases, "transfer"), _summary(phases, "health")
        result.rows.append(Row(
            "grpc_transfer", "sqlite",
            f"Transfer calls/s, {n} in flight (p99 {tr['p99']:.1f} ms; health p99 {hc['p99']:.1f} ms)",
            tr["rate"], "/s", f"health Check calls/s, {n} in flight", hc["rate"], tr["rate"] / hc["rate"]))
        result.details.append(
            f"- {n} in flight (informational, one round each, after the rounds above): transfer "
            f"{rate(tr['rate'])}/s, p50 {tr['p50']:.1f} ms, p99 {tr['p99']:.1f} ms, errors {tr['errors']}; health "
            f"{rate(hc['rate'])}/s, p50 {hc['p50']:.1f} ms, p99 {hc['p99']:.1f} ms, errors {hc['errors']}")
    for n, phases in paced.items():
        tr, hc = _summary(phases, "transfer"), _summary(phases, "health")
        result.rows.append(Row(
            "grpc_transfer", "sqlite",
            f"Transfer p99 latency, {n:,} calls/s offered by {sizes.concurrency} callers "
            f"(served {rate(tr['rate'])}/s; p50 {tr['p50']:.1f} ms)",
            tr["p99"], "ms", f"health Check p99, {n:,} calls/s offered", hc["p99"], tr["p99"] / hc["p99"],
            [Target(f"p99 < 20 ms at {n:,} calls/s, paced reading", tr["p99"] < 20 and tr["rate"] >= 0.97 * n)]))
        result.details.append(
            f"- {n:,} calls/s offered (paced, one round each, after the rounds above): transfer served "
            f"{rate(tr['rate'])}/s, p50 {tr['p50']:.1f} ms, p99 {tr['p99']:.1f} ms, errors {tr['errors']}; health "
            f"served {rate(hc['rate'])}/s, p50 {hc['p50']:.1f} ms, p99 {hc['p99']:.1f} ms, errors {hc['errors']}; "
            f"server CPU {100 * tr['server_cpu']:.0f}% (transfer), {100 * hc['server_cpu']:.0f}% (health)")
    result.details.append(f"- transfers committed over the whole run (warm-up included): {transfers:,} in {commits:,} "
                          f"ledger commits, mean {transfers / max(commits, 1):.1f} per commit (counted from "
                          f"ledger_batches.created_at, one timestamp per group)")
    if errors_in_log:
        result.details.append(f"- server log has {len(errors_in_log)} error lines, first: `{errors_in_log[0][:300]}`")
    return result
