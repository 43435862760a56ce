"""Matching use cases: validate, queue to the one matching thread, read.

Requests that arrive together are matched in arrival order and committed in
one transaction (group commit, as the ledger writer does), so the fsync is
paid once per group while every fill is still its own ledger batch.
Nothing here knows about gRPC.
"""
from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from typing import Callable

from sqlalchemy import Engine, func, select

from custody.accounts.service import parse_account_id
from custody.config import Config, MarketConfig
from custody.db import schema as t
from custody.db.engine import read_transaction
from custody.errors import InvalidArgument, NotFound
from custody.events.journal import EventNotifier, check_cursor, item_digest, utc_iso
from custody.ledger.commands import Idempotency, parse_idempotency_key
from custody.ledger.model import parse_id
from custody.ledger.writer import settle
from custody.money import MAX_TOTAL, parse_amount
from matching_stub.amounts import PPM
from matching_stub.engine import (
    CancelRequest, Cancelled, MatchingEngine, PlaceRequest, Replay, order_view_from_row, trade_view_from_row,
)
from matching_stub.views import CancelledOrder, MarketDataItem, OrderView, Placed, TradeView

log = logging.getLogger(__name__)
SIDES = ("BUY", "SELL")
TYPES = ("LIMIT", "MARKET")
TIME_IN_FORCE = ("GTC", "IOC", "FOK")
MAX_DEPTH = 1000
DEFAULT_DEPTH = 50
MAX_PAGE = 1000
DEFAULT_PAGE = 100
_STOP = object()


