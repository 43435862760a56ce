"""Rolling 24-hour outflow totals per asset, kept in a small SQLite file.

They survive a restart of the signer: a compromised core can't reset them by
making the signer restart. Amounts are stored as decimal text (they can
exceed 2^63 in wei). The rows of the current window are also kept in memory
(loaded at start), so a check costs no query and no re-summing.
"""
from __future__ import annotations

import collections
import pathlib
import sqlite3
import threading
import time

WINDOW_S = 24 * 3600


class RollingLimits:
    def __init__(self, path: pathlib.Path, durable: bool = True, now_s: float | None = None):
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute("CREATE TABLE IF NOT EXISTS outflows (id INTEGER PRIMARY KEY, asset TEXT NOT NULL, "
                         "amount TEXT NOT NULL, at_s REAL NOT NULL, payload_sha256 TEXT NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS outflows_asset_at ON outflows (asset, at_s)")
        self._lock = threading.Lock()
        # asset -> deque of (at_s, amount) in time order, and their running sum.
        self._window: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._sums: dict[str, int] = collections.defaultdict(int)
        # Load generously (2 windows back): the caller's clock decides what is in the window.
        since = (time.time() if now_s is None else now_s) - 2 * WINDOW_S
        for asset, amount, at_s in self._db.execute(
                "SELECT asset, amount, at_s FROM outflows WHERE at_s > ? ORDER BY at_s", (since,)):
            self._window[asset].append((at_s, int(amount)))
            self._sums[asset] += int(amount)

    def spent_since(self, asset: str, since_s: float) -> int:
        with self._lock:
            window = self._window[asset]
            while window and window[0][0] <= since_s:
                self._sums[asset] -= window.popleft()[1]
            return self._sums[asset]

    def record(self, asset: str, amount: int, at_s: float, payload_sha256: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO outflows (asset, amount, at_s, payload_sha256) VALUES (?, ?, ?, ?)",
                             (asset, str(amount), at_s, payload_sha256))
            self._window[asset].append((at_s, amount))
            self._sums[asset] += amount

    def close(self) -> None:
        self._db.close()
