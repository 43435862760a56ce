"""Ledger benchmarks: batched group commit, one-transfer calls from many threads, a hot account."""
from __future__ import annotations

import dataclasses
import datetime
import json
import threading
import time
import uuid
from typing import Callable

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, MetaData, PrimaryKeyConstraint, String, Table, Text, select

from benchmarks.common import (
    ASSET, GROUP, BenchResult, Ledger, Row, Target, best, check_invariants, create_accounts, database, fmt_rounds,
    fund, median_ratio, progress, rate, store_idempotency_keys, transfer_command,
)
from custody.db import schema as t
from custody.db.engine import write_transaction
from custody.db.types import Amount
from custody.ledger.commands import BatchResult
from custody.db.bulk import fetch_rows, insert_rows, select_by_ids, select_by_pairs, to_int, update_account_totals
from custody.ledger.model import new_id, owner_of, user_available


@dataclasses.dataclass(frozen=True)
class Sizes:
    rounds: int            # interleaved rounds; each figure is the best round
    groups: int            # transactions of GROUP transfers per workload per round
    single_per_thread: int  # calls per thread per round in ledger_single
    aged_keys: int          # idempotency keys already stored before the "aged" rounds of ledger_batched
    aged_rounds: int
    aged_single_per_thread: int  # ledger_single after the keys are stored (kept small: it can be very slow)
    sweep: bool = True      # ledger_single's informational group-size sweep
    threads: int = 64
    accounts: int = 2 * GROUP  # disjoint pairs: no account appears twice in a group


FULL = Sizes(rounds=5, groups=8, single_per_thread=100, aged_keys=500_000, aged_rounds=3, aged_single_per_thread=25)
QUICK = Sizes(rounds=2, groups=2, single_per_thread=15, aged_keys=20_000, aged_rounds=1, aged_single_per_thread=10,
              sweep=False)


class Workload:
    """prepare(round) builds its input untimed; run(prepared) is the timed part; returns transfers."""

    def __init__(self, label: str, prepare: Callable[[int], object], run: Callable[[object], int]):
        self.label = label
        self.prepare = prepare
        self.run = run
        self.rates: list[float] = []


def interleave(name: str, backend: str, workloads: list[Workload], rounds: int) -> None:
    """Runs the workloads in alternating order (ABBA...) so that drift and noise hit all of them."""
    for r in range(rounds):
        order = workloads if r % 2 == 0 else list(reversed(workloads))
        parts = []
        for w in order:
            prepared = w.prepare(r)
            started = time.perf_counter()
            n = w.run(prepared)
            elapsed = time.perf_counter() - started
            w.rates.append(n / elapsed)
            parts.append(f"{w.label} {rate(n / elapsed)}/s")
        progress(f"{name} {backend}: round {r + 1}/{rounds}: " + ", ".join(parts))


# -- the plain-insert baseline -------------------------------------------------------

