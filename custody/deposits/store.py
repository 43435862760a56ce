"""Database reads and writes for addresses, deposits, the UTXO set and scan cursors.

Every function takes the caller's connection: the caller owns the transaction
(one unit of work), nothing here commits.
"""
from __future__ import annotations

import dataclasses
import datetime
import json

from sqlalchemy import Connection, delete, insert, select, update

from custody.db import schema as t
from custody.db.bulk import in_values
from custody.deposits.model import ON_CHAIN, PENDING


class CursorMoved(Exception):
    """Another scanner moved the cursor since this one read it; nothing was written."""


@dataclasses.dataclass(frozen=True)
class Cursor:
    height: int
    hash: str


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# -- cursor ---------------------------------------------------------------------------------------
def load_cursor(conn: Connection, chain: str, for_update: bool = False) -> Cursor | None:
    q = select(t.scan_cursors).where(t.scan_cursors.c.chain == chain)
    if for_update and conn.dialect.name == "postgresql":
        q = q.with_for_update()
    row = conn.execute(q).first()
    return Cursor(row.height, row.hash) if row else None


def cursor_stamp(conn: Connection, chain: str) -> datetime.datetime | None:
    """When the cursor row was last written (by any instance's scanner)."""
    return conn.execute(select(t.scan_cursors.c.updated_at).where(t.scan_cursors.c.chain == chain)).scalar()


def stamp_cursor(conn: Connection, chain: str) -> datetime.datetime:
    """Marks the cursor row as written now (by this transaction); returns the stamp as stored."""
    conn.execute(update(t.scan_cursors).where(t.scan_cursors.c.chain == chain).values(updated_at=now()))
    return cursor_stamp(conn, chain)


def create_cursor(conn: Connection, chain: str, cursor: Cursor) -> None:
    conn.execute(insert(t.scan_cursors).values(chain=chain, height=cursor.height, hash=cursor.hash, updated_at=now()))


def move_cursor(conn: Connection, chain: str, expected: Cursor, new: Cursor) -> None:
    """Compare-and-set: moves the cursor only if it is still where the caller read it."""
    moved = conn.execute(
        update(t.scan_cursors)
        .where(t.scan_cursors.c.chain == chain, t.scan_cursors.c.height == expected.height,
               t.scan_cursors.c.hash == expected.hash)
        .values(height=new.height, hash=new.hash)  # updated_at: stamp_cursor, once per transaction
    ).rowcount
    if moved != 1:
        raise CursorMoved(f"the {chain} scan cursor is no longer at {expected.height} {expected.hash}")


def record_blocks(conn: Connection, chain: str, blocks: list[tuple[int, str, str]], depth: int) -> None:
    """Stores (height, hash, parent hash) of applied blocks; keeps the newest
    `depth` and the one below them, the fork point of a reorg `depth` deep,
    and forgets the rest, which no reorg we unwind can reach."""
    conn.execute(insert(t.scanned_blocks), [
        {"chain": chain, "height": h, "hash": bh, "parent_hash": parent} for h, bh, parent in blocks])
    newest = blocks[-1][0]
    conn.execute(delete(t.scanned_blocks).where(t.scanned_blocks.c.chain == chain,
                                                t.scanned_blocks.c.height < newest - depth))


def recent_blocks(conn: Connection, chain: str, limit: int) -> list[tuple[int, str]]:
    """(height, hash) of applied blocks, newest first."""
    rows = conn.execute(select(t.scanned_blocks.c.height, t.scanned_blocks.c.hash)
                        .where(t.scanned_blocks.c.chain == chain)
                        .order_by(t.scanned_blocks.c.height.desc()).limit(limit)).all()
    return [(r.height, r.hash) for r in rows]


def remembered_hash(conn: Connection, chain: str, height: int) -> str | None:
    """The hash of the applied block at height, if it is still remembered."""
    b = t.scanned_blocks.c
    return conn.execute(select(b.hash).where(b.chain == chain, b.height == height)).scalar()


