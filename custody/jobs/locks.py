"""One holder at a time across core instances: PostgreSQL advisory locks."""
from __future__ import annotations

import contextlib
import hashlib

from sqlalchemy import Engine, text


def lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def exclusive(engine: Engine, name: str):
    """Yields True if this process holds the lock `name` (always on SQLite: one process)."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = lock_key(name)
    with engine.connect() as conn:
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        conn.commit()
        try:
            yield bool(got)
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()


def for_this_transaction(conn, name: str) -> None:
    """Waits for, then holds until the transaction ends, the lock `name` (PostgreSQL; on SQLite
    the write transaction's own lock, BEGIN IMMEDIATE, already lets one writer in at a time)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(name)})