def _baseline_tables(metadata: MetaData) -> dict[str, Table]:
    """Copies of the four tables a transfer writes, with the same columns, types,
    keys, indexes and foreign keys, under bench_* names."""
    batches = Table(
        "bench_ledger_batches", metadata,
        Column("id", String(32), primary_key=True),
        Column("kind", String(32), nullable=False),
        Column("reference", String(128), nullable=True),
        Column("actor", String(64), nullable=False),
        Column("memo", Text, nullable=True),
        Column("flagged", Boolean, nullable=False),
        Column("event_cursor", BigInteger, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    transfers = Table(
        "bench_ledger_transfers", metadata,
        Column("id", t.Id, primary_key=True, autoincrement=True),
        Column("batch_id", String(32), nullable=False),
        Column("asset", String(16), nullable=False),
        # No foreign keys, as ledger_transfers has none (migration 0009).
        Column("debit_account_id", t.Id, nullable=False),
        Column("credit_account_id", t.Id, nullable=False),
        Column("amount", Amount, nullable=False),
        Index("ix_bench_ledger_transfers_batch_id", "batch_id"),
    )
    transfers_only = Table(  # informational: the transfer rows alone (no batch row to point at)
        "bench_transfers_only", metadata,
        Column("id", t.Id, primary_key=True, autoincrement=True),
        Column("batch_id", String(32), nullable=False),
        Column("asset", String(16), nullable=False),
        Column("debit_account_id", t.Id, nullable=False),
        Column("credit_account_id", t.Id, nullable=False),
        Column("amount", Amount, nullable=False),
        Index("ix_bench_transfers_only_batch_id", "batch_id"),
    )
    events = Table(
        "bench_events", metadata,
        Column("cursor", BigInteger, primary_key=True, autoincrement=False),
        Column("type", String(64), nullable=False),
        Column("payload", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    idempotency = Table(
        "bench_idempotency_keys", metadata,
        Column("scope", String(64), nullable=False),
        Column("key", String(128), nullable=False),
        Column("request_hash", String(64), nullable=False),
        Column("result", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        PrimaryKeyConstraint("scope", "key", name="pk_bench_idempotency_keys"),
    )
    return {"batches": batches, "transfers": transfers, "transfers_only": transfers_only,
            "events": events, "idempotency": idempotency}


class PlainInsert:
    """Inserts prepared rows with the driver directly inside custody's write_transaction,
    one commit per GROUP transfers: COPY on PostgreSQL (psycopg), executemany on SQLite (sqlite3)."""

    def __init__(self, engine, ledger_ids: list[tuple[int, int]]):
        self.engine = engine
        self.pg = engine.dialect.name == "postgresql"
        self.pairs = ledger_ids  # (debit ledger account id, credit ledger account id) per transfer in a group
        self.ledger_ids = sorted({i for pair in ledger_ids for i in pair})
        with engine.connect() as conn:
            la = t.ledger_accounts
            self.codes = conn.execute(select(la.c.code).where(la.c.id.in_(self.ledger_ids))).scalars().all()
        metadata = MetaData()
        self.tables = _baseline_tables(metadata)
        metadata.create_all(engine)
        self.cursor = 0
        mark = "%s" if self.pg else "?"
        self.sql = {
            name: f"INSERT INTO {table.name} ({', '.join(c.name for c in table.columns if c.name != 'id' or name in ('batches',))}) "
                  f"VALUES ({', '.join(mark for c in table.columns if c.name != 'id' or name in ('batches',))})"
            for name, table in self.tables.items()
        }
        self.sql["events"] = self.sql["events"].replace("(cursor,", '("cursor",')  # a reserved word on PostgreSQL
        self.copy_sql = {
            name: f"COPY {table.name} ({', '.join(c.name for c in table.columns if c.name != 'id' or name == 'batches')}) "
                  f"FROM STDIN".replace("(cursor,", '("cursor",')
            for name, table in self.tables.items()
        }

    def _value(self, v):
        if self.pg:
            return v
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, int) and v > 2**62:
            return str(v)
        if isinstance(v, datetime.datetime):  # as SQLAlchemy stores DateTime on SQLite
            return v.strftime("%Y-%m-%d %H:%M:%S.%f")
        return v

    def prepare(self, groups: int, *, full: bool, raw: bool = False) -> list[dict[str, list[tuple]]]:
        """Rows per group. raw: values as the ledger's code holds them (custody.db.bulk converts them)."""
        out = []
        for g in range(groups):
            now = datetime.datetime.now(datetime.timezone.utc)
            rows = {"batches": [], "transfers": [], "events": [], "idempotency": []}
            for k, (debit, credit) in enumerate(self.pairs):
                if g % 2:
                    debit, credit = credit, debit
                batch_id = new_id()
                amount = 1 + k % 100
                self.cursor += 1
                v = (lambda x: x) if raw else self._value
                rows["transfers"].append((batch_id, ASSET, debit, credit,
                                          v(str(amount) if not (self.pg or raw) else amount)))
                if full:
                    rows["batches"].append((batch_id, "transfer", None, "bench", None, v(False), self.cursor, v(now)))
                    payload = json.dumps({"batch_id": batch_id, "kind": "transfer", "reference": None, "actor": "bench",
                                          "memo": None, "flagged": False, "postings": [
                                              {"asset": ASSET, "debit": f"user:{debit}:available",
                                               "credit": f"user:{credit}:available", "amount": str(amount)}]},
                                         separators=(",", ":"))
                    rows["events"].append((self.cursor, "ledger.transfer", payload, v(now)))
                    rows["idempotency"].append(("bench", uuid.uuid4().hex, "%064x" % self.cursor,
                                                BatchResult(batch_id, self.cursor).to_json(), v(now)))
            if not full:
                rows = {"transfers_only": rows["transfers"]}
            out.append(rows)
        return out

    def run_statements(self, prepared: list[dict[str, list[tuple]]]) -> int:
        """The ledger's own SQL per group with prepared rows and none of its logic: the
        idempotency, account and balance lookups, the sequence row, the four inserts
        (custody.db.bulk, into the bench_* copies), and the balance updates (rewriting
        the totals just read: the same writes, the ledger unchanged). What the ledger
        could reach if its Python cost nothing."""
        n = 0
        owners = sorted({owner_of(code) for code in self.codes})
        mark = "%s" if self.pg else "?"
        for rows in prepared:
            with write_transaction(self.engine) as conn:
                select_by_pairs(conn, self.tables["idempotency"], ("scope", "key", "request_hash", "result"),
                                "scope", "key", {(r[0], r[1]) for r in rows["idempotency"]})
                select_by_ids(conn, t.accounts, ("id", "frozen"), owners)
                found = select_by_ids(conn, t.ledger_accounts, ("id", "debits", "credits"), self.ledger_ids,
                                      lock=self.pg)
                fetch_rows(conn, f"UPDATE event_sequence SET last_cursor = last_cursor + {mark} WHERE id = 1 "
                                 "RETURNING last_cursor", (0,))
                for name, table in self.tables.items():
                    if name in rows:
                        columns = [c.name for c in table.columns if c.name != "id" or name == "batches"]
                        insert_rows(conn, table, columns, rows[name])
                update_account_totals(conn, [(i, to_int(d), to_int(c)) for i, d, c in found])
            n += len(rows["transfers"])
        return n

    def prefill_keys(self, n: int) -> None:
        """n more idempotency keys in both idempotency_keys and the baseline's copy."""
        store_idempotency_keys(self.engine, n, ("idempotency_keys", "bench_idempotency_keys"))

    def run(self, prepared: list[dict[str, list[tuple]]]) -> int:
        n = 0
        for rows in prepared:
            with write_transaction(self.engine) as conn:
                cur = conn.connection.dbapi_connection.cursor()
                try:
                    for name in ("batches", "transfers", "transfers_only", "events", "idempotency"):
                        if name not in rows:
                            continue
                        if self.pg:  # COPY: the fastest way psycopg has to insert rows
                            with cur.copy(self.copy_sql[name]) as copy:
                                for row in rows[name]:
                                    copy.write_row(row)
                        else:
                            cur.executemany(self.sql[name], rows[name])
                finally:
                    cur.close()
            n += len(next(iter(rows.values())))
        return n


# -- shared setup ------------------------------------------------------------------------

def _setup_accounts(engine, n: int, prefix: str) -> tuple[Ledger, list[int]]:
    started = time.perf_counter()
    accounts = create_accounts(engine, n, prefix)
    ledger = Ledger(engine)
    fund(ledger, accounts)
    progress(f"  {n:,} accounts created (create_account, one commit each) and funded in "
             f"{time.perf_counter() - started:.1f}s")
    return ledger, accounts


def _ledger_workload(label: str, ledger: Ledger, pairs: list[tuple[int, int]], groups: int) -> Workload:
    def prepare(r: int):
        out = []
        for g in range(groups):
            group = []
            for k, (a, b) in enumerate(pairs):
                if g % 2:
                    a, b = b, a
                group.append(transfer_command(a, b, 1 + k % 100, f"{label}-{uuid.uuid4().hex}"))
            out.append(group)
        return out

    def run(prepared) -> int:
        for group in prepared:
            ledger.commit(group)
        return sum(len(g) for g in prepared)

    return Workload(label, prepare, run)


# -- 1. ledger_batched ---------------------------------------------------------------------

def ledger_batched(backends: list[str], sizes: Sizes) -> BenchResult:
    result = BenchResult("ledger_batched")
    result.details.append(
        f"Transfers arrive in groups of {GROUP:,}; each group is one `apply_commands` call in one "
        f"`write_transaction` (one durable commit). Each transfer is the command `Custody.submit_transfer` "
        f"builds (one posting user:a:available -> user:b:available, not_frozen/must_exist, an idempotency key "
        f"with a SHA-256 request hash); commands are built before the clock starts. {GROUP:,} transfers per group "
        f"over {2 * GROUP:,} accounts in disjoint pairs, direction alternating by group. "
        f"Baseline (plain insert): the same four rows per transfer the ledger inserts "
        f"(ledger_batches, ledger_transfers, events, idempotency_keys rows, with the same sizes of ids, JSON payload "
        f"and result) into bench_* copies of those tables (same columns, types, primary keys, indexes and foreign keys), "
        f"prepared before the clock starts, inserted by the driver directly (PostgreSQL: psycopg 3 COPY, its fastest "
        f"path and the one the ledger's writes use; SQLite: sqlite3 executemany) inside the same "
        f"`write_transaction`, one commit per {GROUP:,} transfers. Informational: the transfer rows alone; and the "
        f"ledger's SQL alone (PlainInsert.run_statements: the same statements the ledger runs per group, with "
        f"prepared rows and none of its Python). "
        f"{sizes.rounds} interleaved rounds of {sizes.groups} groups each; each figure is the best round. "
        f"Then, because a live ledger keeps every idempotency key, {sizes.aged_keys:,} more keys (scope 'bench', "
        f"random 32-hex keys) are stored in both idempotency_keys and the baseline's copy and "
        f"{sizes.aged_rounds} more interleaved rounds are run: the '+N stored keys' rows.")
    for backend in backends:
        progress(f"ledger_batched {backend}: setting up")
        with database(backend) as (_url, engine):
            ledger, accounts = _setup_accounts(engine, sizes.accounts, "batched")
            pairs = [(accounts[2 * k], accounts[2 * k + 1]) for k in range(GROUP)]
            with engine.connect() as conn:
                la = t.ledger_accounts
                ids = dict(conn.execute(select(la.c.code, la.c.id).where(la.c.asset == ASSET)).all())
            ledger_pairs = [(ids[user_available(a)], ids[user_available(b)]) for a, b in pairs]
            plain = PlainInsert(engine, ledger_pairs)
            ledger_w = _ledger_workload("ledger", ledger, pairs, sizes.groups)
            plain_w = Workload("plain insert", lambda r: plain.prepare(sizes.groups, full=True), plain.run)
            only_w = Workload("transfer rows only", lambda r: plain.prepare(sizes.groups, full=False), plain.run)
            sql_w = Workload("ledger SQL alone", lambda r: plain.prepare(sizes.groups, full=True, raw=True),
                             plain.run_statements)
            interleave("ledger_batched", backend, [plain_w, ledger_w, only_w, sql_w], sizes.rounds)
            check_invariants(engine, f"ledger_batched {backend}", result)
            started = time.perf_counter()
            plain.prefill_keys(sizes.aged_keys)
            progress(f"ledger_batched {backend}: stored {sizes.aged_keys:,} more idempotency keys in both tables "
                     f"({time.perf_counter() - started:.1f}s)")
            aged_ledger = _ledger_workload("ledger", ledger, pairs, sizes.groups)
            aged_plain = Workload("plain insert", lambda r: plain.prepare(sizes.groups, full=True), plain.run)
            interleave("ledger_batched (aged)", backend, [aged_plain, aged_ledger], sizes.aged_rounds)
            check_invariants(engine, f"ledger_batched (aged) {backend}", result)
        for label, lw, pw in (("", ledger_w, plain_w), (f" (+{sizes.aged_keys:,} stored keys)", aged_ledger, aged_plain)):
            ledger_rate, plain_rate = best(lw.rates), best(pw.rates)
            ratio = ledger_rate / plain_rate
            result.rows.append(Row(
                "ledger_batched", backend, f"transfers/s, {GROUP:,} per commit{label}", ledger_rate, "/s",
                "plain insert of the same rows", plain_rate, ratio,
                [Target(">= 0.5 x plain insert", ratio >= 0.5), Target(">= 20,000/s", ledger_rate >= 20_000)]))
        only_rate, sql_rate = best(only_w.rates), best(sql_w.rates)
        result.details.append(
            f"- {backend}, the ledger's SQL alone (its lookups, inserts and balance updates with prepared rows, "
            f"no ledger logic): rounds {fmt_rounds(sql_w.rates)}/s, best {rate(sql_rate)}/s = "
            f"{sql_rate / best(plain_w.rates):.2f} x plain insert; the ledger reaches "
            f"{best(ledger_w.rates) / sql_rate:.2f} of it")
        plain_us, sql_us, ledger_us = (1e6 / best(w.rates) for w in (plain_w, sql_w, ledger_w))
        result.details.append(
            f"- {backend}, time per transfer from the best rounds: plain insert {plain_us:.1f} us, the ledger's SQL "
            f"alone {sql_us:.1f} us, the ledger {ledger_us:.1f} us. At 0.5 x plain insert the ledger would have "
            f"{2 * plain_us:.1f} us per transfer, leaving {2 * plain_us - sql_us:.1f} us for all its work that is "
            f"not SQL (checks, rows, results, in Python); it spends {ledger_us - sql_us:.1f} us on it")
        result.details.append(
            f"- {backend}, fresh database: ledger rounds {fmt_rounds(ledger_w.rates)}/s; plain insert rounds "
            f"{fmt_rounds(plain_w.rates)}/s; transfer rows only rounds {fmt_rounds(only_w.rates)}/s "
            f"(best {rate(only_rate)}/s, ledger = {best(ledger_w.rates) / only_rate:.2f} x that); median of the "
            f"per-round ledger / plain insert ratios {median_ratio(ledger_w.rates, plain_w.rates):.2f}")
        result.details.append(
            f"- {backend}, after storing {sizes.aged_keys:,} more idempotency keys: ledger rounds "
            f"{fmt_rounds(aged_ledger.rates)}/s; plain insert rounds {fmt_rounds(aged_plain.rates)}/s; median of the "
            f"per-round ratios {median_ratio(aged_ledger.rates, aged_plain.rates):.2f}")
    return result


# -- 3. hot_account ---------------------------------------------------------------------------

def hot_account(backends: list[str], sizes: Sizes) -> BenchResult:
    result = BenchResult("hot_account")
    result.details.append(
        f"As ledger_batched ({GROUP:,} transfers per commit), in interleaved rounds: 'disjoint' moves funds between "
        f"{GROUP:,} disjoint pairs of accounts; 'hot' has every transfer touch one shared account: "
        f"{GROUP:,} different accounts pay into it (even groups) or it pays out to them (odd groups). "
        f"Slowdown = disjoint rate / hot rate, from the best round of each.")
    for backend in backends:
        progress(f"hot_account {backend}: setting up")
        with database(backend) as (_url, engine):
            ledger, accounts = _setup_accounts(engine, sizes.accounts + 1, "hot")
            hot = accounts.pop()
            disjoint = [(accounts[2 * k], accounts[2 * k + 1]) for k in range(GROUP)]
            hot_pairs = [(accounts[k], hot) for k in range(GROUP)]
            disjoint_w = _ledger_workload("disjoint", ledger, disjoint, sizes.groups)
            hot_w = _ledger_workload("hot", ledger, hot_pairs, sizes.groups)
            interleave("hot_account", backend, [disjoint_w, hot_w], sizes.rounds)
            check_invariants(engine, f"hot_account {backend}", result)
        hot_rate, disjoint_rate = best(hot_w.rates), best(disjoint_w.rates)
        slowdown = disjoint_rate / hot_rate
        result.rows.append(Row(
            "hot_account", backend, "hot-account transfers/s", hot_rate, "/s",
            "disjoint accounts", disjoint_rate, hot_rate / disjoint_rate,
            [Target(f"slowdown <= 1.5 (is {slowdown:.2f})", slowdown <= 1.5)]))
        result.details.append(f"- {backend}: hot rounds {fmt_rounds(hot_w.rates)}/s; "
                              f"disjoint rounds {fmt_rounds(disjoint_w.rates)}/s; slowdown {slowdown:.2f}x "
                              f"(median of the per-round slowdowns {median_ratio(disjoint_w.rates, hot_w.rates):.2f})")
    return result


# -- 2. ledger_single ---------------------------------------------------------------------------

def _group_size_sweep(ledger: Ledger, accounts: list[int], backend: str) -> list[str]:
    """Informational: apply_commands cost per group size (one commit each), best of 2."""
    pairs = [(accounts[2 * k], accounts[2 * k + 1]) for k in range(GROUP)]
    out = []
    for size, n in ((1, 200), (8, 800), (32, 2000), (128, 4000), (1000, 4000)):
        seconds = []
        for rep in range(2):
            commands = [transfer_command(*(pairs[i % GROUP] if (i // GROUP + rep) % 2 == 0 else pairs[i % GROUP][::-1]),
                                         1, f"sweep-{uuid.uuid4().hex}") for i in range(n)]
            started = time.perf_counter()
            for i in range(0, n, size):
                ledger.commit(commands[i:i + size])
            seconds.append(time.perf_counter() - started)
        t = min(seconds)
        out.append(f"| {backend} | {size:,} | {rate(n / t)}/s | {1000 * t / (n / size):.2f} ms | {1e6 * t / n:,.0f} us |")
        progress(f"ledger_single {backend}: group-size sweep: {size:,} per commit -> {rate(n / t)}/s")
    return out


def ledger_single(backends: list[str], sizes: Sizes) -> BenchResult:
    from custody.app import Custody
    from tests.support.config import make_config

    threads = sizes.threads
    n = threads * sizes.single_per_thread
    result = BenchResult("ledger_single")
    result.details.append(
        f"{threads} threads each call `Custody(config).transfer(...)` (validation, idempotency hash, "
        f"submit to the ledger writer, wait for the result) {sizes.single_per_thread} times per round, one transfer per "
        f"call, thread i between its own two accounts; the writer runs in a child process as `custody serve` runs it "
        f"(`ledger_writer = \"process\"`) and its group commit (max_group=1000) decides the commits. "
        f"Baseline: the same number of transfers as ledger_batched does them ({GROUP:,} per apply_commands call) on the "
        f"same database, interleaved; {sizes.rounds} rounds, best of each. Then {sizes.aged_keys:,} more idempotency "
        f"keys are stored and {sizes.aged_rounds} more interleaved rounds of {sizes.aged_single_per_thread} calls "
        f"per thread are run (the '+N stored keys' rows).")
    sweeps: list[str] = []
    for backend in backends:
        progress(f"ledger_single {backend}: setting up")
        with database(backend) as (url, _engine):
            app = Custody(make_config(url, ledger_writer="process"))
            try:
                ledger, accounts = _setup_accounts(app.engine, 2 * GROUP, "single")
                commits = [0]
                app.writer.on_commit(lambda _cursor: commits.__setitem__(0, commits[0] + 1))
                per_commit: dict[str, list[float]] = {"fresh": [], "aged": []}
                latencies: dict[str, list[float]] = {"fresh": [], "aged": []}

                def single_workload(phase: str, per_thread: int) -> Workload:
                    total = threads * per_thread

                    def prepare(r: int):
                        commits[0] = 0
                        return r

                    def run(r: int) -> int:
                        barrier = threading.Barrier(threads + 1)
                        errors: list[BaseException] = []
                        lat: list[list[float]] = [[] for _ in range(threads)]

                        def caller(i: int) -> None:
                            a, b = str(accounts[2 * i]), str(accounts[2 * i + 1])
                            mine = lat[i]
                            barrier.wait()
                            try:
                                for j in range(per_thread):
                                    source, target = (a, b) if j % 2 == 0 else (b, a)
                                    started = time.perf_counter()
                                    app.transfer("bench", f"{phase}{r}-{i}-{j}-{uuid.uuid4().hex[:8]}",
                                                 source, target, ASSET, "1")
                                    mine.append(time.perf_counter() - started)
                            except BaseException as exc:  # reported below; never silently counted
                                errors.append(exc)

                        pool = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
                        for th in pool:
                            th.start()
                        barrier.wait()
                        for th in pool:
                            th.join()
                        if errors:
                            raise RuntimeError(f"{len(errors)} transfers failed, first: {errors[0]!r}")
                        per_commit[phase].append(total / max(commits[0], 1))
                        latencies[phase].extend(x for part in lat for x in part)
                        return total

                    return Workload(f"{threads} threads x 1 transfer/call", prepare, run)

                def batched_workload(total: int) -> Workload:
                    pairs = [(accounts[2 * k], accounts[2 * k + 1]) for k in range(GROUP)]
                    w = _ledger_workload("batched", ledger, pairs, -(-total // GROUP))
                    whole = w.prepare

                    def prepare(r: int):  # exactly total transfers, in groups of GROUP
                        flat = [c for g in whole(r) for c in g][:total]
                        return [flat[i:i + GROUP] for i in range(0, total, GROUP)]

                    w.prepare = prepare
                    return w

                single_w, batched_w = single_workload("fresh", sizes.single_per_thread), batched_workload(n)
                interleave("ledger_single", backend, [single_w, batched_w], sizes.rounds)
                check_invariants(app.engine, f"ledger_single {backend}", result)
                if sizes.sweep:
                    sweeps += _group_size_sweep(ledger, accounts, backend)
                started = time.perf_counter()
                store_idempotency_keys(app.engine, sizes.aged_keys)
                progress(f"ledger_single {backend}: stored {sizes.aged_keys:,} more idempotency keys "
                         f"({time.perf_counter() - started:.1f}s)")
                aged_n = threads * sizes.aged_single_per_thread
                aged_single = single_workload("aged", sizes.aged_single_per_thread)
                aged_batched = batched_workload(aged_n)
                interleave("ledger_single (aged)", backend, [aged_single, aged_batched], sizes.aged_rounds)
                check_invariants(app.engine, f"ledger_single (aged) {backend}", result)
            finally:
                app.close()
        for phase, label, sw, bw in (("fresh", "", single_w, batched_w),
                                     ("aged", f" (+{sizes.aged_keys:,} stored keys)", aged_single, aged_batched)):
            single_rate, batched_rate = best(sw.rates), best(bw.rates)
            lat = sorted(latencies[phase])
            p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
            result.rows.append(Row(
                "ledger_single", backend, f"transfers/s, {threads} threads, 1 per call{label}", single_rate, "/s",
                f"batched ({GROUP:,}/commit)", batched_rate, single_rate / batched_rate,
                [Target(">= 3,000/s", single_rate >= 3000)]))
            result.details.append(
                f"- {backend}{label or ', fresh database'}: single rounds {fmt_rounds(sw.rates)}/s; batched rounds "
                f"{fmt_rounds(bw.rates)}/s (median per-round ratio {median_ratio(sw.rates, bw.rates):.2f}); "
                f"mean transfers per commit {', '.join(f'{g:.1f}' for g in per_commit[phase])}; "
                f"call latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    result.details += [] if not sweeps else [
        "",
        "Informational, on the fresh database: what one `apply_commands` group costs by size (transfers per commit, "
        "best of 2). The fixed cost per group is what small groups (one-transfer calls) pay:",
        "",
        "| db | transfers per commit | transfers/s | time per commit | time per transfer |",
        "|---|---|---|---|---|",
        *sweeps,
    ]
    return result
