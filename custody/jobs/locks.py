"""One holder at a time across core instances: PostgreSQL advisory locks; on
SQLite, a lock on a file beside the database."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os

from sqlalchemy import Engine, text


def lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def exclusive(engine: Engine, name: str):
    """Yields True if this process holds the lock `name`, False if another holder has it."""
    if engine.dialect.name != "postgresql":
        with _file_lock(engine, name) as got:
            yield got
        return
    key = lock_key(name)
    with engine.connect() as conn:
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        if got:
            keep_while_idle(conn)
        conn.commit()
        try:
            yield bool(got)
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()


def keep_while_idle(conn) -> None:
    """For a session holding a session-level advisory lock while it sits idle (the work runs on
    others): a server with idle_session_timeout (PostgreSQL 14+) ended it mid pass, the lock went
    with it, and another instance or upgrade went ahead beside this one."""
    conn.execute(text("SELECT set_config('idle_session_timeout', '0', false) "
                      "WHERE current_setting('server_version_num')::int >= 140000"))


@contextlib.contextmanager
def _file_lock(engine: Engine, name: str):
    """SQLite: `custody serve` and `custody scan` on one database file each ran the scanners and
    the withdrawal job, two at once. An flock on <database>.<name>.lock lets one in; the kernel
    drops it when its holder exits, however it exits. An in-memory database has one process."""
    database = engine.url.database
    if not database or database == ":memory:":
        yield True
        return
    fd = os.open(f"{database}.{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True  # closing the file below releases the lock
    finally:
        os.close(fd)


def for_this_transaction(conn, name: str) -> None:
    """Waits for, then holds until the transaction ends, the lock `name` (PostgreSQL; on SQLite
    the write transaction's own lock, BEGIN IMMEDIATE, already lets one writer in at a time)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(name)})
