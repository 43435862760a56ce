"""The facts a reviewer sees next to each withdrawal of a review page.

Read for the whole page at once, in five queries whatever its size: one set
of queries per withdrawal took 1.4 s for a page of 1,000 on PostgreSQL.
Amounts are summed here, not in SQL: SQLite's SUM of the stored text would
be a float.
"""
from __future__ import annotations

import collections
import datetime

from sqlalchemy import Connection, func, select

from custody.db import schema as t
from custody.deposits.model import CREDITED
from custody.withdrawals import model


def page_facts(conn: Connection, rows: list, now: datetime.datetime) -> dict[str, dict]:
    """withdrawal id -> the database's facts about it, for rows (withdrawals rows) read in conn."""
    if not rows:
        return {}
    accounts = {r.account_id for r in rows}
    acc, d, w, a = t.accounts.c, t.deposits.c, t.withdrawals.c, t.withdrawal_approvals.c

    created, frozen = {}, {}
    for account_id, at, is_frozen in conn.execute(
            select(acc.id, acc.created_at, acc.frozen).where(acc.id.in_(accounts))):
        created[account_id] = at if at.tzinfo else at.replace(tzinfo=datetime.timezone.utc)
        frozen[account_id] = bool(is_frozen)
    credited = collections.defaultdict(list)  # (account, asset) -> credited deposit amounts
    for account_id, asset, amount in conn.execute(
            select(d.account_id, d.asset, d.amount).where(d.account_id.in_(accounts), d.status == CREDITED)):
        credited[(account_id, asset)].append(amount)
    # Each withdrawal counts itself once: "seen before" is the count less one.
    to_address = dict(((account_id, address), n) for account_id, address, n in conn.execute(
        select(w.account_id, w.to_address, func.count())
        .where(w.account_id.in_(accounts), w.to_address.in_({r.to_address for r in rows}))
        .group_by(w.account_id, w.to_address)))
    last_day = collections.Counter()  # (account, asset) -> amount not voided, requested in the last 24 hours
    for account_id, asset, amount in conn.execute(
            select(w.account_id, w.asset, w.amount).where(
                w.account_id.in_(accounts), w.created_at >= now - model.DAY, w.status.not_in(sorted(model.VOIDING)))):
        last_day[(account_id, asset)] += amount
    approvers = collections.defaultdict(list)
    for withdrawal_id, approver in conn.execute(
            select(a.withdrawal_id, a.approver).where(a.withdrawal_id.in_([r.id for r in rows]))):
        approvers[withdrawal_id].append(approver)

    return {r.id: {
        "account_age_days": (now - created[r.account_id]).days,
        "account_frozen": frozen[r.account_id],
        "credited_deposits": len(credited[(r.account_id, r.asset)]),
        "deposited_amount": sum(credited[(r.account_id, r.asset)]),
        "destination_seen_before": to_address[(r.account_id, r.to_address)] - 1,
        "withdrawn_24h": last_day[(r.account_id, r.asset)],
        "approvers": sorted(approvers[r.id]),
        "requested_by": r.client,
    } for r in rows}
