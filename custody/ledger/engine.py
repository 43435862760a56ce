"""Runs ledger commands against the database.

`apply_commands` applies a list of commands inside one transaction: each
command is checked against the balances as the commands before it left them,
and becomes one batch or, when a check fails, nothing at all. The writers in
`custody.ledger.writer` feed it groups of queued commands (group commit).
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import itertools
import threading

import orjson
from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from custody.db import schema as t
from custody.db.bulk import (
    fetch_rows, in_pairs, insert_rows, int_array, select_by_ids, select_by_pairs, update_account_totals, update_rows,
)
from custody.db.engine import is_postgres, write_transaction
from custody.errors import (
    AccountFrozen, CustodyError, FailedPrecondition, IdempotencyConflict, InvalidArgument, NotFound,
)
from custody.ledger.commands import BatchResult, Command
from custody.ledger.model import AccountState, Posting, Staging, new_id, owner_of, user_available, user_held

Result = BatchResult | CustodyError


class AccountIds:
    """(code, asset) -> ledger account id. Ledger accounts are never deleted, so
    an id seen committed stays right; ids created in a transaction become
    visible here only once that transaction commits.

    One AccountIds may serve several threads, each running its own transaction
    (the withdrawal service's gRPC worker threads do), so ids not yet committed
    are kept per thread: one thread's commit must not publish ids that another
    thread's transaction, later rolled back, inserted.

    The committed ids kept are bounded (about 210 bytes each): an exchange has
    ledger accounts for every user and asset, and a writer that runs for months
    would otherwise end up holding all of them. Past the bound the oldest
    quarter is forgotten; an id forgotten is looked up again when needed."""

    MAX_COMMITTED = 200_000

    def __init__(self, max_committed: int = MAX_COMMITTED) -> None:
        self._committed: dict[tuple[str, str], int] = {}
        self._max_committed = max_committed
        self._publishing = threading.Lock()  # commits from several threads; forgetting iterates the dict
        self._local = threading.local()

    def _pending(self) -> dict[tuple[str, str], int]:
        pending = getattr(self._local, "pending", None)
        if pending is None:
            pending = self._local.pending = {}
        return pending

    def get(self, key):
        return self._committed.get(key) or self._pending().get(key)

    def get_all(self, keys) -> list:
        """get for each key, the thread's pending ids looked up once (a group asks for thousands)."""
        committed, pending = self._committed, self._pending()
        return [committed.get(k) or pending.get(k) for k in keys]

    def add_pending(self, key, id_):
        self._pending()[key] = id_

    def commit(self):
        """The calling thread's transaction committed: its new ids are now safe for every thread."""
        pending = self._pending()
        if not pending:
            return
        with self._publishing:
            committed = self._committed
            committed.update(pending)
            if len(committed) > self._max_committed:
                excess = len(committed) - self._max_committed * 3 // 4
                for key in list(itertools.islice(committed, excess)):  # dicts keep insertion order: oldest first
                    del committed[key]
        pending.clear()

    def committed_count(self) -> int:
        return len(self._committed)

    def rollback(self):
        self._pending().clear()

    @contextlib.contextmanager
    def write_transaction(self, engine: Engine):
        """A write transaction whose new account ids are kept only if it commits."""
        try:
            with write_transaction(engine) as conn:
                yield conn
        except BaseException:
            self.rollback()
            raise
        self.commit()


def apply_commands(conn: Connection, commands: list[Command], ids: AccountIds) -> list[Result]:
    """Applies commands in order in the caller's transaction; returns one result or error each."""
    with _collector_paused():
        return _Group(conn, commands, ids).run()


@contextlib.contextmanager
def _collector_paused():
    """Pauses Python's cyclic garbage collector while a group is applied.

    A group allocates tens of container objects per command (rows, dicts,
    tuples), none of them in reference cycles: reference counting frees them.
    With the collector on, those allocations set off collections that walk
    every live object of the process; in the matching engine, which keeps its
    books in memory, that was about a third of apply_commands' time per fill
    (57 us -> 39 us with it paused). Objects still alive afterwards are
    counted as usual, so the collector catches up on them at its next run.
    Left alone if something else has already paused it."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Group:
    def __init__(self, conn: Connection, commands: list[Command], ids: AccountIds):
        self.conn = conn
        self.commands = commands
        self.ids = ids
        self.lock = is_postgres(conn.engine)
        self.now = datetime.datetime.now(datetime.timezone.utc)
        self.results: list[Result | None] = [None] * len(commands)

    def run(self) -> list[Result]:
        first_by_key = self._replay_idempotent()
        # The same key more than once in one group: the commands with it, in order. The first that
        # succeeds holds the key and the later ones answer as its replay; one that fails leaves the
        # key unused (docs/api.md), so the next runs in a further pass in this transaction.
        same_key: dict[int, list[int]] = {}
        for i, first in sorted(first_by_key.items()):
            same_key.setdefault(first, [first]).append(i)
        active = [i for i, r in enumerate(self.results) if r is None and i not in first_by_key]
        while active:
            self._execute(active)
            active = []
            for indices in same_key.values():
                holder = next((i for i in indices if isinstance(self.results[i], BatchResult)), None)
                for i in indices:
                    if self.results[i] is not None:
                        continue
                    if holder is not None:
                        self.results[i] = _same_key_again(self.commands[holder], self.commands[i],
                                                          self.results[holder])
                    else:  # every earlier one failed: this one runs next
                        active.append(i)
                        break
        return self.results  # type: ignore[return-value]

    # -- idempotency ---------------------------------------------------------
    def _replay_idempotent(self) -> dict[int, int]:
        keyed = [(i, c.idempotency) for i, c in enumerate(self.commands) if c.idempotency]
        if not keyed:
            return {}
        rows = select_by_pairs(self.conn, t.idempotency_keys, ("scope", "key", "request_hash", "result"),
                               "scope", "key", {(k.scope, k.key) for _, k in keyed})
        stored = {(scope, key): (request_hash, result) for scope, key, request_hash, result in rows}
        seen: dict[tuple[str, str], int] = {}
        later: dict[int, int] = {}
        for i, k in keyed:
            hit = stored.get((k.scope, k.key))
            if hit is not None:
                request_hash, result = hit
                self.results[i] = (
                    BatchResult.from_json(result) if request_hash == k.request_hash
                    else IdempotencyConflict(f"idempotency key {k.key!r} was used for a different request")
                )
            elif (k.scope, k.key) in seen:
                later[i] = seen[(k.scope, k.key)]
            else:
                seen[(k.scope, k.key)] = i
        return later

    # -- loading -------------------------------------------------------------
    def _execute(self, active: list[int]) -> None:
        commands = [self.commands[i] for i in active]
        named = {i: _owners_named(self.commands[i]) for i in active}  # custody accounts behind the postings
        holds = self._load_holds(commands)
        owners, all_exist = self._load_owners(commands, holds, named.values())
        # Holds that earlier commands of this group create under a caller-chosen
        # id: later commands may post to them, so their accounts are needed too.
        created: dict[str, list[dict]] = {}
        for c in commands:
            for h in c.hold_creates:
                if h.hold_id:
                    created.setdefault(h.hold_id, []).append({"account_id": h.account_id, "asset": h.asset})
        keys: set[tuple[str, str]] = set()
        for c in commands:
            _add_account_keys(c, holds, keys)
            # Which of several creators of one id gets it is known only when they run (the first
            # that succeeds): the accounts of each are loaded.
            for op in (*c.hold_posts, *c.hold_voids):
                if op.hold_id not in holds:
                    for creator in created.get(op.hold_id, ()):
                        _add_account_keys(c, {op.hold_id: creator}, keys)
        if not all_exist:
            # Never create ledger accounts for custody accounts that do not exist;
            # the commands naming them fail with NotFound below.
            keys = {k for k in keys if (owner := owner_of(k[0])) is None or owner in owners}
        staging = Staging(self._load_accounts(keys))
        writes = _Writes()
        for i in active:
            try:
                self._apply(i, named[i], owners, holds, staging, writes)
            except CustodyError as exc:
                staging.rollback()
                writes.rollback()
                self.results[i] = exc
        if writes.batches:
            checked = {a for i in active if self.results[i] is None for a in self.commands[i].not_frozen}
            if not self._write(writes, staging, checked):
                for i in active:
                    self.results[i] = None
                self._execute(active)  # again, now seeing the accounts frozen meanwhile

    def _load_owners(self, commands: list[Command], holds: dict[str, dict], named) -> tuple[dict[int, bool], bool]:
        """custody account id -> frozen, for every account the commands name; and whether all of them exist."""
        wanted = set()
        for c in commands:
            wanted.update(c.not_frozen, c.must_exist)
            if c.hold_creates:
                wanted.update(h.account_id for h in c.hold_creates)
        for owners in named:
            wanted.update(owners)
        wanted.update(h["account_id"] for h in holds.values())
        if not wanted:
            return {}, True
        found = {id_: bool(frozen) for id_, frozen in select_by_ids(self.conn, t.accounts, ("id", "frozen"), wanted)}
        return found, len(found) == len(wanted)

    def _load_holds(self, commands: list[Command]) -> dict[str, dict]:
        wanted = {h.hold_id for c in commands for h in (*c.hold_posts, *c.hold_voids)}
        wanted.update(h.hold_id for c in commands for h in c.hold_creates if h.hold_id)  # to refuse reuse
        if not wanted:
            return {}
        rows = select_by_ids(self.conn, t.ledger_holds, _LOADED_HOLD_COLUMNS, wanted, lock=self.lock)
        # Only what applying and updating a hold use; closed_at is None while a hold is open.
        return {
            id_: {"id": id_, "account_id": account_id, "asset": asset, "remaining": int(remaining),
                  "status": status, "closed_at": None}
            for id_, account_id, asset, remaining, status in rows
        }

    def _load_accounts(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], AccountState]:
        found = self.ids.get_all(keys)
        unknown = [k for k, id_ in zip(keys, found) if id_ is None]
        if unknown:
            self._find_or_create(unknown)
            # Only the unknown keys are looked up again: another thread's commit
            # may forget committed ids meanwhile (see AccountIds).
            found = [id_ if id_ is not None else self.ids.get(k) for k, id_ in zip(keys, found)]
        rows = select_by_ids(self.conn, t.ledger_accounts, _ACCOUNT_COLUMNS, found, lock=self.lock)
        return {
            (code, asset): AccountState(id_, code, asset, owner, int(debits), int(credits), bool(no_overdraft))
            for id_, code, asset, owner, debits, credits, no_overdraft in rows
        }

    def _find_or_create(self, keys: list[tuple[str, str]]) -> None:
        table = t.ledger_accounts

        def find() -> None:
            rows = self.conn.execute(
                select(table.c.id, table.c.code, table.c.asset)
                .where(in_pairs(self.conn, table.c.asset, table.c.code, [(asset, code) for code, asset in keys]))
            )
            for r in rows:
                self.ids.add_pending((r.code, r.asset), r.id)

        find()
        missing = [k for k in keys if self.ids.get(k) is None]
        if not missing:
            return
        dialect_insert = postgresql.insert if self.lock else sqlite.insert
        self.conn.execute(
            dialect_insert(table).on_conflict_do_nothing(index_elements=["code", "asset"]),
            [
                {"code": code, "asset": asset, "account_id": owner_of(code), "debits": 0, "credits": 0,
                 "no_overdraft": owner_of(code) is not None}
                for code, asset in missing
            ],
        )
        find()

    # -- applying one command -------------------------------------------------
    def _apply(self, i: int, named: set[int], owners, holds, staging: Staging, writes: "_Writes") -> None:
        """Applies command i to staging and writes, or raises (then the caller undoes it).
        Its result is made in _write, once its event cursor is known."""
        c = self.commands[i]
        staging.begin()
        for account_id in (*c.not_frozen, *c.must_exist):
            if account_id not in owners:
                raise NotFound(f"account {account_id} does not exist")
        for account_id in c.not_frozen:
            if owners[account_id]:
                raise AccountFrozen(f"account {account_id} is frozen", account_id)
        for owner in named:
            if owner not in owners:
                raise NotFound(f"account {owner} does not exist")
        postings = list(c.postings)
        batch_id = new_id()
        hold_ids = []
        for h in c.hold_creates:
            if h.account_id not in owners:
                raise NotFound(f"account {h.account_id} does not exist")
            hold_id = h.hold_id or new_id()
            if h.hold_id and (hold_id in holds or writes.created(hold_id)):
                raise InvalidArgument(f"hold id {hold_id} is already taken")
            hold_ids.append(hold_id)
            postings.append(Posting(h.asset, user_available(h.account_id), user_held(h.account_id), h.amount))
            writes.hold_inserts.append({
                "id": hold_id, "account_id": h.account_id, "asset": h.asset, "amount": h.amount,
                "remaining": h.amount, "status": "OPEN", "reference": h.reference,
                "created_at": self.now, "closed_at": None,
            })
        for hp in c.hold_posts:
            hold = writes.hold(holds, hp.hold_id)
            amounts = [amount for _, amount in hp.legs]
            if not amounts or min(amounts) <= 0:
                raise InvalidArgument("each posted amount must be greater than zero")
            spent = sum(amounts)
            if spent > hold["remaining"]:
                raise FailedPrecondition(
                    f"hold {hp.hold_id} has {hold['remaining']} left, cannot post {spent}"
                )
            held = user_held(hold["account_id"])
            asset = hold["asset"]
            postings += [Posting(asset, held, code, amount) for code, amount in hp.legs]
            hold["remaining"] -= spent
            if hp.close or hold["remaining"] == 0:
                self._close_hold(hold, postings)
        for hv in c.hold_voids:
            self._close_hold(writes.hold(holds, hv.hold_id), postings)

        for p in postings:
            p.validate()
            staging.apply(p)
        if not c.flagged:
            staging.check_no_overdraft()
        writes.add_batch(i, c, batch_id, tuple(hold_ids), postings, staging, self.now)

    def _close_hold(self, hold: dict, postings: list[Posting]) -> None:
        if hold["remaining"]:
            account = hold["account_id"]
            postings.append(Posting(hold["asset"], user_held(account), user_available(account), hold["remaining"]))
            hold["remaining"] = 0
        hold["status"] = "CLOSED"
        hold["closed_at"] = self.now

    # -- writing ---------------------------------------------------------------
    def _write(self, writes: "_Writes", staging: Staging, checked_not_frozen: set[int]) -> bool:
        """Writes the pass; False (nothing written) if an account it read as not frozen has been
        frozen since, by a commit ordered before this group's events."""
        conn = self.conn
        n = len(writes.batches)
        # Taken last-but-inserts so that on PostgreSQL the sequence row's lock
        # (which orders commits by cursor) is held as briefly as possible.
        mark = "%s" if self.lock else "?"
        ((last,),) = fetch_rows(
            conn, f"UPDATE event_sequence SET last_cursor = last_cursor + {mark} WHERE id = 1 RETURNING last_cursor", (n,))
        if self.lock and checked_not_frozen and fetch_rows(
                conn, "SELECT id FROM accounts WHERE frozen AND id = ANY(%s::bigint[])",
                (int_array(checked_not_frozen),)):
            # PostgreSQL: the accounts were read unlocked when the group began, and a freeze
            # (which takes this sequence row too) may have committed since. Without this, a debit
            # checked against "not frozen" committed after staff were told the account was frozen.
            # Read now, under the sequence row's lock, a freeze is either visible or ordered after
            # this group. SQLite's write lock (BEGIN IMMEDIATE) rules the race out.
            conn.exec_driver_sql("UPDATE event_sequence SET last_cursor = last_cursor - %s WHERE id = 1", (n,))
            return False
        first = last - n + 1
        now = self.now
        events = []
        idempotency = []
        for cursor, batch, (i, hold_ids), payload in zip(itertools.count(first), writes.batches, writes.done,
                                                          writes.payloads):
            batch[_CURSOR] = cursor
            events.append((cursor, f"ledger.{batch[_KIND]}", payload, now))
            self.results[i] = result = BatchResult(batch[0], cursor, hold_ids)
            key = self.commands[i].idempotency
            if key:
                idempotency.append((key.scope, key.key, key.request_hash, result.to_json(), now))
        insert_rows(conn, t.ledger_batches, _BATCH_COLUMNS, writes.batches)
        insert_rows(conn, t.ledger_transfers, _TRANSFER_COLUMNS, writes.transfers)
        insert_rows(conn, t.events, _EVENT_COLUMNS, events)
        insert_rows(conn, t.ledger_holds, _HOLD_COLUMNS, [tuple(map(h.get, _HOLD_COLUMNS)) for h in writes.hold_inserts])
        update_rows(conn, t.ledger_holds, _HOLD_UPDATE_COLUMNS,
                    [tuple(map(h.get, _HOLD_UPDATE_COLUMNS)) for h in writes.hold_updates.values()])
        insert_rows(conn, t.idempotency_keys, _IDEMPOTENCY_COLUMNS, idempotency)
        dirty = [s for s in staging.accounts.values() if s.dirty]
        update_account_totals(conn, [(s.id, s.debits, s.credits) for s in dirty])
        for s in dirty:
            s.dirty = False
        return True


# Amounts are read as text, which int() parses exactly: psycopg makes a
# Decimal of each NUMERIC (then to_int checks and converts it), 0.6 us a
# ledger account row more (measured fetching 2,000 rows on PostgreSQL). On
# SQLite amounts are text already.
_ACCOUNT_COLUMNS = ("id", "code", "asset", "account_id", "CAST(debits AS TEXT)", "CAST(credits AS TEXT)",
                    "no_overdraft")
_LOADED_HOLD_COLUMNS = ("id", "account_id", "asset", "CAST(remaining AS TEXT)", "status")
_BATCH_COLUMNS = ("id", "kind", "reference", "actor", "memo", "flagged", "event_cursor", "created_at")
_TRANSFER_COLUMNS = ("batch_id", "asset", "debit_account_id", "credit_account_id", "amount")
_EVENT_COLUMNS = ("cursor", "type", "payload", "created_at")
_CURSOR, _KIND = _BATCH_COLUMNS.index("event_cursor"), _BATCH_COLUMNS.index("kind")
_IDEMPOTENCY_COLUMNS = ("scope", "key", "request_hash", "result", "created_at")
_HOLD_COLUMNS = ("id", "account_id", "asset", "amount", "remaining", "status", "reference", "created_at", "closed_at")
_HOLD_UPDATE_COLUMNS = ("id", "remaining", "status", "closed_at")  # the key first (see update_rows)


class _Writes:
    """Rows a group will insert, with an undo for the command being applied."""

    def __init__(self):
        self.batches: list[list] = []  # rows in _BATCH_COLUMNS order; the event cursor is set in _write
        self.done: list[tuple[int, tuple[str, ...]]] = []  # per batch: (command index, hold ids)
        self.payloads: list[str] = []
        self.transfers: list[tuple] = []
        self.hold_inserts: list[dict] = []
        self.hold_updates: dict[str, dict] = {}
        self._mark = (0, 0, 0)
        self._touched: dict[str, dict | None] = {}
        self._created: dict[str, dict] = {}  # hold id -> its row in hold_inserts[:_indexed]
        self._indexed = 0

    def created(self, hold_id: str) -> dict | None:
        """The insert row of a hold created earlier in this group (by a command not rolled back)."""
        if self._indexed < len(self.hold_inserts):  # index the rows added since the last look
            self._created.update((r["id"], r) for r in self.hold_inserts[self._indexed:])
            self._indexed = len(self.hold_inserts)
        return self._created.get(hold_id)

    def hold(self, loaded: dict[str, dict], hold_id: str) -> dict:
        current = self.hold_updates.get(hold_id) or loaded.get(hold_id) or self.created(hold_id)
        if current is None:
            raise NotFound(f"hold {hold_id} does not exist")
        if current["status"] != "OPEN":
            raise FailedPrecondition(f"hold {hold_id} is already closed")
        if hold_id not in self._touched:
            self._touched[hold_id] = self.hold_updates.get(hold_id)
        copy = dict(current)
        self.hold_updates[hold_id] = copy
        return copy

    def add_batch(self, i: int, c: Command, batch_id: str, hold_ids: tuple[str, ...], postings: list[Posting],
                  staging: Staging, now) -> None:
        self.batches.append([batch_id, c.kind, c.reference, c.actor, c.memo, c.flagged, 0, now])
        self.done.append((i, hold_ids))
        accounts = staging.accounts
        self.transfers += [
            (batch_id, p.asset, accounts[(p.debit, p.asset)].id, accounts[(p.credit, p.asset)].id, p.amount)
            for p in postings
        ]
        self.payloads.append(orjson.dumps({
            "batch_id": batch_id, "kind": c.kind, "reference": c.reference, "actor": c.actor, "memo": c.memo,
            "flagged": c.flagged,
            "postings": [{"asset": p.asset, "debit": p.debit, "credit": p.credit, "amount": str(p.amount)}
                         for p in postings],
        }).decode())
        self._commit_command()

    def _commit_command(self) -> None:
        self._mark = (len(self.batches), len(self.transfers), len(self.hold_inserts))
        if self._touched:
            self._touched.clear()

    def rollback(self) -> None:
        nb, nt, nh = self._mark
        for row in self.hold_inserts[nh:]:
            self._created.pop(row["id"], None)
        self._indexed = min(self._indexed, nh)
        del self.batches[nb:], self.done[nb:], self.payloads[nb:], self.transfers[nt:], self.hold_inserts[nh:]
        for hold_id, before in self._touched.items():
            if before is None:
                self.hold_updates.pop(hold_id, None)
            else:
                self.hold_updates[hold_id] = before
        self._touched.clear()


def _add_account_keys(c: Command, holds: dict[str, dict], keys: set[tuple[str, str]]) -> None:
    """Adds the (code, asset) of every ledger account command c touches to keys."""
    for p in c.postings:
        keys.add((p.debit, p.asset))
        keys.add((p.credit, p.asset))
    for h in c.hold_creates:
        keys.add((user_available(h.account_id), h.asset))
        keys.add((user_held(h.account_id), h.asset))
    for op in (*c.hold_posts, *c.hold_voids):
        hold = holds.get(op.hold_id)
        if hold is None:
            continue
        keys.add((user_available(hold["account_id"]), hold["asset"]))
        keys.add((user_held(hold["account_id"]), hold["asset"]))
        for code, _ in getattr(op, "legs", ()):
            keys.add((code, hold["asset"]))


def _owners_named(c: Command) -> set[int]:
    if len(c.postings) == 1 and not c.hold_posts:  # a transfer or an adjustment: one posting, no holds
        p = c.postings[0]
        return {owner for owner in (owner_of(p.debit), owner_of(p.credit)) if owner is not None}
    codes = [code for p in c.postings for code in (p.debit, p.credit)]
    codes += [code for hp in c.hold_posts for code, _ in hp.legs]
    return {owner for owner in map(owner_of, codes) if owner is not None}


def _same_key_again(holder: Command, again: Command, holder_result: BatchResult) -> Result:
    if holder.idempotency.request_hash != again.idempotency.request_hash:
        return IdempotencyConflict(f"idempotency key {again.idempotency.key!r} was used for a different request")
    return BatchResult(holder_result.batch_id, holder_result.event_cursor, holder_result.hold_ids, replayed=True)