# -- watched addresses and outpoints -------------------------------------------------------------
def addresses_after(conn: Connection, chain: str, after_id: int) -> list[tuple[int, bytes]]:
    rows = conn.execute(select(t.chain_addresses.c.id, t.chain_addresses.c.watch_key)
                        .where(t.chain_addresses.c.chain == chain, t.chain_addresses.c.id > after_id)
                        .order_by(t.chain_addresses.c.id))
    return [(r.id, bytes(r.watch_key)) for r in rows]


def addresses_by_id(conn: Connection, chain: str, ids) -> list[tuple[int, bytes, int | None]]:
    """(id, watch key, created height) of those ids that exist now."""
    rows = conn.execute(select(t.chain_addresses.c.id, t.chain_addresses.c.watch_key,
                               t.chain_addresses.c.created_height)
                        .where(t.chain_addresses.c.chain == chain, in_values(conn, t.chain_addresses.c.id, ids)))
    return [(r.id, bytes(r.watch_key), r.created_height) for r in rows]


def address_rows(conn: Connection, ids) -> dict[int, dict]:
    rows = conn.execute(select(t.chain_addresses).where(in_values(conn, t.chain_addresses.c.id, set(ids))))
    return {r.id: dict(r._mapping) for r in rows}


def unspent_outpoints_at(conn: Connection, chain: str, height: int) -> set[tuple[str, int]]:
    """Our outputs unspent as of a block height: what unwind_utxos(height) would leave."""
    u = t.utxos.c
    rows = conn.execute(select(u.txid, u.output_index).where(
        u.chain == chain, u.block_height <= height, u.spent_txid.is_(None) | (u.spent_height > height)))
    return {(r.txid, r.output_index) for r in rows}


def unspent_outpoints(conn: Connection, chain: str) -> set[tuple[str, int]]:
    rows = conn.execute(select(t.utxos.c.txid, t.utxos.c.output_index)
                        .where(t.utxos.c.chain == chain, t.utxos.c.spent_txid.is_(None)))
    return {(r.txid, r.output_index) for r in rows}


# -- deposits ------------------------------------------------------------------------------------
def deposits_by_key(conn: Connection, chain: str, keys: list[tuple[str, int]]) -> dict[tuple[str, int], dict]:
    if not keys:
        return {}
    txids = {txid for txid, _ in keys}
    rows = conn.execute(select(t.deposits).where(t.deposits.c.chain == chain, in_values(conn, t.deposits.c.txid, txids)))
    wanted = set(keys)
    return {(r.txid, r.output_index): dict(r._mapping) for r in rows if (r.txid, r.output_index) in wanted}


def pending_deposits(conn: Connection, chain: str) -> list[dict]:
    rows = conn.execute(select(t.deposits).where(t.deposits.c.chain == chain, t.deposits.c.status == PENDING)
                        .order_by(t.deposits.c.block_height, t.deposits.c.id))
    return [dict(r._mapping) for r in rows]


def deposits_above(conn: Connection, chain: str, height: int) -> list[dict]:
    """Deposits in blocks above height that are on the chain (a reorg drops them):
    PENDING, CREDITED, and those outside policy."""
    rows = conn.execute(select(t.deposits).where(
        t.deposits.c.chain == chain, t.deposits.c.block_height > height,
        t.deposits.c.status.in_(ON_CHAIN)).order_by(t.deposits.c.id))
    return [dict(r._mapping) for r in rows]


def set_deposit(conn: Connection, deposit_id: int, **values) -> None:
    conn.execute(update(t.deposits).where(t.deposits.c.id == deposit_id).values(updated_at=now(), **values))


def insert_deposit(conn: Connection, **values) -> int:
    stamp = now()
    return conn.execute(insert(t.deposits).values(created_at=stamp, updated_at=stamp, **values)
                        .returning(t.deposits.c.id)).scalar_one()


# -- backfills (rescans of past blocks) -------------------------------------------------------------
def request_backfill(conn: Connection, chain: str, from_height: int, reason: str) -> int:
    return conn.execute(insert(t.scan_backfills).values(
        chain=chain, from_height=from_height, next_height=from_height, reason=reason[:200], created_at=now())
        .returning(t.scan_backfills.c.id)).scalar_one()


