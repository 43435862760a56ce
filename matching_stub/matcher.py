"""Matching one order against a book, with in-memory fund checks: pure, no I/O.

`Matcher.place` decides everything an order does (what it holds, which
resting orders it fills at which price, which of the owner's own resting
orders it cancels, whether the rest rests or expires) and updates the book,
the orders and `funds` to match. It returns an `Outcome` that the engine turns
into ledger commands and rows; the engine commits both in one transaction and
rebuilds the book from the database if that transaction fails.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

from custody.config import MarketConfig
from custody.errors import FailedPrecondition, InsufficientFunds
from matching_stub import amounts
from matching_stub.book import BUY, CANCELLED, EXPIRED, FILLED, OPEN, PARTIALLY_FILLED, Book, Order

PPM = amounts.PPM


class Funds(Protocol):
    """Available balances as the ledger will have them once this group commits.

    `balances` is the {(account_id, asset): available} dict behind them: the
    matcher credits fills into it directly (a call per credit costs more than
    the credit, and there are three per fill)."""

    balances: dict[tuple[int, str], int]
    # The ids of the frozen accounts (few): their resting orders are cancelled, not filled.
    frozen: set[int]

    def take(self, account_id: int, asset: str, amount: int) -> None:
        """Reserves amount; raises InsufficientFunds (and changes nothing) if it is not there."""

    def give(self, account_id: int, asset: str, amount: int) -> None:
        """Credits amount (a release, a refund, the proceeds of a fill)."""


class DictFunds:
    """Funds in a dict: {(account_id, asset): available}; the accounts in `frozen` are frozen."""

    def __init__(self, balances: dict[tuple[int, str], int] | None = None, frozen: set[int] | None = None):
        self.balances = balances if balances is not None else {}
        self.frozen = frozen if frozen is not None else set()

    def available(self, account_id: int, asset: str) -> int:
        return self.balances.get((account_id, asset), 0)

    def take(self, account_id: int, asset: str, amount: int) -> None:
        key = (account_id, asset)
        have = self.balances.get(key, 0)
        if have < amount:
            raise InsufficientFunds(f"insufficient {asset} in user:{account_id}:available: short by {amount - have}")
        self.balances[key] = have - amount

    def give(self, account_id: int, asset: str, amount: int) -> None:
        balances = self.balances
        key = (account_id, asset)
        balances[key] = balances.get(key, 0) + amount


@dataclasses.dataclass(slots=True)
class Fill:
    """One trade. Quote amounts in quote base units; quantity in base units.

    The buyer's hold pays buyer_paid + buyer_fee (+ refund back to the buyer);
    the seller gets seller_gross - seller_fee; fees:revenue gets
    buyer_fee + seller_fee + rounding, where rounding = buyer_paid - seller_gross."""

    taker: Order
    maker: Order
    price: int
    quantity: int
    buyer_paid: int
    buyer_fee: int
    seller_gross: int
    seller_fee: int
    refund: int  # released from the buy order's hold because it is no longer needed

    @property
    def buy(self) -> Order:
        return self.taker if self.taker.side == BUY else self.maker

    @property
    def sell(self) -> Order:
        return self.maker if self.taker.side == BUY else self.taker

    @property
    def rounding(self) -> int:
        return self.buyer_paid - self.seller_gross


class Outcome:
    """What one order did. A plain class, not a dataclass: one is made per order
    and the generated __init__ with a default_factory costs more than this."""

    __slots__ = ("order", "held", "fills", "maker_cancels", "expired_release", "levels")

    def __init__(self, order: Order, held: int):
        self.order = order
        self.held = held  # what the order's new hold took (quote for a buy, base for a sell)
        self.fills: list[Fill] = []
        # Resting orders this order cancelled instead of filling, and what each released: the
        # owner's own (reason self_trade_prevention) and those of frozen accounts (account_frozen).
        self.maker_cancels: list[tuple[Order, int]] = []
        # What the order's own hold released when its rest expired (IOC, FOK, market); 0 if none.
        self.expired_release = 0
        # (side, price) of every level this order changed.
        self.levels: set[tuple[str, int]] = set()


class Matcher:
    def __init__(self, market: MarketConfig, book: Book, funds: Funds):
        self.market = market
        self.book = book
        self.funds = funds
        self.unit = market.price_unit
        self.fee_unit = market.price_unit * PPM
        self.held_fee_ppm = amounts.held_fee_ppm(market)
        self.maker_ppm, self.taker_ppm = market.maker_fee_ppm, market.taker_fee_ppm
        self.base, self.quote = market.base, market.quote

    def place(self, order: Order) -> Outcome:
        """Holds, matches and rests or expires the order. Raises FailedPrecondition
        (post-only would match) or InsufficientFunds with nothing changed."""
        book = self.book
        buying = order.side == BUY
        opposite = book.asks if buying else book.bids
        best = opposite.best()
        crosses = best is not None and (order.price >= best.price if buying else order.price <= best.price)
        if order.post_only and crosses:
            raise FailedPrecondition(
                f"post-only order would match the resting order at {best.price}; nothing was placed")
        held_ppm = order.held_fee_ppm
        if held_ppm is None:  # a new order: its hold is sized at the market's current higher rate, kept on it
            held_ppm = order.held_fee_ppm = self.held_fee_ppm
        if buying:  # amounts.buy_hold, inlined: this runs for every order
            value = order.quantity * order.price
            asset, amount = self.quote, -(-value // self.unit) + -(-(value * held_ppm) // self.fee_unit)
        else:
            asset, amount = self.base, order.quantity
        self.funds.take(order.account_id, asset, amount)  # the only check that may still refuse it
        order.hold_remaining = amount
        outcome = Outcome(order, amount)
        if order.time_in_force == "FOK" and not self._fillable(order, opposite):
            self._expire(order, outcome, "fill_or_kill")
            return outcome
        if crosses:
            self._match(order, opposite, outcome)
        if order.remaining == 0:
            order.status = FILLED
        elif order.time_in_force == "GTC":
            order.status = PARTIALLY_FILLED if order.filled else OPEN
            (book.bids if buying else book.asks).add(order)  # book.rest, inlined
            book.orders[order.id] = order
            outcome.levels.add((order.side, order.price))
        else:
            self._expire(order, outcome, "immediate_or_cancel" if order.time_in_force == "IOC" else "fill_or_kill")
        return outcome

    def cancel(self, order: Order, reason: str = "cancelled") -> int:
        """Cancels a resting order; returns what its hold released."""
        self.book.cancel(order)
        order.status, order.reason = CANCELLED, reason
        return self._release(order)

    # -- internals ------------------------------------------------------------------
    def _fillable(self, order: Order, opposite) -> bool:
        """Whether other owners' resting orders can fill all of it (own ones and those of
        frozen accounts would be cancelled, not filled)."""
        need = order.quantity
        buying = order.side == BUY
        frozen = self.funds.frozen
        for level in opposite:
            if (level.price > order.price) if buying else (level.price < order.price):
                return False
            for resting in level.orders.values():
                if resting.account_id != order.account_id and resting.account_id not in frozen:
                    need -= resting.remaining
                    if need <= 0:
                        return True
        return False

    def _match(self, taker: Order, opposite, outcome: Outcome) -> None:
        buying = taker.side == BUY
        resting_by_id = self.book.orders
        fills, levels = outcome.fills, outcome.levels
        settle = self._settle
        frozen = self.funds.frozen
        while taker.remaining:
            level = opposite.best()
            if level is None or ((level.price > taker.price) if buying else (level.price < taker.price)):
                return
            price = level.price
            levels.add((opposite.side, price))
            orders = level.orders
            while taker.remaining and orders:
                maker = next(iter(orders.values()))
                if maker.account_id == taker.account_id:
                    # Self-trade prevention: the resting order goes, the new one goes on.
                    self._cancel_maker(maker, "self_trade_prevention", outcome)
                    continue
                if maker.account_id in frozen:
                    # A frozen account's resting order never trades: it goes, the new one goes on.
                    self._cancel_maker(maker, "account_frozen", outcome)
                    continue
                quantity = taker.remaining if taker.remaining < maker.remaining else maker.remaining
                fills.append(settle(taker, maker, quantity, price))
                opposite.reduce(maker, quantity)  # drops the maker (and its level) once it is filled
                taker.remaining -= quantity
                if maker.remaining:
                    maker.status = PARTIALLY_FILLED
                else:
                    maker.status = FILLED
                    del resting_by_id[maker.id]

    def _settle(self, taker: Order, maker: Order, quantity: int, price: int) -> Fill:
        """The amounts of one fill (see amounts.py); updates both orders and the funds.

        This runs once per fill, so amounts.buy_still_needed and
        amounts.charged_fee_ppm are inlined and the funds dict is updated in
        place rather than through calls. The buy's hold is re-sized at its own
        held_fee_ppm, and its fee rate is capped there: a rate raised since it
        was placed never makes it need more than it holds."""
        if taker.side == BUY:
            buy, sell, buy_ppm, sell_ppm = taker, maker, self.taker_ppm, self.maker_ppm
        else:
            buy, sell, buy_ppm, sell_ppm = maker, taker, self.maker_ppm, self.taker_ppm
        held_ppm = buy.held_fee_ppm
        if buy_ppm > held_ppm:
            buy_ppm = held_ppm
        value = quantity * price
        unit, fee_unit = self.unit, self.fee_unit

        fill_value = buy.fill_value + value
        paid = -(-fill_value // unit)
        buyer_paid = paid - buy.quote_filled
        fee_value = buy.fee_value + value * buy_ppm
        fee = -(-fee_value // fee_unit)
        buyer_fee = fee - buy.fee
        rest = (buy.remaining - quantity) * buy.price  # remaining is reduced by the caller after this
        # With nothing left to buy both ceilings below equal paid and fee: skip the divisions.
        still_needed = (-(-(fill_value + rest) // unit) - paid
                        + -(-(fee_value + rest * held_ppm) // fee_unit) - fee) if rest else 0
        refund = buy.hold_remaining - buyer_paid - buyer_fee - still_needed
        buy.fill_value, buy.quote_filled, buy.fee_value, buy.fee = fill_value, paid, fee_value, fee
        buy.filled += quantity
        buy.hold_remaining = still_needed

        seller_gross = value // unit
        seller_fee = -(-(value * sell_ppm) // fee_unit)
        if seller_fee > seller_gross:
            seller_fee = seller_gross
        # A sell's fill_value and fee_value stay 0: its proceeds and fee are worked out per fill, and
        # summed at the bids' prices (not its own) they could outgrow the 78-digit columns.
        sell.quote_filled += seller_gross
        sell.fee += seller_fee
        sell.filled += quantity
        sell.hold_remaining -= quantity
        assert refund >= 0 and 0 <= buyer_paid - seller_gross <= 1, (buy, sell, quantity, price)

        balances = self.funds.balances
        key = (buy.account_id, self.base)
        balances[key] = balances.get(key, 0) + quantity
        if refund:
            key = (buy.account_id, self.quote)
            balances[key] = balances.get(key, 0) + refund
        if seller_gross > seller_fee:
            key = (sell.account_id, self.quote)
            balances[key] = balances.get(key, 0) + seller_gross - seller_fee
        return Fill(taker, maker, price, quantity, buyer_paid, buyer_fee, seller_gross, seller_fee, refund)

    def _cancel_maker(self, maker: Order, reason: str, outcome: Outcome) -> None:
        self.book.cancel(maker)
        maker.status, maker.reason = CANCELLED, reason
        outcome.maker_cancels.append((maker, self._release(maker)))

    def _expire(self, order: Order, outcome: Outcome, reason: str) -> None:
        order.status, order.reason = EXPIRED, reason
        outcome.expired_release = self._release(order)

    def _release(self, order: Order) -> int:
        released = order.hold_remaining
        if released:
            asset = self.market.quote if order.side == BUY else self.market.base
            self.funds.give(order.account_id, asset, released)
            order.hold_remaining = 0
        return released
