"""The amount and script each Bitcoin input was signed with, answered mostly from memory.

Every request asks this of each of its inputs (Policy, rule "inputs"), and a
database lookup costs about 5 us, a sixth of the whole check-and-sign of a
one-input payment. Most inputs were never signed before (a coin is spent
once): a Bloom filter of every signed outpoint says so without the database,
and is never wrong in that direction (a false positive only costs the
lookup). The claims signed most recently (fee bumps and retries sign the same
coins again) are kept exactly. The rows stay in SQLite (hsm/replacements.py),
which is what a restart reads the filter back from.
"""
from __future__ import annotations

import collections
import sqlite3

from rbloom import Bloom

RECENT = 100_000  # exact claims kept in memory
MIN_CAPACITY = 1_000_000  # outpoints the filter is sized for, at least; doubled as it fills
FALSE_POSITIVES = 0.001  # about 1.8 MB of filter per million outpoints


class SignedInputs:
    def __init__(self, db: sqlite3.Connection):
        self._db = db
        self._recent: collections.OrderedDict[str, tuple[int, bytes]] = collections.OrderedDict()
        self._rebuild()

    def claim(self, outpoint: str) -> tuple[int, bytes] | None:
        """(amount, script) the outpoint was signed with, or None if it never was."""
        hit = self._recent.get(outpoint)
        if hit is not None:
            return hit
        if outpoint not in self._filter:
            return None
        row = self._db.execute("SELECT amount, script FROM signed_inputs WHERE outpoint = ?", (outpoint,)).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def signed(self, claims) -> None:
        """After the claims' rows are committed. An outpoint keeps its first claim, as its row does
        (INSERT OR IGNORE): a claim already known is left as it is, whatever this one says."""
        recent = self._recent
        for outpoint, amount, script in claims:
            self._filter.add(outpoint)
            recent.setdefault(outpoint, (amount, script))
            recent.move_to_end(outpoint)
        self._added += len(claims)
        while len(recent) > RECENT:
            recent.popitem(last=False)
        if self._added > self._capacity:
            self._rebuild()

    def _rebuild(self) -> None:
        """A filter sized for twice the outpoints stored, filled from the table."""
        count = self._db.execute("SELECT count(*) FROM signed_inputs").fetchone()[0]
        self._capacity = max(MIN_CAPACITY, 2 * count)
        self._filter = Bloom(self._capacity, FALSE_POSITIVES)
        for (outpoint,) in self._db.execute("SELECT outpoint FROM signed_inputs"):
            self._filter.add(outpoint)
        self._added = count
