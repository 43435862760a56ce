"""Engines and transactions for SQLite (embedded default) and PostgreSQL.

Commits are durable on both: SQLite runs in WAL mode with synchronous=FULL,
PostgreSQL with its default synchronous_commit=on.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from sqlalchemy import Connection, Engine, create_engine, event


def make_engine(url: str, *, pool_size: int = 8, session_timeouts: bool = True) -> Engine:
    """session_timeouts: PostgreSQL sessions get PG_SESSION_DEFAULTS (off for migrations, whose
    DDL and CREATE INDEX CONCURRENTLY may wait long on a live database, as they always did)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, poolclass=_sqlite_pool(url))
        _configure_sqlite(engine)
        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    if session_timeouts:
        _configure_postgres(engine)
    return engine


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One unit of work that writes. On SQLite it takes the write lock at BEGIN
    (BEGIN IMMEDIATE), so a transaction never fails half-way on lock upgrade."""
    with engine.connect().execution_options(custody_write=True) as conn:
        with conn.begin():
            yield conn


@contextlib.contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A consistent snapshot for reads. On PostgreSQL that takes REPEATABLE READ (its default,
    READ COMMITTED, gives each statement its own snapshot: two reads could see a commit between
    them), read-only, so it never fails on a concurrent write. Both ride on the BEGIN: no extra
    round trip. SQLite's transactions are snapshots already."""
    options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True} if is_postgres(engine) else {}
    with engine.connect().execution_options(**options) as conn:
        with conn.begin():
            yield conn


# A session that stops in the middle of a transaction (an instance paused or killed mid group, a
# host gone without closing its socket) keeps its row locks: every group takes the event sequence
# row, so every instance's ledger writes would wait on it with no end (a dead host: until TCP
# keepalive, about two hours). With these the server ends such a session and a write waiting on a
# lock fails (UNAVAILABLE to its caller, who retries with the same key) instead of hanging. Set
# only where the server, database, role or URL (options=-c ...) sets nothing else.
PG_SESSION_DEFAULTS = {"lock_timeout": "10s", "idle_in_transaction_session_timeout": "60s"}


def _configure_postgres(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        with dbapi_conn.cursor() as cur:
            for name, value in PG_SESSION_DEFAULTS.items():
                cur.execute("SELECT current_setting(%s)", (name,))
                if cur.fetchone()[0] == "0":
                    cur.execute("SELECT set_config(%s, %s, false)", (name, value))
        dbapi_conn.commit()


def _sqlite_pool(url: str):
    if ":memory:" in url or url in ("sqlite://", "sqlite:///"):
        raise ValueError("an in-memory SQLite database is not durable; give a file path")
    return None  # SQLAlchemy's default QueuePool for files


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling issues BEGIN late and never
    # BEGIN IMMEDIATE; take it over as SQLAlchemy's documentation recommends.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Straight to the driver: the ledger writer begins a transaction per
        # group commit, and SQLAlchemy's statement handling was a tenth of a
        # small group's cost.
        statement = "BEGIN IMMEDIATE" if conn.get_execution_options().get("custody_write") else "BEGIN"
        conn.connection.driver_connection.execute(statement)


__all__ = ["make_engine", "is_postgres", "write_transaction", "read_transaction"]
