"""The matching engine's own rows (orders, trades, market data), written in bulk.

A group commit writes thousands of these next to the ledger's batches. Built
as SQLAlchemy executemany parameter dicts they cost about as much as the
ledger's own writes (SQLAlchemy processes every parameter of every row), so
rows are tuples here: inserts go through custody.db.bulk.insert_rows (COPY on
PostgreSQL), and order updates through one UPDATE ... FROM unnest(arrays) on
PostgreSQL or the driver's executemany on SQLite. SQLAlchemy has no bulk
UPDATE that skips its per-row parameter processing, hence the hand-written SQL.
"""
from __future__ import annotations

import datetime

from sqlalchemy import Connection

from custody.db import schema as t
from custody.db.bulk import array_literal, insert_rows
from matching_stub.book import Order

ORDER_COLUMNS = (
    "id", "market", "account_id", "side", "type", "time_in_force", "post_only", "price", "quantity",
    "filled_quantity", "status", "reason", "fill_value", "fee_value", "quote_filled", "fee", "held_fee_ppm",
    "hold_id", "sequence", "client", "client_key", "request_hash", "created_at", "updated_at",
)
TRADE_COLUMNS = (
    "id", "market", "price", "quantity", "taker_order_id", "maker_order_id", "taker_side", "buyer_account_id",
    "seller_account_id", "buyer_paid", "buyer_fee", "seller_gross", "seller_fee", "rounding", "batch_id",
    "created_at",
)
MARKET_DATA_COLUMNS = ("cursor", "market", "type", "payload", "created_at")
CANCEL_KEY_COLUMNS = ("client", "client_key", "order_id", "created_at")


def insert_orders(conn: Connection, orders: list[Order], now: datetime.datetime) -> None:
    insert_rows(conn, t.orders, ORDER_COLUMNS, [
        (o.id, o.market, o.account_id, o.side, o.type, o.time_in_force, o.post_only, o.price, o.quantity,
         o.filled, o.status, o.reason, o.fill_value, o.fee_value, o.quote_filled, o.fee, o.held_fee_ppm, o.hold_id,
         o.sequence, o.client, o.client_key, o.request_hash, o.created_at, now)
        for o in orders])


def insert_trades(conn: Connection, rows: list[tuple]) -> None:
    """rows: tuples in TRADE_COLUMNS order."""
    insert_rows(conn, t.trades, TRADE_COLUMNS, rows)


def insert_cancel_keys(conn: Connection, rows: list[tuple]) -> None:
    """rows: tuples in CANCEL_KEY_COLUMNS order."""
    insert_rows(conn, t.order_cancels, CANCEL_KEY_COLUMNS, rows)


def insert_market_data(conn: Connection, rows: list[tuple]) -> None:
    """rows: tuples in MARKET_DATA_COLUMNS order."""
    insert_rows(conn, t.market_data, MARKET_DATA_COLUMNS, rows)


# (column, Order attribute) of what a fill or cancel changes, as update_orders writes them.
_UPDATED = (("id", "id"), ("filled_quantity", "filled"), ("status", "status"), ("reason", "reason"),
            ("fill_value", "fill_value"), ("fee_value", "fee_value"), ("quote_filled", "quote_filled"), ("fee", "fee"))


def update_orders(conn: Connection, orders: list[Order], now: datetime.datetime) -> None:
    """Writes each order's fill and settlement state and status."""
    if not orders:
        return
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "UPDATE orders AS o SET filled_quantity = v.filled_quantity, status = v.status, reason = v.reason, "
            "fill_value = v.fill_value, fee_value = v.fee_value, quote_filled = v.quote_filled, fee = v.fee, "
            "updated_at = %(now)s "
            "FROM unnest(%(id)s::text[], %(filled_quantity)s::numeric[], %(status)s::text[], %(reason)s::text[], "
            "%(fill_value)s::numeric[], %(fee_value)s::numeric[], %(quote_filled)s::numeric[], %(fee)s::numeric[]) "
            "AS v(id, filled_quantity, status, reason, fill_value, fee_value, quote_filled, fee) "
            "WHERE o.id = v.id",
            {"now": now, **{name: array_literal(getattr(o, attr) for o in orders) for name, attr in _UPDATED}},
        )
        return
    # SQLite: amounts are decimal text (custody/db/types.py); the timestamp as SQLAlchemy would bind it.
    stamp = t.orders.c.updated_at.type._cached_bind_processor(conn.dialect)(now)
    conn.exec_driver_sql(
        "UPDATE orders SET filled_quantity = ?, status = ?, reason = ?, fill_value = ?, fee_value = ?, "
        "quote_filled = ?, fee = ?, updated_at = ? WHERE id = ?",
        [(str(o.filled), o.status, o.reason, str(o.fill_value), str(o.fee_value), str(o.quote_filled), str(o.fee),
          stamp, o.id) for o in orders],
    )