class MatchingService:
    def __init__(self, config: Config, db: Engine, *, on_ledger_commit: Callable[[int], None] | None = None):
        self.config = config
        self.db = db
        self.engine = MatchingEngine(db, config.markets)
        self.max_group = config.server.max_group_commit
        self.market_data_notifier = EventNotifier()
        self._on_ledger_commit = on_ledger_commit
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="matching-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    # -- mutations -----------------------------------------------------------------------
    def submit_place(self, client: str, idempotency_key: str, account_id: str, market: str, side: str,
                     type: str, time_in_force: str, post_only: bool, price: str, quantity: str
                     ) -> concurrent.futures.Future:
        """Validates, then queues the order; the future gives a Placed."""
        request = self.parse_place(client, idempotency_key, account_id, market, side, type, time_in_force,
                                   post_only, price, quantity)
        return self._submit(request)

    def place(self, *args, **kwargs) -> Placed:
        return self.submit_place(*args, **kwargs).result()

    def submit_cancel(self, client: str, idempotency_key: str, order_id: str) -> concurrent.futures.Future:
        """Validates, then queues a cancel; the future gives a CancelledOrder (also when
        the order already was cancelled; replayed when the key was used for it before)."""
        key = parse_idempotency_key(idempotency_key)
        return self._submit(CancelRequest(client, key, parse_order_id(order_id)))

    def cancel(self, client: str, idempotency_key: str, order_id: str) -> CancelledOrder:
        return self.submit_cancel(client, idempotency_key, order_id).result()

    def parse_place(self, client, idempotency_key, account_id, market, side, type, time_in_force, post_only,
                    price, quantity) -> PlaceRequest:
        key = parse_idempotency_key(idempotency_key)
        account = parse_account_id(account_id)
        m = self.config.market(market)
        if side not in SIDES:
            raise InvalidArgument("side must be BUY or SELL")
        if type not in TYPES:
            raise InvalidArgument("type must be LIMIT or MARKET")
        if not time_in_force:
            time_in_force = "GTC" if type == "LIMIT" else "IOC"
        if time_in_force not in TIME_IN_FORCE:
            raise InvalidArgument("time_in_force must be GTC, IOC or FOK")
        if type == "MARKET" and time_in_force == "GTC":
            raise InvalidArgument("a market order cannot rest: time_in_force must be IOC or FOK")
        if post_only and (type != "LIMIT" or time_in_force != "GTC"):
            raise InvalidArgument("post_only needs a GTC limit order")
        price_value = parse_amount(price, "price")
        quantity_value = parse_amount(quantity, "quantity")
        check_units(m, price_value, quantity_value)
        fields = {"account": account, "market": m.name, "side": side, "type": type, "tif": time_in_force,
                  "post_only": bool(post_only), "price": price_value, "quantity": quantity_value}
        digest = Idempotency.for_request(client, key, "PlaceOrder", fields).request_hash
        return PlaceRequest(client, key, digest, account, m.name, side, type, time_in_force, bool(post_only),
                            price_value, quantity_value)

    def _submit(self, request) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((request, future))
        return future

    # -- reads ---------------------------------------------------------------------------------
    def get_order(self, order_id: str) -> OrderView:
        order_id = parse_order_id(order_id)
        o, h = t.orders, t.ledger_holds
        with read_transaction(self.db) as conn:
            row = conn.execute(
                select(o, h.c.remaining.label("hold_remaining"), h.c.status.label("hold_status"))
                .join(h, h.c.id == o.c.hold_id).where(o.c.id == order_id)
            ).first()
        if row is None:
            raise NotFound(f"order {order_id} does not exist")
        return order_view_from_row(row, row.hold_remaining if row.hold_status == "OPEN" else 0)

    def placed(self, order_id: str) -> Placed:
        """A PlaceOrder replay: the order as it is now and the trades it made as taker."""
        order = self.get_order(order_id)
        with read_transaction(self.db) as conn:
            rows = conn.execute(select(t.trades).where(t.trades.c.taker_order_id == order_id)
                                .order_by(t.trades.c.id)).all()
        return Placed(order, tuple(trade_view_from_row(r) for r in rows), replayed=True)

    def order_book(self, market: str, depth: int = 0) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
        """(bids, asks, cursor): the committed book's best levels and the market-data
        cursor it reflects; apply StreamMarketData after that cursor to keep it current."""
        m = self.config.market(market)
        if not 0 <= depth <= MAX_DEPTH:
            raise InvalidArgument(f"depth must be from 1 to {MAX_DEPTH} (0 for {DEFAULT_DEPTH})")
        return self.engine.order_book(m.name, depth or DEFAULT_DEPTH)

    def list_trades(self, market: str, after_trade_id: int = 0, limit: int = 0) -> list[TradeView]:
        m = self.config.market(market)
        if not 0 <= limit <= MAX_PAGE:
            raise InvalidArgument(f"limit must be from 1 to {MAX_PAGE} (0 for {DEFAULT_PAGE})")
        check_cursor(after_trade_id, "after_trade_id")
        tr = t.trades
        with read_transaction(self.db) as conn:
            rows = conn.execute(select(tr).where(tr.c.market == m.name, tr.c.id > after_trade_id)
                                .order_by(tr.c.id).limit(limit or DEFAULT_PAGE)).all()
        return [trade_view_from_row(r) for r in rows]

    def market_data_after(self, market: str | None, cursor: int, limit: int = 500) -> list[MarketDataItem]:
        """One market's items after cursor, or every market's (market None)."""
        check_cursor(cursor, "after_cursor")
        md = t.market_data
        query = select(md).where(md.c.cursor > cursor)
        if market is not None:
            query = query.where(md.c.market == self.config.market(market).name)
        with read_transaction(self.db) as conn:
            rows = conn.execute(query.order_by(md.c.cursor).limit(limit)).all()
        return [_market_data_item(r) for r in rows]

    def market_data_digest_at(self, cursor: int) -> str | None:
        """The digest of the item at cursor, whatever its market; None if there is none."""
        md = t.market_data
        with read_transaction(self.db) as conn:
            row = conn.execute(select(md).where(md.c.cursor == cursor)).first()
        return None if row is None else _market_data_item(row).digest

    def last_market_data_cursor(self) -> int:
        with read_transaction(self.db) as conn:
            return conn.execute(select(func.max(t.market_data.c.cursor))).scalar() or 0

    def markets(self) -> tuple[MarketConfig, ...]:
        return self.config.markets

    # -- the matching thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            group = [item]
            stop = False
            while len(group) < self.max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                group.append(item)
            self._run(group)
            if stop:
                return

    def _run(self, group: list) -> None:
        try:
            results, last_event, last_data = self.engine.run([request for request, _ in group])
        except Exception as exc:  # a database outage or a bug: fail the callers, keep the thread alive
            log.exception("matching group failed")
            results, last_event, last_data = [exc] * len(group), 0, 0
            try:
                self.engine.load()
            except Exception:
                log.exception("reloading the books failed")
        if last_event and self._on_ledger_commit:
            self._on_ledger_commit(last_event)
        if last_data:
            self.market_data_notifier.notify(last_data)
        for (_, future), result in zip(group, results):
            try:
                if isinstance(result, Replay):
                    result = self.placed(result.order_id)
                elif isinstance(result, Cancelled):
                    result = CancelledOrder(self.get_order(result.order_id), result.replayed)
            except Exception as exc:
                result = exc
            settle(future, result)  # a caller that stopped waiting must not stop this thread


def parse_order_id(text: str) -> str:
    return parse_id(text, "order_id")


def check_units(market: MarketConfig, price: int, quantity: int) -> None:
    """Price on the tick, quantity on the step and at least the minimum, value in range."""
    if price % market.price_tick:
        raise InvalidArgument(f"price {price} is not a multiple of the tick {market.price_tick} of {market.name}")
    if quantity % market.quantity_step:
        raise InvalidArgument(
            f"quantity {quantity} is not a multiple of the step {market.quantity_step} of {market.name}")
    if quantity < market.min_quantity:
        raise InvalidArgument(f"quantity {quantity} is below the minimum {market.min_quantity} of {market.name}")
    if quantity * price * PPM > MAX_TOTAL:
        raise InvalidArgument("quantity x price is too large for the ledger's exact totals")


def _market_data_item(row) -> MarketDataItem:
    return MarketDataItem(row.cursor, row.market, row.type, row.payload, row.created_at,
                          item_digest(row.cursor, row.market, row.type, row.payload, utc_iso(row.created_at)))
