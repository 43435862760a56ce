"""Rolling 24-hour totals per asset: the outflow (external amounts) and the fees.

They survive a restart of the signer (a compromised core can't reset them by
making the signer restart): every signature's outflow and counted fee are part
of its "signed" audit entry, made durable with that entry before the signer answers, and the
totals are rebuilt from the audit log at start (`replay`). So a request costs
one durable sync, not one for the log and one for a limits database. Amounts
are kept as decimal text in the log (they can exceed 2^63 in wei). The rows
of the current window are kept in memory, so a check costs no query and no
re-summing.
"""
from __future__ import annotations

import bisect
import collections
import threading

from hsm.errors import AuditLogBroken

WINDOW_S = 24 * 3600


def outflow_of(entry: dict) -> tuple[float, dict[str, int]]:
    """(at_s, external amount per asset) that a "signed" audit entry counted."""
    data = entry["data"]
    if "outflow" in data:
        return data["at_s"], {asset: int(amount) for asset, amount in data["outflow"].items()}
    # Written before outflows were logged: the same sum, from its destinations.
    outflow: dict[str, int] = collections.defaultdict(int)
    for d in data.get("destinations", []):
        if not d["internal"]:
            outflow[d["asset"]] += int(d["amount"])
    return entry["at"], outflow


def fees_of(entry: dict) -> tuple[float, dict[str, int]]:
    """(at_s, fee per asset) that a "signed" audit entry counted."""
    data = entry["data"]
    if "fees" in data:
        return data["at_s"], {asset: int(amount) for asset, amount in data["fees"].items()}
    # Written before fees were counted: its whole fee (a fee bump then counts in full, erring on the
    # side of refusing for at most one window).
    if not data.get("fee_asset"):
        return entry["at"], {}
    return data.get("at_s", entry["at"]), {data["fee_asset"]: int(data.get("fee", "0"))}


# How far ahead of the signer's clock a replayed entry's time may be (clocks of two hosts, a
# clock stepped back since): more, and the entry was not written by this signer.
MAX_AHEAD_S = 3600
# Counted entries are kept this long after they leave the window (see RollingLimits).
KEEP_S = 7 * WINDOW_S


class RollingLimits:
    def __init__(self, now_s: float, counted=outflow_of):
        # Replay keeps what is less than two windows old: the caller's clock decides what is in the window.
        self._replay_since_s = now_s - 2 * WINDOW_S
        self._latest_s = now_s + MAX_AHEAD_S
        self._counted = counted
        self._lock = threading.Lock()
        # asset -> [(at_s, amount), ...] in time order. Entries before _cut[asset] are out of the last
        # window asked about but kept (KEEP_S): a clock stepped forward and back again must find them
        # counted again, not dropped for good. _sums[asset] is the sum of the entries from the cut on.
        self._window: dict[str, list] = collections.defaultdict(list)
        self._cut: dict[str, int] = collections.defaultdict(int)
        self._sums: dict[str, int] = collections.defaultdict(int)

    def replay(self, entry: dict) -> None:
        """Counts what a "signed" audit entry counted (called for each entry of the log at start)."""
        if entry.get("kind") != "signed":
            return
        at_s, amounts = self._counted(entry)
        # The chain of hashes is unkeyed: someone able to write the state folder can append entries
        # that verify. A negative amount, or a time far ahead that never leaves the window, would
        # switch a limit off for good; the signer never writes either, so it refuses to start.
        if (not isinstance(at_s, (int, float)) or at_s > self._latest_s
                or any(amount < 0 for amount in amounts.values())):
            raise AuditLogBroken(f"audit entry {entry.get('seq')} counts {amounts} at {at_s}: a negative amount "
                                 "or a time ahead of this host's clock, which this signer never writes")
        if at_s <= self._replay_since_s:
            return
        for asset, amount in amounts.items():
            self.record(asset, amount, at_s, entry["data"].get("payload_sha256", ""))

    def spent_since(self, asset: str, since_s: float) -> int:
        with self._lock:
            window, cut, total = self._window[asset], self._cut[asset], self._sums[asset]
            while cut < len(window) and window[cut][0] <= since_s:
                total -= window[cut][1]
                cut += 1
            while cut > 0 and window[cut - 1][0] > since_s:  # the clock went back: count them again
                cut -= 1
                total += window[cut][1]
            old = bisect.bisect_right(window, (since_s - KEEP_S, float("inf")), hi=cut)
            # Dropped in bulk (a list's front is costly to pop one by one), but often enough that what is
            # kept stays near KEEP_S: waiting for half the list held twice that.
            if old >= max(1024, len(window) // 8):
                del window[:old]
                cut -= old
            self._cut[asset], self._sums[asset] = cut, total
            return total

    def record(self, asset: str, amount: int, at_s: float, payload_sha256: str) -> None:
        """In memory; the caller makes it durable in the "signed" audit entry (outflow, at_s)."""
        with self._lock:
            window = self._window[asset]
            at = bisect.bisect_right(window, (at_s, float("inf")))  # a clock stepped back: keep them sorted
            window.insert(at, (at_s, amount))
            if at < self._cut[asset]:
                self._cut[asset] += 1  # before the cut: the next spent_since decides whether it counts
            else:
                self._sums[asset] += amount

    def close(self) -> None:
        pass
