"""A price-time order book in memory: no database, no ledger, no I/O.

Prices and quantities are ints exactly as on the wire: a price is quote base
units per the market's price_unit of base, a quantity is base units (both
already checked to be multiples of the tick and step). Each price level keeps
its orders in arrival order (an OrderedDict: O(1) append, O(1) removal of any
order by id, O(1) access to the oldest), so a cancel never scans a level.
"""
from __future__ import annotations

import bisect
from collections import OrderedDict

BUY = "BUY"
SELL = "SELL"
OPEN = "OPEN"
PARTIALLY_FILLED = "PARTIALLY_FILLED"
FILLED = "FILLED"
CANCELLED = "CANCELLED"
EXPIRED = "EXPIRED"
LIVE = frozenset({OPEN, PARTIALLY_FILLED})


class Order:
    """One order and what it has settled so far.

    The settlement fields (all ints) are kept here because the next fill's
    rounding depends on them (docs/matching.md, "Rounding"):
      fill_value    a buy's sum of quantity x price over its fills (quote base units x price_unit)
      fee_value     a buy's sum of quantity x price x fee ppm over its fills (both 0 for a sell)
      quote_filled  quote base units paid (a buy, before fees) or received (a sell, before fees)
      fee           quote base units charged as fees
      held_fee_ppm  the fee rate its hold was sized with (the market's higher rate when it was
                    placed; None until Matcher.place sets it). A buy's hold, and the most
                    any of its fills is charged, follow this rate, not the market's current one
                    (a sell records it too; its hold and fees do not depend on it).
      hold_remaining  what its ledger hold still holds (quote for a buy, base for a sell);
                      the hold is open exactly while this is above zero."""

    __slots__ = ("id", "account_id", "market", "side", "type", "time_in_force", "post_only", "price", "quantity",
                 "remaining", "sequence", "status", "reason", "filled", "fill_value", "fee_value", "quote_filled",
                 "fee", "held_fee_ppm", "hold_id", "hold_remaining", "client", "client_key", "request_hash", "created_at")

    def __init__(self, id, account_id, market, side, price, quantity, *, type="LIMIT", time_in_force="GTC",
                 post_only=False, sequence=0, hold_id=None, client=None, client_key=None, request_hash=None,
                 created_at=None, held_fee_ppm=None):
        self.id = id
        self.account_id = account_id
        self.market = market
        self.side = side
        self.type = type
        self.time_in_force = time_in_force
        self.post_only = post_only
        self.price = price
        self.quantity = quantity
        self.remaining = quantity
        self.sequence = sequence
        self.status = OPEN
        self.reason = None
        self.filled = 0
        self.fill_value = 0
        self.fee_value = 0
        self.quote_filled = 0
        self.fee = 0
        self.held_fee_ppm = held_fee_ppm
        self.hold_id = hold_id
        self.hold_remaining = 0
        self.client = client
        self.client_key = client_key
        self.request_hash = request_hash
        self.created_at = created_at

    def __repr__(self) -> str:
        return (f"Order({self.id!r}, account={self.account_id}, {self.side} {self.remaining}/{self.quantity} "
                f"@ {self.price}, {self.status})")


class Level:
    __slots__ = ("price", "orders", "total")

    def __init__(self, price: int):
        self.price = price
        self.orders: OrderedDict[str, Order] = OrderedDict()
        self.total = 0  # sum of the orders' remaining quantities


class BookSide:
    """One side's price levels. `_keys` is sorted so that the best level is last
    (bids by price, asks by minus price): taking or dropping the best is O(1)."""

    def __init__(self, side: str):
        self.side = side
        self._sign = 1 if side == BUY else -1
        self.levels: dict[int, Level] = {}
        self._keys: list[int] = []

    def best(self) -> Level | None:
        return self.levels[self._keys[-1] * self._sign] if self._keys else None

    def add(self, order: Order) -> None:
        level = self.levels.get(order.price)
        if level is None:
            level = self.levels[order.price] = Level(order.price)
            bisect.insort(self._keys, order.price * self._sign)
        level.orders[order.id] = order
        level.total += order.remaining

    def reduce(self, order: Order, quantity: int) -> None:
        """Takes quantity off a resting order; drops it (and an empty level) at zero."""
        level = self.levels[order.price]
        order.remaining -= quantity
        level.total -= quantity
        if order.remaining == 0:
            del level.orders[order.id]
            if not level.orders:
                self._drop(level)

    def remove(self, order: Order) -> None:
        level = self.levels[order.price]
        del level.orders[order.id]
        level.total -= order.remaining
        if not level.orders:
            self._drop(level)

    def _drop(self, level: Level) -> None:
        del self.levels[level.price]
        key = level.price * self._sign
        if self._keys[-1] == key:
            self._keys.pop()
        else:
            del self._keys[bisect.bisect_left(self._keys, key)]

    def depth(self, n: int) -> list[tuple[int, int]]:
        """The best n levels as (price, total quantity), best first."""
        return [(k * self._sign, self.levels[k * self._sign].total) for k in reversed(self._keys[-n:])] if n else []

    def total_at(self, price: int) -> int:
        level = self.levels.get(price)
        return level.total if level else 0

    def __iter__(self):
        """Levels from the best outwards."""
        for k in reversed(self._keys):
            yield self.levels[k * self._sign]


class Book:
    def __init__(self, market: str):
        self.market = market
        self.bids = BookSide(BUY)
        self.asks = BookSide(SELL)
        self.orders: dict[str, Order] = {}  # resting orders by id

    def side(self, side: str) -> BookSide:
        return self.bids if side == BUY else self.asks

    def opposite(self, side: str) -> BookSide:
        return self.asks if side == BUY else self.bids

    def rest(self, order: Order) -> None:
        self.side(order.side).add(order)
        self.orders[order.id] = order

    def take(self, order: Order, quantity: int) -> None:
        self.side(order.side).reduce(order, quantity)
        if order.remaining == 0:
            del self.orders[order.id]

    def cancel(self, order: Order) -> None:
        self.side(order.side).remove(order)
        del self.orders[order.id]

    def snapshot(self) -> tuple[list[tuple[int, int, tuple[str, ...]]], list[tuple[int, int, tuple[str, ...]]]]:
        """Every level of both sides, best first, with each level's orders' ids in time order."""
        return ([(lv.price, lv.total, tuple(lv.orders)) for lv in self.bids],
                [(lv.price, lv.total, tuple(lv.orders)) for lv in self.asks])
