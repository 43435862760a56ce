"""The ledger's invariants (DESIGN section 3), checked from the database alone.

1. Per asset, everything balances: the accounts' debit totals equal their
   credit totals, and each account's totals equal the sum of its transfers.
2. No user balance is negative, except through a flagged correction on a
   frozen account (reported as flagged, not as a violation).
3. Each user's held balance equals the sum of that user's open holds.
4. Wallet accounts equal what the chains show (the service's own UTXO set),
   up to the listed items in flight (custody/reconciliation/wallets.py).
Also: the event journal is gap-free and has one event per batch, the
references that have no foreign key (REFERENCES) all point at a row, and each
deposit is credited by the ledger exactly as its status says (once and for its
amount when CREDITED, net nothing otherwise).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Callable

from sqlalchemy import Engine, cast, exists, func, select
from sqlalchemy.dialects.postgresql import JSONB

from custody.db import schema as t
from custody.db.engine import read_transaction
from custody.ledger.model import owner_of, user_available, wallet
from custody.reconciliation import wallets


MAX_LISTED = 20  # items in flight shown by name per chain; the rest are counted

# (column, the column it refers to) for references kept without a foreign key
# on the highest-volume tables (custody/db/schema.py, migration 0009 says why).
REFERENCES = (
    (t.ledger_transfers.c.batch_id, t.ledger_batches.c.id),
    (t.ledger_transfers.c.debit_account_id, t.ledger_accounts.c.id),
    (t.ledger_transfers.c.credit_account_id, t.ledger_accounts.c.id),
    (t.trades.c.taker_order_id, t.orders.c.id),
    (t.trades.c.maker_order_id, t.orders.c.id),
    (t.trades.c.buyer_account_id, t.accounts.c.id),
    (t.trades.c.seller_account_id, t.accounts.c.id),
    (t.trades.c.batch_id, t.ledger_batches.c.id),
)


@dataclasses.dataclass(frozen=True)
class Finding:
    invariant: str
    severity: str  # "violation", "flagged", "skipped" or "info"
    message: str


@dataclasses.dataclass
class Report:
    findings: list[Finding]
    accounts: int = 0
    transfers: int = 0
    batches: int = 0

    @property
    def ok(self) -> bool:
        return not any(f.severity == "violation" for f in self.findings)

    def render(self) -> str:
        lines = [f"checked {self.accounts} ledger accounts, {self.transfers} transfers, {self.batches} batches"]
        for name in ("1", "2", "3", "4", "events", "references", "deposits"):
            mine = [f for f in self.findings if f.invariant == name]
            if all(f.severity == "info" for f in mine):
                lines.append(f"invariant {name}: ok")
            for f in mine:
                lines.append(f"invariant {name}: {f.severity.upper()}: {f.message}")
        lines.append("RESULT: " + ("OK" if self.ok else "VIOLATIONS FOUND"))
        return "\n".join(lines)


def check(engine: Engine, progress: Callable[[str], None] | None = None, progress_every: int = 1_000_000) -> Report:
    """Reads the ledger in one snapshot and checks it. Transfers and holds are
    streamed, so memory stays flat however long the journal is; progress, if
    given, hears every progress_every transfers read (a large ledger takes minutes)."""
    findings: list[Finding] = []
    with read_transaction(engine) as conn:
        if engine.dialect.name == "postgresql":
            # One snapshot for every query below.
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        accounts = {r.id: r for r in conn.execute(select(t.ledger_accounts))}
        frozen = {r.id for r in conn.execute(select(t.accounts.c.id).where(t.accounts.c.frozen))}
        journal_debits: dict[int, int] = collections.defaultdict(int)
        journal_credits: dict[int, int] = collections.defaultdict(int)
        transfers = 0
        flagged_batches = {r.id for r in conn.execute(select(t.ledger_batches.c.id).where(t.ledger_batches.c.flagged))}
        flagged_debits: dict[int, int] = collections.defaultdict(int)  # what flagged batches took out of each
        stream = conn.execution_options(yield_per=10_000).execute(
            select(t.ledger_transfers.c.batch_id, t.ledger_transfers.c.asset, t.ledger_transfers.c.debit_account_id,
                   t.ledger_transfers.c.credit_account_id, t.ledger_transfers.c.amount)
        )
        for batch_id, asset, debit, credit, amount in stream:
            transfers += 1
            if progress is not None and transfers % progress_every == 0:
                progress(f"{transfers:,} transfers read")
            journal_debits[debit] += amount
            journal_credits[credit] += amount
            if batch_id in flagged_batches:
                flagged_debits[debit] += amount
            if amount <= 0:
                findings.append(Finding("1", "violation", f"transfer in batch {batch_id} has amount {amount}"))
            for side in (debit, credit):
                if side not in accounts or accounts[side].asset != asset:
                    findings.append(Finding("1", "violation",
                                            f"transfer in batch {batch_id} ({asset}) touches account {side} of another asset"))
        open_holds: dict[tuple[int, str], int] = collections.defaultdict(int)
        h = t.ledger_holds.c
        holds = conn.execution_options(yield_per=10_000).execute(
            select(h.id, h.account_id, h.asset, h.amount, h.remaining, h.status))
        for hold_id, account_id, asset, amount, remaining, status in holds:  # every order has one: stream them too
            if not 0 <= remaining <= amount:
                # The held balance may still add up, yet a post of this hold would move funds backing another.
                findings.append(Finding("3", "violation", f"hold {hold_id} has {remaining} remaining of {amount}"))
            if status == "OPEN":
                open_holds[(account_id, asset)] += remaining
            elif remaining != 0:
                findings.append(Finding("3", "violation", f"closed hold {hold_id} still has {remaining} remaining"))
        if progress is not None:
            progress(f"{transfers:,} transfers and the holds read; checking accounts, events and references")
        batches = conn.execute(select(func.count()).select_from(t.ledger_batches)).scalar_one()
        findings += _check_events(conn, batches)
        findings += _check_references(conn)
        findings += _check_deposits(conn, accounts)
        findings += _check_wallets(conn)
        # The rare user accounts below zero: which batch took each there (and further) decides.
        deepened = {a.id: _unflagged_deepening(conn, a.id) for a in accounts.values()
                    if owner_of(a.code) is not None and a.credits < a.debits}

    per_asset: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for a in accounts.values():
        per_asset[a.asset][0] += a.debits
        per_asset[a.asset][1] += a.credits
        if (a.debits, a.credits) != (journal_debits.get(a.id, 0), journal_credits.get(a.id, 0)):
            findings.append(Finding("1", "violation",
                                    f"{a.code} ({a.asset}): stored debits/credits {a.debits}/{a.credits} differ from "
                                    f"its transfers {journal_debits.get(a.id, 0)}/{journal_credits.get(a.id, 0)}"))
        owner = owner_of(a.code)
        if owner is not None and a.credits < a.debits:
            # Flagged only as deep as flagged corrections took it: a negative beyond what they debited
            # came from somewhere else, and so did one an unflagged batch took lower, whenever.
            if owner in frozen and a.credits - a.debits + flagged_debits.get(a.id, 0) >= 0 and not deepened[a.id]:
                findings.append(Finding("2", "flagged",
                                        f"{a.code} ({a.asset}) is {a.credits - a.debits} after a flagged correction; "
                                        f"account {owner} is frozen"))
            elif deepened[a.id]:
                findings.append(Finding("2", "violation",
                                        f"{a.code} ({a.asset}) is negative: {a.credits - a.debits}; batch "
                                        f"{deepened[a.id]}, not flagged, took it below zero or further"))
            else:
                findings.append(Finding("2", "violation", f"{a.code} ({a.asset}) is negative: {a.credits - a.debits}"))
        if owner is not None and a.code.endswith(":held"):
            expected = open_holds.pop((owner, a.asset), 0)
            if a.credits - a.debits != expected:
                findings.append(Finding("3", "violation",
                                        f"{a.code} ({a.asset}) holds {a.credits - a.debits} but its open holds sum to {expected}"))
    for (owner, asset), amount in open_holds.items():
        if amount:
            findings.append(Finding("3", "violation", f"account {owner} has open {asset} holds of {amount} but no held account"))
    for asset, (debits, credits) in sorted(per_asset.items()):
        if debits != credits:
            findings.append(Finding("1", "violation", f"{asset}: debits {debits} != credits {credits}"))
    return Report(findings, accounts=len(accounts), transfers=transfers, batches=batches)


def _check_wallets(conn) -> list[Finding]:
    compared, not_compared = wallets.reconcile(conn)
    out = [Finding("4", "skipped", f"{chain}: not compared: {why}") for chain, why in not_compared.items()]
    for c in compared:
        listed = [i for i in c.items if i.explained]
        wrong = [i for i in c.items if not i.explained]
        summary = (f"{c.chain} ({c.asset or 'no asset booked'}): unspent outputs {c.on_chain}, wallet accounts "
                   f"{c.in_ledger}; listed in flight or waiting: {len(listed)} item(s), {sum(i.amount for i in listed)}")
        first = c.first_divergence
        if first is not None:
            summary += f"; the first block where they part: {first.height} ({first.what.split(':')[0]})"
        out += [Finding("4", "violation", _item_line(c.chain, i)) for i in wrong]
        if c.unexplained:
            out.append(Finding("4", "violation", f"{summary}; unexplained: {c.unexplained:+}"))
        else:
            out.append(Finding("4", "info", summary))
        out += [Finding("4", "info", _item_line(c.chain, i)) for i in listed[:MAX_LISTED]]
        if len(listed) > MAX_LISTED:
            out.append(Finding("4", "info", f"{c.chain}: and {len(listed) - MAX_LISTED} more listed items"))
    return out


def _item_line(chain: str, item) -> str:
    return f"{chain}: {item.what} ({item.amount:+})" + (f"; {item.where}" if item.where else "")


def _unflagged_deepening(conn, account_id: int) -> str | None:
    """The first batch, not flagged, that left the account below zero and lower than before (only
    a flagged correction may): its batches replayed in commit order (event cursor)."""
    b, tr = t.ledger_batches.c, t.ledger_transfers.c
    rows = conn.execute(
        select(b.id, b.flagged, tr.debit_account_id, tr.amount)
        .join(t.ledger_transfers, tr.batch_id == b.id)
        .where((tr.debit_account_id == account_id) | (tr.credit_account_id == account_id))
        .order_by(b.event_cursor, b.id))
    balance, batch, change, flagged = 0, None, 0, False
    for batch_id, is_flagged, debit, amount in [*rows, (None, False, None, 0)]:
        if batch_id != batch:
            if batch is not None:
                balance += change
                if change < 0 and balance < 0 and not flagged:
                    return batch
            batch, change, flagged = batch_id, 0, is_flagged
        change += -amount if debit == account_id else amount
    return None


def _check_events(conn, batches: int) -> list[Finding]:
    out = []
    count, low, high = conn.execute(
        select(func.count(), func.min(t.events.c.cursor), func.max(t.events.c.cursor))
    ).one()
    last = conn.execute(select(t.event_sequence.c.last_cursor).where(t.event_sequence.c.id == 1)).scalar_one()
    if count and (low != 1 or high != count):
        out.append(Finding("events", "violation", f"event cursors are not 1..{count} without gaps (min {low}, max {high})"))
    if (high or 0) != last:
        out.append(Finding("events", "violation", f"event sequence is at {last} but the last event is {high}"))
    ledger_events = conn.execute(
        select(func.count()).select_from(t.events).where(t.events.c.type.like("ledger.%"))
    ).scalar_one()
    if ledger_events != batches:
        out.append(Finding("events", "violation", f"{batches} ledger batches but {ledger_events} ledger events"))
    # Equal counts are not enough: each batch must name its own ledger event.
    b, e = t.ledger_batches.c, t.events.c
    own = exists().where(e.cursor == b.event_cursor, e.type.like("ledger.%"))
    unmatched, example = conn.execute(select(func.count(), func.min(b.id)).where(~own)).one()
    if unmatched:
        out.append(Finding("events", "violation",
                           f"{unmatched} ledger batches name no ledger event of theirs (e.g. batch {example})"))
    distinct = conn.execute(select(func.count(func.distinct(b.event_cursor)))).scalar_one()
    if distinct != batches:
        out.append(Finding("events", "violation", f"{batches - distinct} ledger batches share an event cursor"))
    # And that event must be about this batch: two batches with their cursors swapped pass all of
    # the above, and a consumer of the stream books each one's postings as the other's.
    if conn.dialect.name == "postgresql":
        named = cast(e.payload, JSONB)["batch_id"].astext
    else:
        named = func.json_extract(e.payload, "$.batch_id")
    wrong, example = conn.execute(
        select(func.count(), func.min(b.id)).join(t.events, e.cursor == b.event_cursor)
        .where(e.type.like("ledger.%"), (named != b.id) | (named.is_(None)))).one()
    if wrong:
        out.append(Finding("events", "violation",
                           f"{wrong} ledger batches name an event about another batch (e.g. batch {example})"))
    return out


def _check_deposits(conn, accounts: dict) -> list[Finding]:
    """Each deposit's credits minus its reversals (batches with reference deposit:<id>) are one
    credit of its amount, from its chain's deposit wallet to its own account in its own asset,
    when it is CREDITED, nothing otherwise: a second credit, a credit of another amount or to
    another account balances in the ledger, yet pays a user what never arrived. Amounts are
    summed here, not in SQL: SQLite keeps them as text and would sum them as floats."""
    b, tr, d = t.ledger_batches.c, t.ledger_transfers.c, t.deposits.c
    code = {account_id: row.code for account_id, row in accounts.items()}
    net: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])  # reference -> [credits, amount]
    legs: dict[str, set] = collections.defaultdict(set)  # reference -> {(from, to, asset)} as credits
    counted: set[str] = set()
    for batch_id, reference, kind, asset, debit, credit, amount in conn.execution_options(yield_per=10_000).execute(
            select(b.id, b.reference, b.kind, tr.asset, tr.debit_account_id, tr.credit_account_id, tr.amount)
            .join(t.ledger_transfers, tr.batch_id == b.id).where(b.kind.in_(("deposit", "deposit_reversal")))
            .order_by(b.id)):
        sign = 1 if kind == "deposit" else -1
        if batch_id not in counted:
            counted.add(batch_id)
            net[reference][0] += sign
        net[reference][1] += sign * amount
        pair = (code.get(debit), code.get(credit)) if sign > 0 else (code.get(credit), code.get(debit))
        legs[reference].add((*pair, asset))
    out = []
    for deposit_id, chain, account_id, asset, status, amount in conn.execution_options(yield_per=10_000).execute(
            select(d.id, d.chain, d.account_id, d.asset, d.status, d.amount)):
        reference = f"deposit:{deposit_id}"
        expected = [1, amount] if status == "CREDITED" else [0, 0]
        got = net.pop(reference, [0, 0])
        if got != expected:
            out.append(Finding("deposits", "violation",
                               f"deposit {deposit_id} ({status}, {amount}) is credited {got[0]} time(s) net, "
                               f"{got[1]} in all, by the ledger"))
        # "deposit": the scanner credits from its chain's deposit wallet (custody/deposits/model.py).
        wrong = legs.pop(reference, set()) - {(wallet(chain, "deposit"), user_available(account_id), asset)}
        if wrong:
            moved = ", ".join(f"{src} -> {dst} ({what})" for src, dst, what in sorted(wrong, key=str))
            out.append(Finding("deposits", "violation", f"deposit {deposit_id} of {asset} to account {account_id} "
                                                        f"is credited as {moved}"))
    for reference, (count, amount) in sorted(net.items()):
        out.append(Finding("deposits", "violation", f"ledger batches for {reference} ({count} net, {amount}) "
                                                    "name no deposit"))
    return out


def _check_references(conn) -> list[Finding]:
    out = []
    for column, target in REFERENCES:
        dangling = ~exists().where(target == column)
        count, example = conn.execute(select(func.count(), func.min(column)).where(dangling)).one()
        if count:
            out.append(Finding("references", "violation",
                               f"{count} {column.table.name}.{column.name} values point at no {target.table.name} row "
                               f"(e.g. {example})"))
    return out
