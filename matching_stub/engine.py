"""The books, settled through the ledger, and rebuilt from the database.

`MatchingEngine.run` takes a group of requests (place or cancel) and handles
them in one database transaction: each is matched in memory in turn (so each
sees the book and the balances the ones before it left), and everything they
did is written together at the end: their ledger commands (one batch per new
order's hold, per fill, per release) through `apply_commands`, and the order,
trade and market-data rows. Match and settlement commit together or not at all.

The in-memory fund checks are a forecast of the ledger's own: the ledger
re-checks every command in the same transaction. If the two ever disagree
(a transfer committed by another writer between our read and our write), or
the transaction fails, nothing is committed, the books are rebuilt from the
database and each request is retried on its own.

One engine at a time writes to a database (matching_stub is a stub of a
single matching process): each group first checks that the database's
matching epoch is still the one this engine took; if not (another engine
wrote since, or this one never wrote), it takes the next epoch and reloads
the books inside the same transaction before matching. So an engine that
only starts (every core process makes one, the scanner's too) changes
nothing, two writing engines never match from stale books, and a book read
from an engine that is not the writer fails with EngineReplaced.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import threading

import orjson

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.exc import DBAPIError

from custody.config import MarketConfig
from custody.db import schema as t
from custody.db.bulk import in_pairs, in_values
from custody.db.engine import read_transaction, write_transaction
from custody.errors import AccountFrozen, CustodyError, FailedPrecondition, IdempotencyConflict, NotFound
from custody.ledger.commands import BatchResult, Command, HoldCreate, HoldPost, HoldVoid
from custody.ledger.engine import AccountIds, apply_commands
from custody.ledger.model import FEES_REVENUE, new_id, user_available
from matching_stub import amounts, rows
from matching_stub.book import BUY, LIVE, Book, Order
from matching_stub.matcher import DictFunds, Fill, Matcher
from matching_stub.views import OrderView, Placed, TradeView

log = logging.getLogger(__name__)
SWEEP_ACTOR = "matching"  # the ledger actor of the cancels of frozen accounts' orders


@dataclasses.dataclass(frozen=True, slots=True)
class PlaceRequest:
    """A validated PlaceOrder (see service.py). price and quantity in market units."""

    client: str
    client_key: str
    request_hash: str
    account_id: int
    market: str
    side: str
    type: str
    time_in_force: str
    post_only: bool
    price: int
    quantity: int


@dataclasses.dataclass(frozen=True, slots=True)
class CancelRequest:
    client: str
    client_key: str
    order_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class Cancelled:
    """CancelOrder succeeded (now or before; replayed: under a key already used for
    this order): the service reads the order."""

    order_id: str
    replayed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Replay:
    """PlaceOrder with a key already used for the same request: the service reads that order."""

    order_id: str


class EngineReplaced(FailedPrecondition):
    """Another engine has matched on this database since this one loaded its books: they are stale."""


class RecoveryError(Exception):
    """The database's open orders and their ledger holds disagree: matching refuses to start."""


class _Rejected(Exception):
    """The ledger refused a command the in-memory checks accepted."""

    def __init__(self, request_index: int, error: CustodyError):
        super().__init__(str(error))
        self.request_index = request_index
        self.error = error


def _frozen_since(error: CustodyError, request) -> bool:
    """The ledger refused a request for another account frozen since its group began (a resting
    order's owner): the request itself is fine."""
    return (isinstance(error, AccountFrozen) and error.account_id is not None
            and error.account_id != getattr(request, "account_id", None))


