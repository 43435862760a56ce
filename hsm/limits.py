"""Rolling 24-hour outflow totals per asset.

They survive a restart of the signer (a compromised core can't reset them by
making the signer restart): every signature's outflow is part of its "signed"
audit entry, made durable with that entry before the signer answers, and the
totals are rebuilt from the audit log at start (`replay`). So a request costs
one durable sync, not one for the log and one for a limits database. Amounts
are kept as decimal text in the log (they can exceed 2^63 in wei). The rows
of the current window are kept in memory, so a check costs no query and no
re-summing.
"""
from __future__ import annotations

import collections
import threading

WINDOW_S = 24 * 3600


class RollingLimits:
    def __init__(self, now_s: float):
        # Replay keeps what is less than two windows old: the caller's clock decides what is in the window.
        self._replay_since_s = now_s - 2 * WINDOW_S
        self._lock = threading.Lock()
        # asset -> deque of (at_s, amount) in time order, and their running sum.
        self._window: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._sums: dict[str, int] = collections.defaultdict(int)

    def replay(self, entry: dict) -> None:
        """Counts the outflow of a "signed" audit entry (called for each entry of the log at start)."""
        if entry.get("kind") != "signed":
            return
        data = entry["data"]
        if "outflow" in data:
            at_s, outflow = data["at_s"], {asset: int(amount) for asset, amount in data["outflow"].items()}
        else:  # written before outflows were logged: the same sum, from its destinations
            at_s, outflow = entry["at"], collections.defaultdict(int)
            for d in data.get("destinations", []):
                if not d["internal"]:
                    outflow[d["asset"]] += int(d["amount"])
        if at_s <= self._replay_since_s:
            return
        for asset, amount in outflow.items():
            self.record(asset, amount, at_s, data.get("payload_sha256", ""))

    def spent_since(self, asset: str, since_s: float) -> int:
        with self._lock:
            window = self._window[asset]
            while window and window[0][0] <= since_s:
                self._sums[asset] -= window.popleft()[1]
            return self._sums[asset]

    def record(self, asset: str, amount: int, at_s: float, payload_sha256: str) -> None:
        """In memory; the caller makes it durable in the "signed" audit entry (outflow, at_s)."""
        with self._lock:
            window = self._window[asset]
            if window and at_s < window[-1][0]:
                # Out of order (a clock stepped back): keep the deque sorted so expiry stays correct.
                items = sorted([*window, (at_s, amount)])
                window.clear()
                window.extend(items)
            else:
                window.append((at_s, amount))
            self._sums[asset] += amount

    def close(self) -> None:
        pass
