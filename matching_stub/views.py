"""Read-only snapshots of orders and trades, as the service returns them."""
from __future__ import annotations

import dataclasses
import datetime


@dataclasses.dataclass(frozen=True, slots=True)
class OrderView:
    order_id: str
    account_id: int
    market: str
    side: str
    type: str
    time_in_force: str
    post_only: bool
    price: int
    quantity: int
    filled_quantity: int
    status: str
    reason: str | None
    quote_filled: int
    fee: int
    held: int  # what the order's ledger hold still holds (quote for a buy, base for a sell)
    sequence: int
    created_at: datetime.datetime

    @staticmethod
    def of(order) -> "OrderView":
        return OrderView(order.id, order.account_id, order.market, order.side, order.type, order.time_in_force,
                         order.post_only, order.price, order.quantity, order.filled, order.status, order.reason,
                         order.quote_filled, order.fee, order.hold_remaining, order.sequence, order.created_at)


@dataclasses.dataclass(frozen=True, slots=True)
class TradeView:
    trade_id: int
    market: str
    price: int
    quantity: int
    taker_order_id: str
    maker_order_id: str
    taker_side: str
    buyer_account_id: int
    seller_account_id: int
    buyer_paid: int
    buyer_fee: int
    seller_gross: int
    seller_fee: int
    rounding: int
    batch_id: str
    created_at: datetime.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Placed:
    """The answer to PlaceOrder: the order and the trades it made as taker."""

    order: OrderView
    trades: tuple[TradeView, ...]
    replayed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class CancelledOrder:
    """The answer to CancelOrder: the order as it is now."""

    order: OrderView
    replayed: bool = False  # the idempotency key had been used to cancel this order before


@dataclasses.dataclass(frozen=True, slots=True)
class MarketDataItem:
    cursor: int
    market: str
    type: str  # "trade" or "book"
    payload: str  # JSON (see docs/matching.md)
    created_at: datetime.datetime
    digest: str  # names the item in this journal (custody.events.journal.item_digest)
