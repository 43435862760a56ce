"""Creating and reading accounts and their balances."""
from __future__ import annotations

import dataclasses
import datetime
import re

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from custody.db import schema as t
from custody.db.engine import is_postgres, read_transaction, write_transaction
from custody.deposits.store import emit_events, pending_by_asset
from custody.errors import FailedPrecondition, InvalidArgument, NotFound
from custody.ledger.model import user_available, user_held

_EXTERNAL_ID = re.compile(r"[\x21-\x7e]{1,128}")
_ACCOUNT_ID = re.compile(r"[1-9][0-9]{0,17}")


@dataclasses.dataclass(frozen=True)
class Account:
    account_id: int
    external_id: str
    frozen: bool
    created: bool = False


@dataclasses.dataclass(frozen=True)
class Balance:
    asset: str
    available: int
    held: int
    pending: int


def parse_account_id(text: str, field: str = "account_id") -> int:
    if not text:
        raise InvalidArgument(f"{field} is required")
    if not _ACCOUNT_ID.fullmatch(text):
        raise InvalidArgument(f"{field} must be a positive decimal number: {text[:40]!r}")
    return int(text)


def create_account(engine: Engine, external_id: str) -> Account:
    """Creates the account, or returns the one that already has this external_id."""
    if not _EXTERNAL_ID.fullmatch(external_id or ""):
        raise InvalidArgument("external_id must be 1-128 printable ASCII characters without spaces")
    table = t.accounts
    dialect_insert = postgresql.insert if is_postgres(engine) else sqlite.insert
    with write_transaction(engine) as conn:
        inserted = conn.execute(
            dialect_insert(table)
            .values(external_id=external_id, created_at=datetime.datetime.now(datetime.timezone.utc), frozen=False)
            .on_conflict_do_nothing(index_elements=["external_id"])
            .returning(table.c.id)
        ).scalar()
        row = conn.execute(select(table).where(table.c.external_id == external_id)).one()
    return Account(row.id, row.external_id, bool(row.frozen), created=inserted is not None)


def get_account(engine: Engine, account_id: int) -> Account:
    with read_transaction(engine) as conn:
        row = conn.execute(select(t.accounts).where(t.accounts.c.id == account_id)).first()
    if row is None:
        raise NotFound(f"account {account_id} does not exist")
    return Account(row.id, row.external_id, bool(row.frozen))


def get_balances(engine: Engine, account_id: int, assets: list[str]) -> list[Balance]:
    """One balance per configured asset, zeros included, in the order given."""
    la = t.ledger_accounts
    with read_transaction(engine) as conn:
        if conn.execute(select(t.accounts.c.id).where(t.accounts.c.id == account_id)).first() is None:
            raise NotFound(f"account {account_id} does not exist")
        rows = conn.execute(
            select(la.c.code, la.c.asset, la.c.debits, la.c.credits).where(la.c.account_id == account_id)
        ).all()
        pending = pending_by_asset(conn, account_id)
    totals = {(r.code, r.asset): r.credits - r.debits for r in rows}
    available, held = user_available(account_id), user_held(account_id)
    return [
        Balance(asset, totals.get((available, asset), 0), totals.get((held, asset), 0), pending.get(asset, 0))
        for asset in assets
    ]


def set_frozen(engine: Engine, account_id: int, frozen: bool, staff: str, reason: str) -> tuple[Account, bool, int]:
    """Freezes or unfreezes the account; returns (the account now, whether it changed, the event
    cursor or 0). The same state again changes nothing. An account with a negative balance (a
    deposit reversed after its coins were spent) stays frozen until staff settle that balance:
    unfrozen, it would break the ledger's invariants (docs/ledger.md)."""
    table, la = t.accounts, t.ledger_accounts
    with write_transaction(engine) as conn:
        query = select(table).where(table.c.id == account_id)
        # FOR NO KEY UPDATE: it still serialises freezes, but not the foreign-key checks of a ledger
        # group inserting this account's hold while holding the event sequence row, which the freeze
        # then waits for: with FOR UPDATE the two deadlocked and PostgreSQL aborted one, usually the
        # freeze (found by the matching review).
        row = conn.execute(query.with_for_update(key_share=True) if is_postgres(engine) else query).first()
        if row is None:
            raise NotFound(f"account {account_id} does not exist")
        if bool(row.frozen) == frozen:
            return Account(row.id, row.external_id, frozen), False, 0
        if not frozen:
            negative = sorted(r.asset for r in conn.execute(
                select(la.c.asset, la.c.debits, la.c.credits).where(la.c.account_id == account_id))
                if r.credits < r.debits)
            if negative:
                raise FailedPrecondition(f"account {account_id} has a negative {', '.join(negative)} balance: "
                                         "settle it (AdjustBalance) before unfreezing")
        conn.execute(update(table).where(table.c.id == account_id)
                     .values(frozen=frozen, frozen_reason=reason if frozen else None))
        cursor = emit_events(conn, [("account.frozen" if frozen else "account.unfrozen",
                                     {"account_id": account_id, "actor": staff, "reason": reason})])
    return Account(row.id, row.external_id, frozen), True, cursor