class MatchingEngine:
    """Books for every configured market. Not thread-safe: one thread calls run()."""

    def __init__(self, db: Engine, markets: tuple[MarketConfig, ...]):
        self.db = db
        self.markets = {m.name: m for m in markets}
        self.ids = AccountIds()
        self._published_lock = threading.Lock()
        self.epoch: int | None = None  # the matching epoch this engine took; None until it first writes
        self.load()

    def _own_epoch(self, conn: Connection) -> bool:
        """First statement of every group. Checks the epoch is still this engine's; if not,
        takes the next one and reloads the books in this transaction; returns whether it
        took over. On PostgreSQL the epoch row stays locked until commit, so another
        engine's take-over waits for this group and then loads what it wrote."""
        me = t.matching_engine
        if self.epoch is not None and conn.execute(
                update(me).where(me.c.id == 1, me.c.epoch == self.epoch).values(epoch=self.epoch)).rowcount == 1:
            return False
        self.epoch = conn.execute(update(me).where(me.c.id == 1).values(epoch=me.c.epoch + 1)
                                  .returning(me.c.epoch)).scalar_one()
        self.load(conn)
        self._store_held_fee_rates(conn)
        return True

    def _store_held_fee_rates(self, conn: Connection) -> None:
        """Stores on the open orders written before migration 0014 (held_fee_ppm NULL) the
        rate load() found their holds sized with (the market's current higher rate), so that
        the market's rates may be changed while they rest, as for every newer order."""
        by_rate: dict[int, list[str]] = {}
        for order in self.unrecorded_fee_rates:
            by_rate.setdefault(order.held_fee_ppm, []).append(order.id)
        o = t.orders
        for rate, ids in by_rate.items():
            conn.execute(update(o).where(in_values(conn, o.c.id, ids), o.c.held_fee_ppm.is_(None))
                         .values(held_fee_ppm=rate))
        self.unrecorded_fee_rates = []

    # -- recovery -------------------------------------------------------------------
    def load(self, conn: Connection | None = None) -> None:
        """Rebuilds every book from the database (in conn's transaction, or a read
        transaction of its own): open orders in time priority, each with its
        settlement state and its hold's remaining amount. Open orders are found by a
        sequential read of the orders table: status has no index, so that fills
        update orders in place (migration 0011)."""
        if conn is None:
            with read_transaction(self.db) as own:
                return self.load(own)
        # Frozen accounts whose resting orders were cancelled: none are known in a fresh
        # load, so the next group looks again (one indexed query, and only if any is frozen).
        self.frozen_swept: set[int] = set()
        # Open orders written before migration 0014, given the market's current rate (see below).
        self.unrecorded_fee_rates: list[Order] = []
        self.books = {name: Book(name) for name in self.markets}
        self.matchers = {name: Matcher(m, self.books[name], DictFunds()) for name, m in self.markets.items()}
        o, h = t.orders, t.ledger_holds
        rows = conn.execute(
            select(o, h.c.remaining.label("hold_remaining"), h.c.status.label("hold_status"))
            .join(h, h.c.id == o.c.hold_id)
            .where(o.c.status.in_(sorted(LIVE)))
            .order_by(o.c.market, o.c.sequence)
        ).all()
        self.next_sequence = {name: 1 for name in self.markets}
        for market, top in conn.execute(select(o.c.market, func.max(o.c.sequence)).group_by(o.c.market)):
            self.next_sequence[market] = top + 1
        self.next_trade_id = (conn.execute(select(func.max(t.trades.c.id))).scalar() or 0) + 1
        self.next_cursor = (conn.execute(select(func.max(t.market_data.c.cursor))).scalar() or 0) + 1
        self.loaded_epoch = conn.execute(select(t.matching_engine.c.epoch)).scalar_one()
        for r in rows:
            if r.market not in self.books:
                raise RecoveryError(f"open order {r.id} is in market {r.market}, which is not configured: put the "
                                    "market back in [[markets]], cancel its open orders, then remove it")
            order = _order_from_row(r)
            if order.held_fee_ppm is None:
                # Written before migration 0014, which stored no rate: sized with the market's
                # current higher rate unless the rates were changed while it rested (then the
                # check below fails, as it did before: put the old rates back to start).
                order.held_fee_ppm = amounts.held_fee_ppm(self.markets[r.market])
                self.unrecorded_fee_rates.append(order)
            order.hold_remaining = r.hold_remaining if r.hold_status == "OPEN" else 0
            expected = self._still_held(order)
            if order.hold_remaining != expected:
                raise RecoveryError(f"open order {order.id} should hold {expected} but its hold {order.hold_id} "
                                    f"holds {order.hold_remaining}: was market {r.market}'s price_unit (or, for "
                                    "an order from before migration 0014, its fees) changed while orders rest? "
                                    "put it back, cancel its open orders, then change it")
            self.books[r.market].rest(order)
        with self._published_lock:
            self.published = {name: _levels(book) for name, book in self.books.items()}
            self.published_cursor = self.next_cursor - 1

    def _still_held(self, order: Order) -> int:
        market = self.markets[order.market]
        if order.side != BUY:
            return order.remaining
        return amounts.buy_still_needed(market, order.fill_value, order.fee_value, order.quote_filled, order.fee,
                                        order.remaining, order.price, order.held_fee_ppm)

    # -- the committed view, for readers on other threads ------------------------
    def order_book(self, market: str, depth: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
        """(bids best first, asks best first, market-data cursor) as last committed.
        Raises EngineReplaced when another engine has matched since this one loaded."""
        self._check_current()
        with self._published_lock:
            levels, cursor = self.published[market], self.published_cursor
            bids = sorted(levels["BUY"].items(), reverse=True)[:depth]
            asks = sorted(levels["SELL"].items())[:depth]
        return bids, asks, cursor

    def _check_current(self) -> None:
        """This engine's committed book is the database's if it holds the epoch (it
        writes), or, never having written, if no engine has taken over or matched
        since it loaded (same epoch, no market data after its cursor)."""
        me, md = t.matching_engine, t.market_data
        with read_transaction(self.db) as conn:
            epoch = conn.execute(select(me.c.epoch)).scalar_one()
            if self.epoch is not None:
                current = epoch == self.epoch
            else:
                current = (epoch == self.loaded_epoch
                           and (conn.execute(select(func.max(md.c.cursor))).scalar() or 0) == self.published_cursor)
        if not current:
            raise EngineReplaced("another instance is matching on this database: this instance's book is stale; "
                                 "ask the instance that matches (one matching engine per database)")

    # -- writing ------------------------------------------------------------------------
    def run(self, requests: list) -> tuple[list, int, int]:
        """Handles the requests; returns (one result or CustodyError each, last ledger
        event cursor, last market-data cursor), both 0 when nothing was written."""
        try:
            return self._commit(requests)
        except (_Rejected, DBAPIError) as exc:  # nothing was committed and the books are back (see _commit)
            if len(requests) == 1:
                if isinstance(exc, _Rejected) and exc.request_index >= 0:  # not the frozen sweep's
                    if _frozen_since(exc.error, requests[0]):
                        try:  # once more, in a new group: it sweeps that account's orders first
                            return self._commit(requests)
                        except _Rejected as again:
                            return [again.error], 0, 0
                    return [exc.error], 0, 0
                raise
            log.warning("matching group of %d failed (%s); retrying one by one", len(requests), exc)
        results, last_event, last_data = [], 0, 0
        for request in requests:
            try:
                (result,), event, data = self.run([request])
            except DBAPIError as exc:
                result, event, data = exc, 0, 0
            results.append(result)
            last_event, last_data = max(last_event, event), max(last_data, data)
        return results, last_event, last_data

    def _commit(self, requests: list) -> tuple[list, int, int]:
        group = None
        took_over = False
        try:
            with write_transaction(self.db) as conn:
                took_over = self._own_epoch(conn)
                group = _Group(self, conn)
                results = group.handle_all(requests)
                last_event = group.flush()
        except BaseException:
            self.ids.rollback()
            if took_over or group is None:
                self.epoch = None  # the epoch taken (if any) was rolled back: take it again next time
            if took_over or (group is not None and group.changed_anything):
                # The books moved with the group that did not commit: back to what did.
                try:
                    self.load()
                except Exception:
                    # The database may be what failed, and the books still hold the lost
                    # group. Giving up the epoch makes the next group take it again, which
                    # reloads the books in that group's own transaction before it matches.
                    self.epoch = None
                    log.warning("matching engine could not reload its books; the next group will", exc_info=True)
            raise
        self.ids.commit()
        self.frozen_swept = group.frozen_swept
        self._publish(group)
        return group.finish(results), last_event, group.last_cursor

    def _publish(self, group: "_Group") -> None:
        with self._published_lock:
            for market, side, price in group.touched:
                total = self.books[market].side(side).total_at(price)
                levels = self.published[market][side]
                if total:
                    levels[price] = total
                else:
                    levels.pop(price, None)
            if group.last_cursor:
                self.published_cursor = group.last_cursor


class _Group:
    """One transaction's worth of requests."""

    def __init__(self, engine: MatchingEngine, conn: Connection):
        self.engine = engine
        self.conn = conn
        self.now = datetime.datetime.now(datetime.timezone.utc)
        self.funds = _LedgerFunds(conn)
        self.commands: list[Command] = []
        self.command_owner: list[int] = []  # request index of each command
        self.fills: list[tuple[int, int, str, Fill]] = []  # (command index, trade id, market, fill)
        self.trade_rows: list[tuple] = []  # in rows.TRADE_COLUMNS order, once the ledger gave batch ids
        self.new_orders: dict[str, Order] = {}
        self.changed_orders: dict[str, Order] = {}
        self.market_data: list[tuple] = []  # in rows.MARKET_DATA_COLUMNS order
        self.touched: set[tuple[str, str, int]] = set()
        self.keys: dict[tuple[str, str], tuple[str, str]] = {}  # (client, key) -> (request hash, order id)
        self.cancel_keys: dict[tuple[str, str], str] = {}  # CancelOrder's (client, key) -> order id
        self.new_cancel_keys: list[tuple] = []  # rows for order_cancels
        self.owners: dict[int, bool] = {}  # placing account id -> frozen
        self.frozen_swept: set[int] = set()  # becomes the engine's when this group commits
        self.last_cursor = 0
        self.changed_anything = False
        self._index = 0

    def handle_all(self, requests: list) -> list:
        self.funds.load_frozen()
        self._preload([r for r in requests if isinstance(r, PlaceRequest)])
        self._preload_cancel_keys([r for r in requests if isinstance(r, CancelRequest)])
        for matcher in self.engine.matchers.values():
            matcher.funds = self.funds
        self._sweep_frozen()
        results = []
        for i, request in enumerate(requests):
            self._index = i
            try:
                if isinstance(request, PlaceRequest):
                    results.append(self._place(request))
                else:
                    results.append(self._cancel(request))
            except CustodyError as exc:
                results.append(exc)
        return results

    def _sweep_frozen(self) -> None:
        """Cancels the resting orders of accounts frozen since the last group (reason
        account_frozen), before any request of this group is matched: their orders never
        trade, and the book and market data should not show liquidity that cannot trade.
        (The matcher also cancels any it still meets; see Matcher._match.)"""
        engine, frozen = self.engine, self.funds.frozen
        self.frozen_swept = set(frozen)  # an account unfrozen since is dropped: a new freeze sweeps again
        new = frozen - engine.frozen_swept
        if not new:
            return
        o = t.orders
        found = self.conn.execute(select(o.c.id, o.c.market).where(
            in_values(self.conn, o.c.account_id, new), o.c.status.in_(sorted(LIVE)))).all()
        self._index = -1  # no request's: a ledger refusal fails the whole group
        for r in found:
            order = engine.books[r.market].orders.get(r.id) if r.market in engine.books else None
            if order is None:
                continue
            self.changed_anything = True
            released = engine.matchers[r.market].cancel(order, "account_frozen")
            self._release(SWEEP_ACTOR, order, released, "order_cancel")
            self._book_changed(r.market, {(order.side, order.price)})

    def _preload(self, places: list[PlaceRequest]) -> None:
        if not places:
            return
        o = t.orders
        for r in self.conn.execute(
            select(o.c.client, o.c.client_key, o.c.request_hash, o.c.id)
            .where(in_pairs(self.conn, o.c.client, o.c.client_key, {(p.client, p.client_key) for p in places}))
        ):
            self.keys[(r.client, r.client_key)] = (r.request_hash, r.id)
        accounts = {p.account_id for p in places}
        for r in self.conn.execute(select(t.accounts.c.id, t.accounts.c.frozen).where(t.accounts.c.id.in_(accounts))):
            self.owners[r.id] = bool(r.frozen)
        markets = self.engine.markets
        self.funds.load({(a, asset) for p in places if p.account_id in self.owners
                         for a, asset in ((p.account_id, markets[p.market].base), (p.account_id, markets[p.market].quote))})

    def _preload_cancel_keys(self, cancels: list[CancelRequest]) -> None:
        if not cancels:
            return
        c = t.order_cancels
        for r in self.conn.execute(
            select(c.c.client, c.c.client_key, c.c.order_id)
            .where(in_pairs(self.conn, c.c.client, c.c.client_key, {(r.client, r.client_key) for r in cancels}))
        ):
            self.cancel_keys[(r.client, r.client_key)] = r.order_id

    # -- place ------------------------------------------------------------------------
    def _place(self, r: PlaceRequest) -> Placed | Replay:
        seen = self.keys.get((r.client, r.client_key))
        if seen is not None:
            if seen[0] != r.request_hash:
                raise IdempotencyConflict(f"idempotency key {r.client_key!r} was used for a different request")
            return Replay(seen[1])
        if r.account_id not in self.owners:
            raise NotFound(f"account {r.account_id} does not exist")
        if self.owners[r.account_id]:
            raise AccountFrozen(f"account {r.account_id} is frozen")
        engine = self.engine
        market = engine.markets[r.market]
        order = Order(new_id(), r.account_id, r.market, r.side, r.price, r.quantity, type=r.type,
                      time_in_force=r.time_in_force, post_only=r.post_only,
                      sequence=engine.next_sequence[r.market], hold_id=new_id(), client=r.client,
                      client_key=r.client_key, request_hash=r.request_hash, created_at=self.now)
        outcome = engine.matchers[r.market].place(order)  # raises with nothing changed
        self.changed_anything = True
        engine.next_sequence[r.market] += 1
        self.keys[(r.client, r.client_key)] = (r.request_hash, order.id)
        self.new_orders[order.id] = order
        asset = market.quote if r.side == BUY else market.base
        self._command(Command(kind="order", actor=r.client, reference=f"order:{order.id}", not_frozen=(r.account_id,),
                              hold_creates=(HoldCreate(r.account_id, asset, outcome.held,
                                                       reference=f"order:{order.id}", hold_id=order.hold_id),)))
        first_fill = len(self.fills)
        for f in outcome.fills:
            self._fill(r.client, market, f)
        for maker, released in outcome.maker_cancels:
            self._release(r.client, maker, released, "order_cancel")
        if outcome.expired_release:
            self._release(r.client, order, outcome.expired_release, "order_expire")
        self._book_changed(r.market, outcome.levels)
        return _Pending(OrderView.of(order), first_fill, len(self.fills))  # as this request left it

    def _fill(self, client: str, market: MarketConfig, f: Fill) -> None:
        """One fill: its ledger command (one batch), its trade (written in flush) and its market-data item."""
        buy, sell = f.buy, f.sell
        engine = self.engine
        trade_id = engine.next_trade_id
        engine.next_trade_id += 1
        buyer = user_available(buy.account_id)
        # The buy hold's legs; zero amounts are left out (the ledger refuses them).
        legs = []
        if f.seller_gross > f.seller_fee:
            legs.append((user_available(sell.account_id), f.seller_gross - f.seller_fee))
        fees = f.buyer_fee + f.seller_fee + f.buyer_paid - f.seller_gross
        if fees:
            legs.append((FEES_REVENUE, fees))
        if f.refund:
            legs.append((buyer, f.refund))
        sell_post = HoldPost(sell.hold_id, ((buyer, f.quantity),))
        posts = (HoldPost(buy.hold_id, tuple(legs)), sell_post) if legs else (sell_post,)
        # The maker's account as not frozen: the group read frozen accounts when it began, and a
        # freeze committed since must still stop the resting order (the ledger checks it under the
        # event sequence row's lock; run() then plays the request again, after the sweep).
        self._command(Command(kind="trade", actor=client, reference=f"trade:{trade_id}", hold_posts=posts,
                              not_frozen=(f.maker.account_id,)))
        self.changed_orders[f.maker.id] = f.maker
        self.fills.append((len(self.commands) - 1, trade_id, market.name, f))
        self._data(market.name, "trade", {
            "trade_id": trade_id, "price": str(f.price), "quantity": str(f.quantity), "taker_side": f.taker.side,
            "maker_order_id": f.maker.id, "taker_order_id": f.taker.id})

    # -- cancel -------------------------------------------------------------------------
    def _cancel(self, r: CancelRequest) -> Cancelled:
        key = (r.client, r.client_key)
        seen = self.cancel_keys.get(key)
        if seen is not None:
            if seen != r.order_id:
                raise IdempotencyConflict(f"idempotency key {r.client_key!r} was used to cancel another order")
            return Cancelled(r.order_id, replayed=True)
        result = self._cancel_order(r)  # raises, using up no key, if the order cannot be cancelled
        self.cancel_keys[key] = r.order_id
        self.new_cancel_keys.append((r.client, r.client_key, r.order_id, self.now))
        return result

    def _cancel_order(self, r: CancelRequest) -> Cancelled:
        for name, book in self.engine.books.items():
            order = book.orders.get(r.order_id)
            if order is not None:
                break
        else:
            # Placed or changed earlier in this group (the database does not show it yet).
            seen = self.new_orders.get(r.order_id) or self.changed_orders.get(r.order_id)
            if seen is not None:
                return self._not_cancellable(r.order_id, seen.status)
            row = self.conn.execute(select(t.orders.c.status).where(t.orders.c.id == r.order_id)).first()
            if row is None:
                raise NotFound(f"order {r.order_id} does not exist")
            return self._not_cancellable(r.order_id, row.status)
        self.changed_anything = True
        released = self.engine.matchers[name].cancel(order)
        self._release(r.client, order, released, "order_cancel")
        self._book_changed(name, {(order.side, order.price)})
        return Cancelled(r.order_id)

    def _not_cancellable(self, order_id: str, status: str) -> Cancelled:
        if status == "CANCELLED":
            return Cancelled(order_id)  # cancelling twice is not an error: the order is cancelled
        raise FailedPrecondition(f"order is {status} and can no longer be cancelled")

    # -- rows and commands ----------------------------------------------------------------
    def _release(self, client: str, order: Order, released: int, kind: str) -> None:
        if released:
            self._command(Command(kind=kind, actor=client, reference=f"order:{order.id}",
                                  hold_voids=(HoldVoid(order.hold_id),)))
        if order.id not in self.new_orders:
            self.changed_orders[order.id] = order

    def _command(self, command: Command) -> None:
        self.commands.append(command)
        self.command_owner.append(self._index)

    def _book_changed(self, market: str, levels: set[tuple[str, int]]) -> None:
        if not levels:
            return
        book = self.engine.books[market]
        changes = {"BUY": [], "SELL": []}
        for side, price in sorted(levels):
            changes[side].append([str(price), str(book.side(side).total_at(price))])
            self.touched.add((market, side, price))
        self._data(market, "book", {"bids": changes["BUY"], "asks": changes["SELL"]})

    def _data(self, market: str, type_: str, payload: dict) -> None:
        cursor = self.engine.next_cursor
        self.engine.next_cursor += 1
        self.market_data.append((cursor, market, type_, orjson.dumps(payload).decode(), self.now))
        self.last_cursor = cursor

    def flush(self) -> int:
        """Writes the group; returns the last ledger event cursor (0 if none)."""
        if not self.commands and not self.changed_orders:
            rows.insert_cancel_keys(self.conn, self.new_cancel_keys)  # cancels of cancelled orders only
            return 0
        results = apply_commands(self.conn, self.commands, self.engine.ids)
        for i, result in enumerate(results):
            if not isinstance(result, BatchResult):
                raise _Rejected(self.command_owner[i], result)
        now = self.now
        self.trade_rows = [
            (trade_id, market, f.price, f.quantity, f.taker.id, f.maker.id, f.taker.side, f.buy.account_id,
             f.sell.account_id, f.buyer_paid, f.buyer_fee, f.seller_gross, f.seller_fee, f.rounding,
             results[index].batch_id, now)
            for index, trade_id, market, f in self.fills]
        conn = self.conn
        rows.insert_orders(conn, list(self.new_orders.values()), now)
        rows.update_orders(conn, [o for oid, o in self.changed_orders.items() if oid not in self.new_orders], now)
        rows.insert_trades(conn, self.trade_rows)
        rows.insert_cancel_keys(conn, self.new_cancel_keys)
        rows.insert_market_data(conn, self.market_data)
        return max((r.event_cursor for r in results), default=0)

    def finish(self, results: list) -> list:
        """Results with the batch ids the ledger gave the trades."""
        return [Placed(r.order, tuple(TradeView(*row) for row in self.trade_rows[r.first_fill:r.end_fill]))
                if isinstance(r, _Pending) else r for r in results]


@dataclasses.dataclass(slots=True)
class _Pending:
    order: OrderView
    first_fill: int  # its fills are the group's fills[first_fill:end_fill]
    end_fill: int


class _LedgerFunds(DictFunds):
    """Available balances read from the ledger in this transaction, plus what the group changed."""

    def __init__(self, conn: Connection):
        super().__init__()
        self.conn = conn
        self.loaded: set[tuple[int, str]] = set()

    def load(self, keys: set[tuple[int, str]]) -> None:
        keys = keys - self.loaded
        if not keys:
            return
        la = t.ledger_accounts
        stored = {(r.account_id, r.asset): r.credits - r.debits for r in self.conn.execute(
            select(la.c.account_id, la.c.asset, la.c.debits, la.c.credits)
            .where(in_pairs(self.conn, la.c.asset, la.c.code, [(asset, user_available(a)) for a, asset in keys])))}
        for key in keys:
            self.balances[key] = stored.get(key, 0) + self.balances.get(key, 0)
        self.loaded |= keys

    def take(self, account_id: int, asset: str, amount: int) -> None:
        if (account_id, asset) not in self.loaded:
            self.load({(account_id, asset)})
        super().take(account_id, asset, amount)

    def load_frozen(self) -> None:
        """Once per group, through a partial index of the (few) frozen accounts: a resting
        order's owner may have been frozen since it was placed, by another writer."""
        self.frozen = set(self.conn.execute(select(t.accounts.c.id).where(t.accounts.c.frozen)).scalars())


def _levels(book: Book) -> dict[str, dict[int, int]]:
    return {"BUY": {lv.price: lv.total for lv in book.bids}, "SELL": {lv.price: lv.total for lv in book.asks}}


def _order_from_row(r) -> Order:
    order = Order(r.id, r.account_id, r.market, r.side, r.price, r.quantity, type=r.type,
                  time_in_force=r.time_in_force, post_only=bool(r.post_only), sequence=r.sequence, hold_id=r.hold_id,
                  client=r.client, client_key=r.client_key, request_hash=r.request_hash, created_at=r.created_at,
                  held_fee_ppm=r.held_fee_ppm)
    order.remaining = r.quantity - r.filled_quantity
    order.filled = r.filled_quantity
    order.status, order.reason = r.status, r.reason
    order.fill_value, order.fee_value, order.quote_filled, order.fee = r.fill_value, r.fee_value, r.quote_filled, r.fee
    return order


def order_view_from_row(r, held: int) -> OrderView:
    return OrderView(r.id, r.account_id, r.market, r.side, r.type, r.time_in_force, bool(r.post_only), r.price,
                     r.quantity, r.filled_quantity, r.status, r.reason, r.quote_filled, r.fee, held, r.sequence,
                     r.created_at)


def trade_view_from_row(r) -> TradeView:
    return TradeView(r.id, r.market, r.price, r.quantity, r.taker_order_id, r.maker_order_id, r.taker_side,
                     r.buyer_account_id, r.seller_account_id, r.buyer_paid, r.buyer_fee, r.seller_gross,
                     r.seller_fee, r.rounding, r.batch_id, r.created_at)
