"""Deposit use cases: issuing addresses and listing deposits."""
from __future__ import annotations

import json

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from chains.base import ChainPlugin
from custody.db import schema as t
from custody.db.engine import read_transaction, write_transaction
from custody.deposits import store
from custody.deposits.model import DEPOSIT_WALLET, ON_CHAIN, Deposit, confirmations
from custody.errors import FailedPrecondition, IdempotencyConflict, InvalidArgument, NotFound
from custody.jobs import locks
from custody.ledger.commands import Idempotency
from custody.text import parse_reason, parse_staff
from custody.paging import Page

# Two instances issuing addresses at once may pick the same index; the loser retries.
ISSUE_ATTEMPTS = 5


class ChainNotScannedYet(FailedPrecondition):
    """The chain's scanner has no cursor yet: an address handed out now would be paid in blocks
    below the height its scanner will start at, and never be read."""


def deposit_address(engine: Engine, plugin: ChainPlugin, chain: str, xpub: str, account_id: int,
                    new: bool = False, idempotency: Idempotency | None = None) -> str:
    """The account's current deposit address on chain; a new one if asked or if it has none.

    The address is stored (and so watched by the scanner) before it is
    returned, and never given to another account (FAILURE_MODES 23, 33).
    A new one asked for under an idempotency key is issued once: the key is
    stored with the address, in the same transaction, and a retry with it
    gets that address back. ChainNotScannedYet if the chain has no scan cursor
    yet."""
    if not new:  # the common case, without the issuing lock
        with read_transaction(engine) as conn:
            current = _current_address(conn, chain, account_id)
        if current is not None:
            return current
    for attempt in range(ISSUE_ATTEMPTS):
        try:
            with write_transaction(engine) as conn:
                _issuing_lock(conn, chain, DEPOSIT_WALLET)
                if conn.execute(select(t.accounts.c.id).where(t.accounts.c.id == account_id)).first() is None:
                    raise NotFound(f"account {account_id} does not exist")
                if not new:  # again, under the lock: two first calls at once got two "current" addresses
                    current = _current_address(conn, chain, account_id)
                    if current is not None:
                        return current
                if idempotency is not None and (issued := _issued_before(conn, idempotency)) is not None:
                    return issued
                address = _issue(conn, plugin, chain, DEPOSIT_WALLET, xpub, account_id).address
                if idempotency is not None:
                    conn.execute(t.idempotency_keys.insert().values(
                        scope=idempotency.scope, key=idempotency.key, request_hash=idempotency.request_hash,
                        result=json.dumps({"address": address}), created_at=store.now()))
                return address
        # SQLite has no lock to take; the two writers' indexes collided. Or one idempotency key
        # came on two chains at once (the lock is per chain): the retry finds it taken.
        except IntegrityError:
            if attempt == ISSUE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _issued_before(conn, idempotency: Idempotency) -> str | None:
    """The address a new-address request under this key issued; IdempotencyConflict if the key
    named another request (another account or chain, or another call such as a Transfer)."""
    k = t.idempotency_keys.c
    row = conn.execute(select(k.request_hash, k.result).where(k.scope == idempotency.scope,
                                                              k.key == idempotency.key)).first()
    if row is None:
        return None
    if row.request_hash != idempotency.request_hash:
        raise IdempotencyConflict(f"idempotency key {idempotency.key!r} was used for a different request")
    return json.loads(row.result)["address"]


def _current_address(conn, chain: str, account_id: int) -> str | None:
    a = t.chain_addresses.c
    return conn.execute(select(a.address).where(a.account_id == account_id, a.chain == chain,
                                                a.wallet == DEPOSIT_WALLET).order_by(a.id.desc()).limit(1)).scalar()


def _issuing_lock(conn, chain: str, wallet: str) -> None:
    """On PostgreSQL, one issuer of a chain's wallet addresses at a time, across instances: each
    picks the next index after the highest, and without it concurrent callers collided (most of
    16 at once failed), two instances starting together failed to start, and two first calls for
    one account got two addresses. SQLite's write lock (BEGIN IMMEDIATE) does this already."""
    locks.for_this_transaction(conn, f"address-issue:{chain}:{wallet}")


def ensure_wallet_addresses(engine: Engine, plugin: ChainPlugin, chain: str, wallet: str, xpub: str,
                            count: int) -> None:
    """Registers the first `count` receive addresses of a hot or cold wallet so
    the scanner tracks their outputs (UTXO set) without crediting anyone."""
    if not xpub or count <= 0:
        return
    with write_transaction(engine) as conn:
        _issuing_lock(conn, chain, wallet)
        have = conn.execute(select(func.count()).select_from(t.chain_addresses).where(
            t.chain_addresses.c.chain == chain, t.chain_addresses.c.wallet == wallet)).scalar_one()
        for _ in range(have, count):
            _issue(conn, plugin, chain, wallet, xpub, None)


