"""Withdrawal use cases for clients and staff: request, read, cancel, review.

No gRPC here. Each use case is one database transaction; events written in
it wake StreamEvents readers after the commit (`notify`).
"""
from __future__ import annotations

import hashlib
import json
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from chains.base import ChainError
from custody.accounts.service import parse_account_id
from custody.config import Config
from custody.db import schema as t
from custody.db.engine import read_transaction
from custody.errors import (AccountFrozen, CustodyError, FailedPrecondition, IdempotencyConflict, InvalidArgument,
                            NotFound)
from custody.ledger.commands import Command, HoldCreate, parse_idempotency_key
from custody.ledger.engine import AccountIds, apply_commands
from custody.ledger.model import new_id, parse_id
from custody.money import parse_amount
from custody.paging import parse_page
from custody.text import parse_reason
from custody.withdrawals import model, store
from custody.withdrawals.review import page_facts
from hsm.approvals import approval_message

LAST_EVENT = "custody.last_event"
MAX_ADDRESS_LENGTH = 128  # the width of withdrawals.to_address
# Every status a batch can be in (custody/withdrawals/sender.py, refusal.py): a misspelt one is refused,
# not answered with an empty list that reads as "nothing there".
BATCH_STATUSES = (model.QUEUED, model.SIGNING, model.SIGNED, model.BROADCAST, model.CONFIRMING, model.COMPLETED,
                  model.FAILED, "CANCELLING", "CANCELLED", "NEEDS_STAFF")