def open_backfills(conn: Connection, chain: str) -> list[dict]:
    rows = conn.execute(select(t.scan_backfills).where(t.scan_backfills.c.chain == chain,
                                                       t.scan_backfills.c.finished_at.is_(None))
                        .order_by(t.scan_backfills.c.id))
    return [dict(r._mapping) for r in rows]


def set_backfill(conn: Connection, backfill_id: int, **values) -> bool:
    """Updates an open request; False if it has ended meanwhile (cancelled by staff)."""
    b = t.scan_backfills.c
    return conn.execute(update(t.scan_backfills).where(b.id == backfill_id, b.finished_at.is_(None))
                        .values(**values)).rowcount == 1


def stop_backfill(conn: Connection, backfill_id: int, reason: str) -> bool:
    """Ends an open request before it caught up, with why; False if it had ended already."""
    return set_backfill(conn, backfill_id, finished_at=now(), stop_reason=reason[:200])


def known_utxos(conn: Connection, chain: str, keys: list[tuple[str, int]]) -> set[tuple[str, int]]:
    if not keys:
        return set()
    rows = conn.execute(select(t.utxos.c.txid, t.utxos.c.output_index).where(
        t.utxos.c.chain == chain, in_values(conn, t.utxos.c.txid, {txid for txid, _ in keys})))
    return {(r.txid, r.output_index) for r in rows} & set(keys)


# -- the UTXO set ------------------------------------------------------------------------------------
def add_utxos(conn: Connection, rows: list[dict]) -> None:
    if rows:
        conn.execute(insert(t.utxos), rows)


def spend_utxos(conn: Connection, chain: str, spends: list[tuple[str, int, str, int]]) -> None:
    """spends: (spent txid, spent index, spending txid, height)."""
    for spent_txid, spent_index, txid, height in spends:
        conn.execute(update(t.utxos).where(t.utxos.c.chain == chain, t.utxos.c.txid == spent_txid,
                                           t.utxos.c.output_index == spent_index)
                     .values(spent_txid=txid, spent_height=height))


def unwind_utxos(conn: Connection, chain: str, fork_height: int) -> None:
    """Forgets outputs created and spends made above the fork."""
    conn.execute(delete(t.utxos).where(t.utxos.c.chain == chain, t.utxos.c.block_height > fork_height))
    conn.execute(update(t.utxos).where(t.utxos.c.chain == chain, t.utxos.c.spent_height > fork_height)
                 .values(spent_txid=None, spent_height=None))
    conn.execute(delete(t.scanned_blocks).where(t.scanned_blocks.c.chain == chain,
                                                t.scanned_blocks.c.height > fork_height))


# -- accounts and events -------------------------------------------------------------------------------
def freeze_account(conn: Connection, account_id: int, reason: str) -> None:
    conn.execute(update(t.accounts).where(t.accounts.c.id == account_id)
                 .values(frozen=True, frozen_reason=reason))


def emit_events(conn: Connection, events: list[tuple[str, dict]]) -> int | None:
    """Appends events after any the ledger wrote in this transaction; returns the last cursor."""
    if not events:
        return None
    n = len(events)
    last = conn.execute(
        update(t.event_sequence).where(t.event_sequence.c.id == 1)
        .values(last_cursor=t.event_sequence.c.last_cursor + n)
        .returning(t.event_sequence.c.last_cursor)
    ).scalar_one()
    stamp = now()
    conn.execute(insert(t.events), [
        {"cursor": last - n + 1 + i, "type": kind, "payload": json.dumps(payload, separators=(",", ":")),
         "created_at": stamp}
        for i, (kind, payload) in enumerate(events)])
    return last


def pending_by_asset(conn: Connection, account_id: int) -> dict[str, int]:
    rows = conn.execute(select(t.deposits.c.asset, t.deposits.c.amount)
                        .where(t.deposits.c.account_id == account_id, t.deposits.c.status == PENDING))
    totals: dict[str, int] = {}
    for r in rows:
        totals[r.asset] = totals.get(r.asset, 0) + r.amount
    return totals


__all__ = [name for name in dir() if not name.startswith("_") and name not in ("and_", "func")]