def register_deposit_address(engine: Engine, plugin: ChainPlugin, chain: str, xpub: str, account_id: int,
                             index: int, created_height: int) -> str:
    """Registers the deposit address at `index` for an account, as created at
    `created_height`: for addresses handed out before the service knew them
    (a restore, a migration, an index far beyond the last one issued). A backfill
    from the next block is requested in the same transaction, so past payments are
    found (FAILURE_MODES 23); even if the cursor is below that height: a group of
    blocks the scanner is applying right now was read with the addresses watched
    before this one, and the backfill (which runs up to the cursor as it is at the
    scanner's next run) covers that group. Also before the scanner's first run: it
    starts at the node's tip, and the blocks from the creation height up to there
    were never scanned for the address (found by the deposits review)."""
    if index < 0 or created_height < 0:
        raise InvalidArgument("index and created_height must not be negative")
    derived = plugin.derive_address(xpub, index)
    with write_transaction(engine) as conn:
        _issuing_lock(conn, chain, DEPOSIT_WALLET)
        if conn.execute(select(t.accounts.c.id).where(t.accounts.c.id == account_id)).first() is None:
            raise NotFound(f"account {account_id} does not exist")
        taken = conn.execute(select(t.chain_addresses.c.account_id).where(
            t.chain_addresses.c.chain == chain, t.chain_addresses.c.address == derived.address)).first()
        if taken is not None:
            if taken.account_id != account_id:
                raise FailedPrecondition(f"{derived.address} belongs to another account")  # FAILURE_MODES 33
            return derived.address
        conn.execute(t.chain_addresses.insert().values(
            chain=chain, wallet=DEPOSIT_WALLET, branch=0, key_index=index, address=derived.address,
            watch_key=derived.watch_key, account_id=account_id, created_height=created_height,
            created_at=store.now()))
        store.request_backfill(conn, chain, created_height + 1,
                               f"address {derived.address} registered with creation height {created_height}")
    return derived.address


def request_rescan(engine: Engine, chain: str, from_height: int, reason: str) -> tuple[int, bool]:
    """Asks the chain's scanner to rescan from `from_height` up to its cursor
    (as it is when the scanner takes the request up) with every address it
    watches then. Past payments are recorded once (deposit keys); the cursor
    never moves back. Returns the request id, and False when an open request
    of the same chain and height, not started yet, is reused (an operator
    re-running the command while the node was down)."""
    if from_height < 0:
        raise InvalidArgument("from_height must not be negative")
    with write_transaction(engine) as conn:
        locks.for_this_transaction(conn, f"rescan-request:{chain}")  # two at once: the second sees the first
        # Only one nothing was done for yet: a request partly done read its blocks with the addresses
        # watched then, and a re-run (addresses added since) must read them again.
        reused = next((b["id"] for b in store.open_backfills(conn, chain)
                       if b["from_height"] == from_height and b["next_height"] == from_height), None)
        if reused is not None:
            return reused, False
        return store.request_backfill(conn, chain, from_height, reason), True


def cancel_rescan(engine: Engine, chain: str, backfill_id: int, staff: str, reason: str) -> None:
    """Ends an open rescan request (one the node cannot serve, a wrong height): the
    scanner no longer works on it; what it found already stays recorded."""
    staff, reason = parse_staff(staff), parse_reason(reason)
    with write_transaction(engine) as conn:
        row = conn.execute(select(t.scan_backfills).where(t.scan_backfills.c.id == backfill_id,
                                                          t.scan_backfills.c.chain == chain)).first()
        if row is None:
            raise NotFound(f"rescan {backfill_id} of chain {chain} does not exist")
        if not store.stop_backfill(conn, backfill_id, f"cancelled by {staff}: {reason}"):
            raise FailedPrecondition(f"rescan {backfill_id} has already ended: {row.stop_reason or 'finished'}")


def backfill_state(engine: Engine, backfill_id: int) -> dict:
    with read_transaction(engine) as conn:
        row = conn.execute(select(t.scan_backfills).where(t.scan_backfills.c.id == backfill_id)).first()
    if row is None:
        raise NotFound(f"rescan {backfill_id} does not exist")
    return dict(row._mapping)


def _issue(conn, plugin: ChainPlugin, chain: str, wallet: str, xpub: str, account_id: int | None):
    c = t.chain_addresses.c
    last = conn.execute(select(func.max(c.key_index)).where(c.chain == chain, c.wallet == wallet, c.branch == 0)
                        ).scalar()
    index = 0 if last is None else last + 1
    cursor = store.load_cursor(conn, chain)
    if cursor is None and wallet == DEPOSIT_WALLET:
        raise ChainNotScannedYet(f"{chain}: no deposit address is handed out before its scanner has started "
                                 "watching the chain")
    derived = plugin.derive_address(xpub, index)
    conn.execute(t.chain_addresses.insert().values(
        chain=chain, wallet=wallet, branch=0, key_index=index, address=derived.address, watch_key=derived.watch_key,
        account_id=account_id, created_height=cursor.height if cursor else None, created_at=store.now()))
    return derived


def list_deposits(engine: Engine, account_id: int, page: Page) -> tuple[list[Deposit], str]:
    """A page of the account's deposits, newest first, and the token for the next page."""
    d, a = t.deposits, t.chain_addresses
    with read_transaction(engine) as conn:
        if conn.execute(select(t.accounts.c.id).where(t.accounts.c.id == account_id)).first() is None:
            raise NotFound(f"account {account_id} does not exist")
        rows, token = page.read(conn, select(d, a.c.address).join(a, a.c.id == d.c.address_id)
                                .where(d.c.account_id == account_id), d.c.id, newest_first=True)
        views = {r.chain: r.height for r in conn.execute(select(t.scan_cursors.c.chain, t.scan_cursors.c.height))}
    return [Deposit(
        deposit_id=r.id, account_id=r.account_id, chain=r.chain, asset=r.asset, txid=r.txid, index=r.output_index,
        address=r.address, amount=r.amount,
        confirmations=confirmations(views.get(r.chain, 0), r.block_height) if r.status in ON_CHAIN else 0,
        status=r.status, block_height=r.block_height, block_hash=r.block_hash, coinbase=bool(r.coinbase),
        reason=r.reason)
        for r in rows], token