class Withdrawals:
    def __init__(self, config: Config, engine: Engine, plugin_for: Callable, notify: Callable[[int], None]):
        self.config = config
        self.rules = config.withdrawals
        self.engine = engine
        self.plugin_for = plugin_for
        self.notify = notify
        self.ids = AccountIds()

    # -- one transaction with ledger commands and events -------------------------------------------
    def _write(self, work):
        """Runs work(conn) in one write transaction; notifies readers of its last event after commit."""
        with self.ids.write_transaction(self.engine) as conn:
            conn.info.pop(LAST_EVENT, None)
            result = work(conn)
            # work may say where its last event is (saves a query on the request path).
            last = conn.info.pop(LAST_EVENT, None)
            if last is None:
                last = conn.execute(select(t.event_sequence.c.last_cursor)).scalar_one()
        self.notify(last)
        return result

    # -- clients -------------------------------------------------------------------------------------
    def request(self, client: str, idempotency_key: str, account_id: str, asset: str, to_address: str,
                amount: str) -> tuple[dict, bool]:
        """Answers a known key with its withdrawal; else validates, then holds amount + fee and
        records the withdrawal in one transaction. Returns (withdrawal, created)."""
        key = parse_idempotency_key(idempotency_key)
        account = parse_account_id(account_id)
        asset_cfg = self.config.asset(asset)
        try:
            plugin = self.plugin_for(asset_cfg.chain)
        except CustodyError:
            raise InvalidArgument(f"asset {asset} is on chain {asset_cfg.chain}, which has no withdrawals here") \
                from None
        if len(to_address) > MAX_ADDRESS_LENGTH:  # before the chain's parser: nothing longer is stored
            raise InvalidArgument(f"to_address: at most {MAX_ADDRESS_LENGTH} characters, got {len(to_address)}")
        try:
            address = plugin.validate_address(to_address)
        except ChainError as exc:
            raise InvalidArgument(f"to_address: {exc}") from None
        value = parse_amount(amount)
        request_hash = hashlib.sha256(json.dumps(
            {"account": account, "asset": asset, "to": address, "amount": value},
            sort_keys=True).encode()).hexdigest()

        def replay(conn):
            row = conn.execute(select(t.withdrawals).where(t.withdrawals.c.client == client,
                                                           t.withdrawals.c.client_key == key)).first()
            if row is None:
                return None
            if row.request_hash != request_hash:
                raise IdempotencyConflict(f"idempotency key {key!r} was used for a different withdrawal")
            return dict(row._mapping)

        def check_amount():
            if value < asset_cfg.min_withdrawal:
                raise InvalidArgument(f"amount {value} is below the minimum withdrawal of {asset_cfg.min_withdrawal}")
            if value > asset_cfg.max_withdrawal:
                raise InvalidArgument(f"amount {value} is above the maximum withdrawal of {asset_cfg.max_withdrawal}")
            if value < (dust := plugin.smallest_payment(address)):
                # One such output makes the whole batch's transaction non-standard: nodes refuse it.
                raise InvalidArgument(f"amount {value} is below {dust}, the least the network relays a payment "
                                      f"to {address} of")

        # No separate read for a replay first: it would cost every new request a transaction;
        # the replay check below, under the account's lock, answers replays too.
        def work(conn):
            a = t.chain_addresses.c
            # Whether the destination is one of our own addresses, in the same round trip.
            ours = select(a.id).where(a.chain == asset_cfg.chain, a.address == address).scalar_subquery()
            q = select(t.accounts.c.frozen, t.accounts.c.frozen_reason, ours.label("own_address")).where(
                t.accounts.c.id == account)
            if conn.dialect.name == "postgresql":
                q = q.with_for_update()  # one request per account at a time: the daily limit can't be raced
            owner = conn.execute(q).first()
            # Only once the lock is held: a retry that waited for it while the first request with
            # its key committed finds it now (each statement sees the latest commits on PostgreSQL).
            # A replay answers with the first result whatever happened since (a freeze, or a
            # minimum raised by a rolling config change): the amount is checked only when new.
            again = replay(conn)
            if again:
                return again, False
            check_amount()
            if owner is None:
                raise NotFound(f"account {account} does not exist")
            if owner.frozen:
                raise AccountFrozen(f"account {account} is frozen: {owner.frozen_reason or 'no reason given'}")
            if owner.own_address is not None:
                ours = conn.execute(select(a.wallet, a.account_id).where(a.id == owner.own_address)).one()
                # Paying ourselves on chain would be credited as a deposit (or kept, for a hot or cold
                # address) while the resolve path reads such an output as our own: a twin of the batch
                # would look as if it paid nobody, and the hold would be released (FAILURE_MODES 13).
                whose = f"account {ours.account_id}'s deposit" if ours.account_id else f"the {ours.wallet} wallet's"
                raise InvalidArgument(f"to_address {address} is {whose} address at this exchange: move funds "
                                      "between accounts with Transfer, not on chain")
            w = t.withdrawals.c
            since = store.now() - model.DAY
            recent = conn.execute(select(w.amount).where(
                w.account_id == account, w.asset == asset, w.created_at >= since,
                w.status.not_in(sorted(model.VOIDING)))).scalars().all()
            if sum(recent) + value > asset_cfg.daily_withdrawal_limit:
                raise FailedPrecondition(f"amount {value} would exceed the daily withdrawal limit of "
                                         f"{asset_cfg.daily_withdrawal_limit} {asset} ({sum(recent)} used)")
            withdrawal_id, hold_id = new_id(), new_id()
            total = value + asset_cfg.withdrawal_fee
            (result,) = apply_commands(conn, [Command(
                kind="withdrawal_hold", actor=client, reference=withdrawal_id, not_frozen=(account,),
                hold_creates=(HoldCreate(account, asset, total, reference=withdrawal_id, hold_id=hold_id),))],
                self.ids)
            if isinstance(result, CustodyError):
                raise result
            stamp = store.now()
            row = {"id": withdrawal_id, "client": client, "client_key": key, "request_hash": request_hash,
                   "account_id": account, "asset": asset, "chain": asset_cfg.chain, "to_address": address,
                   "amount": value, "fee": asset_cfg.withdrawal_fee, "network_fee": None, "status": None,
                   "reason": None, "hold_id": hold_id, "batch_id": None, "txid": None, "requeues": 0,
                   "created_at": stamp, "updated_at": stamp}
            needed = self._approvals_needed(value)
            first_status = model.APPROVED if needed == 0 else model.PENDING_REVIEW
            model.check_transition(None, first_status)
            row["status"] = first_status
            conn.execute(insert(t.withdrawals).values(**row))
            why = "auto-approved: at or below the auto-approval amount" if needed == 0 else "awaiting staff review"
            conn.info[LAST_EVENT] = store.emit_events(conn, [store.record(conn, row, None, client, why)])
            return row, True

        try:
            return self._write(work)
        except IntegrityError:
            # The same key committed by a concurrent request (another instance): answer as a replay.
            with read_transaction(self.engine) as conn:
                first = replay(conn)
            if first is None:
                raise
            return first, False

    def get(self, withdrawal_id: str) -> tuple[dict, list[dict]]:
        withdrawal_id = parse_id(withdrawal_id, "withdrawal_id")
        with read_transaction(self.engine) as conn:
            return store.load(conn, withdrawal_id), store.history(conn, withdrawal_id)

    def list_for_account(self, account_id: str, page_size: int = 0,
                         page_token: str = "") -> tuple[list[tuple[dict, list[dict]]], str]:
        """A page of the account's withdrawals, newest first, each with its history; and the token
        for the next page. Ids sort by creation time (new_id)."""
        account = parse_account_id(account_id)
        page = parse_page(page_size, page_token, f"withdrawals:{account}", key_type=str)
        w = t.withdrawals.c
        with read_transaction(self.engine) as conn:
            if conn.execute(select(t.accounts.c.id).where(t.accounts.c.id == account)).first() is None:
                raise NotFound(f"account {account} does not exist")  # as ListDeposits and GetBalances say
            rows, token = page.read(conn, select(t.withdrawals).where(w.account_id == account), w.id,
                                    newest_first=True)
            history = store.histories_of(conn, [r.id for r in rows])
            return [(dict(r._mapping), history.get(r.id, [])) for r in rows], token

    def cancel(self, client: str, withdrawal_id: str) -> dict:
        withdrawal_id = parse_id(withdrawal_id, "withdrawal_id")

        def work(conn):
            w = store.load(conn, withdrawal_id, for_update=True)
            if w["client"] != client:
                raise NotFound(f"withdrawal {withdrawal_id[:40]!r} does not exist")
            if w["status"] == model.CANCELLED:
                return w
            if w["status"] not in model.CANCELLABLE:
                raise FailedPrecondition(f"withdrawal {withdrawal_id} is {w['status']}: it can be cancelled only "
                                         "until signing starts")
            # A QUEUED one leaves its batch: the batch job sees it and rebuilds without it.
            return store.move(conn, self.ids, w, model.CANCELLED, client, "cancelled by the client",
                              batch_id=None)[0]
        return self._write(work)

    # -- staff ----------------------------------------------------------------------------------------
    def _approvals_needed(self, amount: int) -> int:
        return model.approvals_needed(amount, self.rules.auto_approve_max, self.rules.two_approvals_above)

    def approval_digest(self, w: dict) -> bytes:
        return model.content_digest(w["id"], w["account_id"], w["asset"], w["chain"], w["to_address"],
                                    w["amount"], w["fee"])

    def approval_message(self, w: dict) -> bytes:
        """What a staff member signs with Ed25519 to approve w (hsm/approvals.py format)."""
        return approval_message(w["chain"], self.approval_digest(w))

    def approve(self, staff: str, withdrawal_id: str, signature: bytes) -> dict:
        withdrawal_id = parse_id(withdrawal_id, "withdrawal_id")
        keys = {s.name: s.public_key for s in self.rules.staff}
        if staff not in keys:
            raise FailedPrecondition(f"{staff} has no approval key in the configuration")

        def work(conn):
            w = store.load(conn, withdrawal_id, for_update=True)
            a = t.withdrawal_approvals.c
            stored = dict(conn.execute(select(a.approver, a.signature).where(a.withdrawal_id == w["id"])).all())
            if staff == w["client"]:
                raise FailedPrecondition(f"{staff} requested withdrawal {withdrawal_id} and can't approve it")
            message = self.approval_message(w)
            if not _verifies(keys[staff], signature, message):
                raise InvalidArgument("the approval signature does not verify for this withdrawal and "
                                      f"{staff}'s key")
            if w["status"] != model.PENDING_REVIEW:
                # Reviewed already: a retry by one who approved it (the first reply was lost) gets the
                # withdrawal as it is now, and nothing else is written or moved: moved to APPROVED again
                # from QUEUED..BROADCAST, it was batched and paid a second time.
                if staff in stored:
                    return w
                raise FailedPrecondition(f"withdrawal {withdrawal_id} is {w['status']}, not PENDING_REVIEW")
            # Only approvals by staff listed now, under their key now, count: someone removed from
            # the list (gone, or their key stolen) or whose key was replaced no longer approves.
            given = {name for name, stored_signature in stored.items()
                     if name in keys and _verifies(keys[name], stored_signature, message)}
            if staff in given:
                # A retry (the first reply was lost): the approval counts once; the withdrawal as it is now.
                return w
            if staff in stored:  # given under a key replaced since: this one, under the current key, counts
                conn.execute(update(t.withdrawal_approvals).where(a.withdrawal_id == w["id"], a.approver == staff)
                             .values(signature=bytes(signature), created_at=store.now()))
            else:
                conn.execute(insert(t.withdrawal_approvals).values(
                    withdrawal_id=w["id"], approver=staff, signature=bytes(signature), created_at=store.now()))
            given.add(staff)
            needed = self._approvals_needed(w["amount"])
            if len(given) >= needed:
                w, _ = store.move(conn, self.ids, w, model.APPROVED, staff,
                                  f"approved by {', '.join(sorted(given))}")
            else:
                store.emit_events(conn, [("withdrawal.approval", {
                    "withdrawal_id": w["id"], "approver": staff, "approvals": len(given), "needed": needed})])
            return w
        return self._write(work)

    def reject(self, staff: str, withdrawal_id: str, reason: str) -> dict:
        withdrawal_id = parse_id(withdrawal_id, "withdrawal_id")
        reason = parse_reason(reason)

        def work(conn):
            w = store.load(conn, withdrawal_id, for_update=True)
            if w["status"] == model.REJECTED and store.history(conn, withdrawal_id)[-1]["actor"] == staff:
                return w  # a retry (the first reply was lost): rejected once, by this staff member
            if w["status"] != model.PENDING_REVIEW:
                raise FailedPrecondition(f"withdrawal {withdrawal_id} is {w['status']}, not PENDING_REVIEW")
            return store.move(conn, self.ids, w, model.REJECTED, staff, reason)[0]
        return self._write(work)

    def review_list(self, status: str = model.PENDING_REVIEW, page_size: int = 0,
                    page_token: str = "") -> tuple[list[tuple[dict, dict]], str]:
        """A page of the withdrawals in status, oldest first, with the facts a reviewer needs;
        and the token for the next page."""
        if status not in model.STATUSES:
            raise InvalidArgument(f"status must be one of {', '.join(model.STATUSES)}: {str(status)[:40]!r}")
        page = parse_page(page_size, page_token, f"review:{status}", key_type=str)
        w = t.withdrawals.c
        with read_transaction(self.engine) as conn:
            rows, token = page.read(conn, select(t.withdrawals).where(w.status == status), w.id)
            facts = page_facts(conn, rows, store.now())
        out = []
        for r in rows:
            asset = self.config.asset(r.asset)
            out.append((dict(r._mapping), {
                **facts[r.id], "daily_limit": asset.daily_withdrawal_limit, "max_withdrawal": asset.max_withdrawal,
                "approvals_needed": self._approvals_needed(r.amount)}))
        return out, token

    # -- batches held for staff (custody/withdrawals/resolve.py) -----------------------------------------
    def batches(self, status: str = "NEEDS_STAFF", page_size: int = 0, page_token: str = "") -> tuple[list[dict], str]:
        """A page of the batches in status, oldest first, and the token for the next page."""
        from custody.withdrawals.resolve import list_batches

        if status not in BATCH_STATUSES:
            raise InvalidArgument(f"status must be one of {', '.join(BATCH_STATUSES)}: {(status or '')[:40]!r}")
        return list_batches(self.engine, status, parse_page(page_size, page_token, f"batches:{status}", key_type=str))

    def resolve_batch(self, staff: str, batch_id: str, txid: str, reason: str) -> tuple[dict, list[dict]]:
        """Settles a NEEDS_STAFF batch on chain proof: txid must be the confirmed spend of its inputs."""
        from custody.withdrawals.resolve import resolve_batch

        return resolve_batch(self, staff, batch_id, txid, reason)


def _verifies(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(bytes(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True
