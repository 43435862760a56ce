"""Withdrawal rows, their history and their state changes, in the caller's transaction.

`move` is the one way a withdrawal changes state: compare-and-set on the
current status, a history row (who, when, why), an event on the journal, and
for REJECTED / CANCELLED / FAILED the release of the hold, all in the
caller's transaction.
"""
from __future__ import annotations

import datetime

from sqlalchemy import Connection, insert, select, update

from custody.db import schema as t
from custody.deposits.store import emit_events
from custody.errors import CustodyError, FailedPrecondition, NotFound
from custody.ledger.commands import SERVICE_SCOPE, Command, HoldPost, HoldVoid, Idempotency
from custody.ledger.engine import AccountIds, apply_commands
from custody.ledger.model import Posting
from custody.withdrawals import model

SCOPE = SERVICE_SCOPE  # idempotency scope of the ledger commands withdrawals issue themselves
# The key a spend of our coins by someone else is booked under once staff settle it (resolve.py),
# followed by the spender's txid; invariant 4 reads it (custody/reconciliation/wallets.py).
FOREIGN_SPEND_KEY = "foreign-spend:"


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def load(conn: Connection, withdrawal_id: str, for_update: bool = False) -> dict:
    q = select(t.withdrawals).where(t.withdrawals.c.id == withdrawal_id)
    if for_update and conn.dialect.name == "postgresql":
        q = q.with_for_update()
    row = conn.execute(q).first()
    if row is None:
        raise NotFound(f"withdrawal {withdrawal_id[:40]!r} does not exist")
    return dict(row._mapping)


def history(conn: Connection, withdrawal_id: str) -> list[dict]:
    h = t.withdrawal_history
    return [dict(r._mapping) for r in conn.execute(
        select(h).where(h.c.withdrawal_id == withdrawal_id).order_by(h.c.id))]


def histories_of(conn: Connection, withdrawal_ids: list[str]) -> dict[str, list[dict]]:
    """withdrawal id -> its history, for each of withdrawal_ids (a page of a list), in one query."""
    h = t.withdrawal_history
    out: dict[str, list[dict]] = {}
    if not withdrawal_ids:
        return out
    for r in conn.execute(select(h).where(h.c.withdrawal_id.in_(withdrawal_ids)).order_by(h.c.id)):
        out.setdefault(r.withdrawal_id, []).append(dict(r._mapping))
    return out


def record(conn: Connection, w: dict, from_status: str | None, actor: str, reason: str | None) -> tuple[str, dict]:
    conn.execute(insert(t.withdrawal_history).values(
        withdrawal_id=w["id"], from_status=from_status, to_status=w["status"], actor=actor, reason=reason,
        created_at=now()))
    return (f"withdrawal.{w['status'].lower()}", {
        "withdrawal_id": w["id"], "account_id": w["account_id"], "asset": w["asset"], "amount": str(w["amount"]),
        "fee": str(w["fee"]), "to_address": w["to_address"], "status": w["status"], "from_status": from_status,
        "actor": actor, "reason": reason, "txid": w.get("txid")})


def move(conn: Connection, ids: AccountIds, w: dict, new: str, actor: str, reason: str | None = None,
         **values) -> tuple[dict, int | None]:
    """Changes w's state (w as read in this transaction); returns (updated w, last event cursor)."""
    current = w["status"]
    model.check_transition(current, new)
    changed = conn.execute(
        update(t.withdrawals).where(t.withdrawals.c.id == w["id"], t.withdrawals.c.status == current)
        .values(status=new, updated_at=now(), **({"reason": reason} if reason else {}), **values)).rowcount
    if changed != 1:
        raise FailedPrecondition(f"withdrawal {w['id']} changed state concurrently")
    w = {**w, "status": new, **values, **({"reason": reason} if reason else {})}
    if new in model.VOIDING:
        apply_command(conn, ids, Command(kind="withdrawal_release", actor=actor, hold_voids=(HoldVoid(w["hold_id"]),),
                                   idempotency=Idempotency(SCOPE, f"release:{w['id']}", w["id"]),
                                   reference=w["id"], memo=reason))
    elif new == model.COMPLETED:
        hot = f"wallet:{w['chain']}:hot"
        legs = [(hot, w["amount"])] + ([("fees:revenue", w["fee"])] if w["fee"] else [])
        postings = ((Posting(w["asset"], "fees:network", hot, w["network_fee"]),) if w["network_fee"] else ())
        apply_command(conn, ids, Command(kind="withdrawal_complete", actor=actor,
                                   hold_posts=(HoldPost(w["hold_id"], tuple(legs), close=True),), postings=postings,
                                   idempotency=Idempotency(SCOPE, f"complete:{w['id']}", w["id"]),
                                   reference=w["id"], memo=w.get("txid")))
    return w, emit_events(conn, [record(conn, w, current, actor, reason)])


def apply_command(conn: Connection, ids: AccountIds, command: Command) -> None:
    """One ledger command in the caller's transaction; its refusal is raised."""
    (result,) = apply_commands(conn, [command], ids)
    if isinstance(result, CustodyError):
        raise result
