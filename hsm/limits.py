"""Rolling 24-hour outflow totals per asset, kept in a small SQLite file.

They survive a restart of the signer: a compromised core can't reset them by
making the signer restart. Amounts are stored as decimal text (they can
exceed 2^63 in wei) and summed in Python.
"""
from __future__ import annotations

import pathlib
import sqlite3
import threading

WINDOW_S = 24 * 3600


class RollingLimits:
    def __init__(self, path: pathlib.Path, durable: bool = True):
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute("CREATE TABLE IF NOT EXISTS outflows (id INTEGER PRIMARY KEY, asset TEXT NOT NULL, "
                         "amount TEXT NOT NULL, at_s REAL NOT NULL, payload_sha256 TEXT NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS outflows_asset_at ON outflows (asset, at_s)")
        self._lock = threading.Lock()

    def spent_since(self, asset: str, since_s: float) -> int:
        with self._lock:
            rows = self._db.execute("SELECT amount FROM outflows WHERE asset = ? AND at_s > ?", (asset, since_s))
            return sum(int(a) for (a,) in rows)

    def record(self, asset: str, amount: int, at_s: float, payload_sha256: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO outflows (asset, amount, at_s, payload_sha256) VALUES (?, ?, ?, ?)",
                             (asset, str(amount), at_s, payload_sha256))

    def close(self) -> None:
        self._db.close()
