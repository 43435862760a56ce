"""The Bitcoin withdrawal job: batch, select coins, sign, store, broadcast, confirm, complete.

Each step is one database transaction that records where the batch is, so a
crash at any point resumes from the stored state (docs/withdrawals.md):
  APPROVED withdrawals -> a QUEUED batch (UTXOs reserved, PSBT stored, same transaction)
  QUEUED -> SIGNING (committed before asking the signer) -> SIGNED (raw stored before any broadcast)
  SIGNED -> BROADCAST (the same bytes, re-sent until the mempool or a block shows them)
  BROADCAST -> CONFIRMING (the scanner saw our reserved outpoints spent) -> COMPLETED (holds posted)
A batch is identified by the outpoints it reserves (FAILURE_MODES 2): any of
its attempts (fee bumps spend the same inputs) confirming completes it once.
Coin selection and consolidation are in coins.py, node refusals (self-spend)
and foreign spends (staff) in refusal.py: parts of the same job.
"""
from __future__ import annotations

import logging
import math

from sqlalchemy import Engine, delete, insert, select, update

from chains.base import Coin, NodeError, NodeUnavailable, Payment
from custody.config import Config
from custody.db import schema as t
from custody.db.engine import read_transaction
from custody.db.types import as_utc
from custody.deposits.store import load_cursor
from custody.ledger.engine import AccountIds
from custody.ledger.model import new_id
from custody.withdrawals import model, store
from custody.withdrawals.coins import CoinsMixin, signing_path
from custody.withdrawals.completed import CompletedWatchMixin
from custody.withdrawals.refusal import CANCEL, CANCELLED, CANCELLING, CHAIN, NEEDS_STAFF, PAYMENT, RefusalMixin

log = logging.getLogger(__name__)


class CrashForTest(BaseException):
    """Raised at a named step when a test asks (crash_at): the process 'dies' there."""


class BitcoinSender(CoinsMixin, RefusalMixin, CompletedWatchMixin):
    def __init__(self, config: Config, engine: Engine, plugin, signer, notify, crash_at: str | None = None,
                 clock=None):
        self.config = config
        self.rules = config.withdrawals
        self.engine = engine
        self.plugin = plugin
        self.signer = signer
        self.notify = notify
        self.crash_at = crash_at
        self.ids = AccountIds()
        self.chain_cfg = config.chain(CHAIN)
        self.clock = clock or store.now  # tests move time forward to trigger fee bumps

    def _crash(self, step: str) -> None:
        if self.crash_at == step:
            raise CrashForTest(step)

    def _write(self, work):
        with self.ids.write_transaction(self.engine) as conn:
            result = work(conn)
            last = conn.execute(select(t.event_sequence.c.last_cursor)).scalar_one()
        self.notify(last)
        return result

    chain = CHAIN

    def run(self) -> None:
        """One scheduled pass (custody/jobs): one sender per chain across instances, never raises."""
        from custody.jobs.locks import exclusive

        with exclusive(self.engine, f"custody.withdrawals.{CHAIN}") as mine:
            if not mine:
                return
            try:
                self.tick()
            except Exception:  # a node or database outage, or a bug: logged, the next run resumes
                log.exception("withdrawal job (%s) failed; the next run resumes from the stored state", CHAIN)

    def tick(self) -> None:
        """One pass over every step; safe to run again at any time. An error in one batch's step
        is logged with the batch's id and the pass goes on with the others (one batch that can't
        move must not stop every payment); the first such error is raised at the end of the pass."""
        errors: list[Exception] = []
        for batch_id in self._batches("QUEUED", "SIGNING"):
            self._steps(errors, batch_id, self.sign)
        for batch_id in self._batches("SIGNED", "BROADCAST", "CONFIRMING", CANCELLING):
            self._steps(errors, batch_id, self.follow)
        for batch_id in self._watched(CANCELLED):
            self._steps(errors, batch_id, self.watch_cancelled)
        for batch_id in self._watched(model.COMPLETED):
            self._steps(errors, batch_id, self.watch_completed)
        for batch_id in self._batches(NEEDS_STAFF):
            self._steps(errors, batch_id, self.retry_held)
        for _ in range(self.rules.max_batches_per_pass):
            batch_id = self.build()
            if batch_id is None:
                break
            self._steps(errors, batch_id, self.sign, self.follow)  # follow does nothing if the signer refused it
        batch_id = self.consolidate_when_cheap()
        if batch_id:
            self._steps(errors, batch_id, self.sign, self.follow)
        if errors:
            raise errors[0]

    @staticmethod
    def _steps(errors: list[Exception], batch_id: str, *steps) -> None:
        try:
            for step in steps:
                step(batch_id)
        except Exception as exc:  # CrashForTest is a BaseException: a test's "crash" still stops the pass
            log.exception("batch %s: %s failed; the other batches go on", batch_id, step.__name__)
            errors.append(exc)

    def _batches(self, *statuses) -> list[str]:
        b = t.withdrawal_batches.c
        with read_transaction(self.engine) as conn:
            return list(conn.execute(select(b.id).where(b.chain == CHAIN, b.status.in_(statuses))
                                     .order_by(b.created_at, b.id)).scalars())

    # -- 1. batch and reserve -----------------------------------------------------------------------------
    def build(self) -> str | None:
        """APPROVED withdrawals -> one QUEUED batch with its UTXOs reserved, or None."""
        fee_rate = min(self.plugin.fee_rate() or self.rules.fallback_fee_rate, self.rules.max_fee_rate)

        def work(conn):
            w = t.withdrawals.c
            # A frozen account's approved withdrawals wait, unbatched, until staff unfreeze it: the
            # freeze may be a deposit reversed by a reorg (FAILURE_MODES 6) or a staff decision.
            frozen = select(t.accounts.c.id).where(t.accounts.c.frozen)
            q = (select(t.withdrawals).where(w.chain == CHAIN, w.status == model.APPROVED, w.account_id.not_in(frozen))
                 .order_by(w.created_at, w.id).limit(self.rules.max_batch))
            if conn.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            pending = self._fit(conn, [dict(r._mapping) for r in conn.execute(q)])
            if not pending:
                return None
            spendable = self._spendable(conn, fee_rate)
            coins = self._select(spendable, pending, fee_rate)
            if coins is None:
                # Not all of them: those the coins can pay go now, the others wait (APPROVED);
                # coins that exist but not within one transaction are merged first.
                pending = self._payable(conn, spendable, pending, fee_rate)
                if not pending:
                    return None
                coins = self._select(spendable, pending, fee_rate)
                if coins is None:
                    return self._consolidate(conn, spendable, pending, fee_rate)
            payments = [Payment(p["to_address"], p["amount"]) for p in pending]
            unsigned = self.plugin.build_transaction(payments, coins, self._change(), fee_rate)
            batch_id = self._insert_batch(conn, "withdrawals", unsigned, fee_rate, coins)
            for p in pending:
                store.move(conn, self.ids, p, model.QUEUED, "withdrawal-job", f"batch {batch_id}", batch_id=batch_id)
            return batch_id
        return self._write(work)

    def _change(self):
        return self.plugin.derive_address(self.chain_cfg.hot_xpub, 0, change=False)

    def _insert_batch(self, conn, kind: str, unsigned, fee_rate: int, coins: list[Coin]) -> str:
        batch_id, stamp = new_id(), store.now()
        conn.execute(insert(t.withdrawal_batches).values(
            id=batch_id, chain=CHAIN, status=model.QUEUED, kind=kind, reason=None, psbt=unsigned.payload,
            fee_rate=fee_rate, fee=unsigned.fee, txid=None, confirm_height=None, broadcast_at=None,
            created_at=stamp, updated_at=stamp))
        # The primary key makes a second reservation of an outpoint fail the whole transaction.
        conn.execute(insert(t.utxo_reservations), [
            {"chain": CHAIN, "txid": c.txid, "output_index": c.index, "batch_id": batch_id} for c in coins])
        return batch_id

    def _fit(self, conn, pending: list[dict]) -> list[dict]:
        """The oldest withdrawals whose total stays within the signer's per-transaction maximum
        (the others wait for the next batch); one alone above it can never be signed: it fails."""
        limit, total, fit = self.rules.signer_max_per_transaction, 0, []
        for p in pending:
            if p["amount"] > limit:
                store.move(conn, self.ids, p, model.FAILED, "withdrawal-job",
                           f"amount {p['amount']} is above the signer's maximum of {limit} per transaction")
            elif total + p["amount"] <= limit:
                fit.append(p)
                total += p["amount"]
        return fit

    # -- 2. sign ------------------------------------------------------------------------------------------
    def _members(self, conn, batch_id: str) -> list[dict]:
        w = t.withdrawals.c
        return [dict(r._mapping) for r in conn.execute(
            select(t.withdrawals).where(w.batch_id == batch_id).order_by(w.created_at, w.id))]

    def _batch(self, conn, batch_id: str, lock: bool = True) -> dict:
        """The batch row. In a write transaction on PostgreSQL it is read FOR UPDATE: every caller
        decides on its status and then writes it, and a change committed meanwhile (a staff
        settlement from another instance) must be waited for and seen, not overwritten. SQLite's
        write lock already orders the two. lock=False for reads in a read-only snapshot."""
        query = select(t.withdrawal_batches).where(t.withdrawal_batches.c.id == batch_id)
        if lock and conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return dict(conn.execute(query).one()._mapping)

    def _set_batch(self, conn, batch_id: str, **values) -> None:
        conn.execute(update(t.withdrawal_batches).where(t.withdrawal_batches.c.id == batch_id)
                     .values(updated_at=store.now(), **values))

    @staticmethod
    def _first_frozen(conn, members: list[dict]) -> int | None:
        """A member's frozen account, if any. On PostgreSQL every member's account row is read FOR
        SHARE (all of them: a row a filter skips is not waited for): a freeze committing meanwhile
        is waited for and seen, and a later freeze waits until the batch is SIGNING, from where it
        goes on. On SQLite the write lock already orders the two."""
        accounts = t.accounts.c
        query = select(accounts.id, accounts.frozen).where(accounts.id.in_({m["account_id"] for m in members}))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(read=True)
        return min((row.id for row in conn.execute(query) if row.frozen), default=None)

    def sign(self, batch_id: str) -> None:
        def start(conn):
            batch = self._batch(conn, batch_id)
            if batch["status"] not in (model.QUEUED, model.SIGNING):
                return None  # a stale caller (another instance dissolved, signed or sent it since)
            members = self._members(conn, batch_id)
            if batch["status"] == model.QUEUED:
                expected = len(_outputs_paid(batch["psbt"])) if batch["psbt"] else 0
                if len(members) != expected or any(m["status"] != model.QUEUED for m in members):
                    # A withdrawal was cancelled out of it: dissolve, the rest goes back to the queue.
                    self._dissolve(conn, batch_id, members, "a withdrawal left the batch before signing",
                                   requeue=True, counted=False)
                    return None
                frozen = self._first_frozen(conn, members)
                if frozen is not None:
                    # Frozen since the batch was built: the others go back to the queue without it.
                    self._dissolve(conn, batch_id, members, f"account {frozen} was frozen before signing",
                                   requeue=True, counted=False)
                    return None
                for m in members:
                    store.move(conn, self.ids, m, model.SIGNING, "withdrawal-job", None)
                self._set_batch(conn, batch_id, status=model.SIGNING)
            return batch
        batch = self._write(start)
        if batch is None:
            return
        self._crash("before_sign")
        result = self.signer.sign(CHAIN, batch["psbt"], self._keys(self._reserved_coins(batch_id)),
                                  reference=batch_id, withdrawals=self._approvals(batch_id))
        self._crash("after_sign")
        if not result.signed:
            reason = f"signer refused ({result.refused_rule}): {result.refused_reason}"
            self._write(lambda conn: self._refused(conn, batch_id, reason))
            return
        raw = result.raw_transaction or self.plugin.combine(None, [result.signed_payload])
        txid = self.plugin.txid(raw)

        def stored(conn):
            if self._batch(conn, batch_id)["status"] != model.SIGNING:
                # Dissolved or taken on by another instance while the signer worked: these bytes
                # are never sent (its inputs may be free again, or another attempt is on its way).
                log.warning("batch %s left SIGNING while it was signed; the signature is dropped", batch_id)
                return
            self._store_attempt(conn, batch_id, txid, raw, result.fee or batch["fee"], batch["fee_rate"])
            for m in self._members(conn, batch_id):
                store.move(conn, self.ids, m, model.SIGNED, "withdrawal-job", None, txid=txid)
            self._set_batch(conn, batch_id, status=model.SIGNED)
        self._write(stored)
        self._crash("after_store")

    def _store_attempt(self, conn, batch_id: str, txid: str, raw: bytes, fee: int, fee_rate: int,
                       kind: str = PAYMENT) -> bool:
        """Records a signed transaction of the batch (False if it is already stored). Every
        batch reserves its own outpoints, so two batches can never share a transaction."""
        a = t.withdrawal_attempts.c
        owner = conn.execute(select(a.batch_id).where(a.txid == txid)).scalar()
        if owner == batch_id:
            return False
        if owner is not None:
            raise RuntimeError(f"transaction {txid} already belongs to batch {owner}")
        conn.execute(insert(t.withdrawal_attempts).values(
            txid=txid, batch_id=batch_id, kind=kind, raw=raw, fee=fee, fee_rate=fee_rate, created_at=self.clock()))
        return True

    def _refused(self, conn, batch_id: str, reason: str) -> None:
        """The signer said no: withdrawals whose destination the refusal names fail with
        the reason (holds released); the others go back to the queue. No retry loop. An approved
        withdrawal the signer paid before with other coins (requeued after a node refusal) is
        named by its id instead (hsm/policy.py _paid_once): it alone fails, not its whole new
        batch. A mere id is not enough: an approvals refusal lists the others' ids in its details."""
        if self._batch(conn, batch_id)["status"] != model.SIGNING:
            return  # dissolved or taken on meanwhile: the refusal is of a request that no longer stands
        members = self._members(conn, batch_id)
        named = [m for m in members if m["to_address"] in reason
                 or f"withdrawal {m['id']} was paid before" in reason] or members
        for m in members:
            if m in named:
                store.move(conn, self.ids, m, model.FAILED, "signer", reason, batch_id=None)
            else:
                store.move(conn, self.ids, m, model.APPROVED, "withdrawal-job",
                           f"requeued: another withdrawal of its batch was refused ({reason})", batch_id=None)
        conn.execute(delete(t.utxo_reservations).where(t.utxo_reservations.c.batch_id == batch_id))
        self._set_batch(conn, batch_id, status=model.FAILED, reason=reason)

    def _dissolve(self, conn, batch_id: str, members: list[dict], reason: str, requeue: bool,
                  status: str = model.FAILED, keep_reservations: bool = False, counted: bool = True) -> None:
        """counted: the requeue counts against each member's max_requeues (the node refused its own
        transaction). A dissolution caused by another member (cancelled, account frozen) is not
        counted: the others did nothing wrong, and a QUEUED withdrawal can't be failed anyway."""
        for m in members:
            if m["status"] in model.TERMINAL:
                continue
            if requeue and not counted:
                store.move(conn, self.ids, m, model.APPROVED, "withdrawal-job", f"requeued: {reason}", batch_id=None)
            elif requeue and m["requeues"] < self.rules.max_requeues:
                store.move(conn, self.ids, m, model.APPROVED, "withdrawal-job", f"requeued: {reason}",
                           batch_id=None, requeues=m["requeues"] + 1)
            else:
                store.move(conn, self.ids, m, model.FAILED, "withdrawal-job", reason, batch_id=None)
        if not keep_reservations:
            conn.execute(delete(t.utxo_reservations).where(t.utxo_reservations.c.batch_id == batch_id))
        self._set_batch(conn, batch_id, status=status, reason=reason)

    # -- 3. broadcast, confirm, complete ------------------------------------------------------------------------
    def _state(self, batch_id: str):
        """(batch, attempts by txid in the order stored, the spends of its reserved outpoints, scan cursor)."""
        with read_transaction(self.engine) as conn:
            batch = self._batch(conn, batch_id, lock=False)
            attempts = {r.txid: dict(r._mapping) for r in conn.execute(
                select(t.withdrawal_attempts).where(t.withdrawal_attempts.c.batch_id == batch_id)
                .order_by(t.withdrawal_attempts.c.created_at, t.withdrawal_attempts.c.fee_rate))}
            spends = self._spends(conn, batch_id)
            cursor = load_cursor(conn, CHAIN)
        return batch, attempts, spends, cursor

    @staticmethod
    def _spends(conn, batch_id: str) -> list:
        """(spent_txid, spent_height) of each of the batch's reserved outpoints."""
        r, u = t.utxo_reservations.c, t.utxos.c
        return conn.execute(select(u.spent_txid, u.spent_height).select_from(t.utxo_reservations)
                            .join(t.utxos, (u.chain == r.chain) & (u.txid == r.txid) & (u.output_index == r.output_index))
                            .where(r.batch_id == batch_id)).all()

    def follow(self, batch_id: str) -> None:
        """Where are the batch's reserved outpoints? Spent by a payment attempt: confirm and
        complete; by its self-spend: fail or requeue at depth; by anything else: staff."""
        batch, attempts, spends, cursor = self._state(batch_id)
        if batch["status"] not in (model.SIGNED, model.BROADCAST, model.CONFIRMING, CANCELLING):
            return
        payments = [a for a in attempts.values() if a["kind"] == PAYMENT]
        cancels = [a for a in attempts.values() if a["kind"] == CANCEL]
        spenders = {s.spent_txid for s in spends if s.spent_txid is not None}
        foreign = spenders - set(attempts)
        if foreign:
            self._needs_staff(batch_id, f"its inputs were spent by {', '.join(sorted(foreign))}, which is none "
                                        "of its transactions", "alert.withdrawal_inputs_spent_elsewhere")
            return
        if spenders and all(s.spent_txid is not None for s in spends):
            (txid,) = spenders  # one block holds one spend of an outpoint; all our attempts spend them all
            height = max(s.spent_height for s in spends)
            if attempts[txid]["kind"] == PAYMENT:
                return self._confirmed(batch_id, attempts[txid], height)
            return self._cancel_confirmed(batch_id, attempts[txid], height, cursor.height)
        if batch["status"] == model.CONFIRMING:  # a reorg took its block away
            self._write(lambda conn: self._back_to_broadcast(conn, batch_id))
            batch = {**batch, "status": model.BROADCAST}
        if batch["status"] == CANCELLING:
            self._push(batch_id, cancels[-1])
            return
        self._broadcast(batch_id, batch, payments)

    def _broadcast(self, batch_id: str, batch: dict, attempts: list[dict]) -> None:
        if any(self.plugin.in_mempool(a["txid"]) for a in attempts):
            if batch["status"] == model.SIGNED:
                self._write(lambda conn: self._mark_broadcast(conn, batch_id))
            elif batch["status"] == model.BROADCAST and self._stale(attempts[-1]):
                self._replace(batch_id, batch)
            return
        # None in the mempool (never sent, dropped, or the mempool was wiped): send the
        # highest fee first; every attempt pays the same withdrawals from the same inputs.
        refusal = None
        for attempt in reversed(attempts):
            try:
                self.plugin.broadcast(attempt["raw"])
                break
            except NodeUnavailable as exc:
                # No answer (FAILURE_MODES 1): the node may well have accepted it. Nothing is
                # rebuilt; the next pass finds it in the mempool or sends the same bytes again.
                log.warning("batch %s: broadcast of %s unanswered (%s); the same bytes are re-sent next pass",
                            batch_id, attempt["txid"], exc)
                return
            except NodeError as exc:
                refusal = exc
        else:
            self._rejected(batch_id, batch, attempts, refusal)
            return
        self._crash("after_broadcast")
        if batch["status"] in (model.SIGNED,):
            self._write(lambda conn: self._mark_broadcast(conn, batch_id))

    # -- fee bumping (RBF) -------------------------------------------------------------------------------------
    def _stale(self, latest: dict) -> bool:
        return (self.clock() - as_utc(latest["created_at"])).total_seconds() >= self.rules.replace_after_s

    def _replace(self, batch_id: str, batch: dict) -> None:
        """A replacement of the latest attempt: same inputs, same payments, a higher fee
        taken from the change. It is stored before it is sent. The earlier attempts stay
        valid and watched: whichever confirms completes the batch, once. Nothing here
        fails a withdrawal: a refused bump leaves the earlier attempt to confirm."""
        from chains.bitcoin.psbt import bump

        old_rate = batch["fee_rate"]
        rate = min(max(old_rate + 1, math.ceil(old_rate * self.rules.replace_fee_multiplier)), self.rules.max_fee_rate)
        if rate <= old_rate:
            log.warning("batch %s: unconfirmed at the maximum fee rate %d sat/vB; not bumped", batch_id, old_rate)
            return
        try:
            unsigned, fee = bump(batch["psbt"], rate)
        except NodeError as exc:
            log.warning("batch %s: can't bump the fee: %s", batch_id, exc)
            return
        result = self.signer.sign(CHAIN, unsigned, self._keys(self._reserved_coins(batch_id)),
                                  reference=f"{batch_id}:bump:{rate}", withdrawals=self._approvals(batch_id))
        if not result.signed:
            reason = f"fee bump to {rate} sat/vB refused by the signer ({result.refused_rule}): {result.refused_reason}"
            log.warning("batch %s: %s", batch_id, reason)
            self._write(lambda conn: self._set_batch(conn, batch_id, reason=reason))
            return
        raw = result.raw_transaction or self.plugin.combine(None, [result.signed_payload])
        txid = self.plugin.txid(raw)

        def stored(conn) -> bool:
            if not self._store_attempt(conn, batch_id, txid, raw, fee, rate):
                return False  # the signer gave back a transaction we already have
            if self._batch(conn, batch_id)["status"] != model.BROADCAST:
                return False  # confirmed meanwhile: keep the signed bytes, send nothing
            self._set_batch(conn, batch_id, psbt=unsigned, fee_rate=rate, fee=fee, reason=None)
            why = f"fee bumped to {rate} sat/vB ({fee} sats): replacement {txid}"
            events = []
            for m in self._members(conn, batch_id):
                conn.execute(update(t.withdrawals).where(t.withdrawals.c.id == m["id"]).values(txid=txid))
                kind, payload = store.record(conn, {**m, "txid": txid}, m["status"], "withdrawal-job", why)
                events.append(("withdrawal.fee_bumped", payload))
            store.emit_events(conn, events)
            return True
        if not self._write(stored):
            return
        self._crash("after_bump_store")
        try:
            self.plugin.broadcast(raw)
        except NodeError as exc:
            # bcoin never replaces (DESIGN 8); Core refuses a bump that pays too little.
            log.info("batch %s: replacement %s not accepted (%s); the earlier attempt may still confirm",
                     batch_id, txid, exc)

    def _mark_broadcast(self, conn, batch_id: str) -> None:
        for m in self._members(conn, batch_id):
            if m["status"] == model.SIGNED:
                store.move(conn, self.ids, m, model.BROADCAST, "withdrawal-job", None)
        self._set_batch(conn, batch_id, status=model.BROADCAST, broadcast_at=store.now())

    def _back_to_broadcast(self, conn, batch_id: str) -> None:
        for m in self._members(conn, batch_id):
            store.move(conn, self.ids, m, model.BROADCAST, "withdrawal-job", "its block left the best chain")
        self._set_batch(conn, batch_id, status=model.BROADCAST, confirm_height=None)

    def _approvals(self, batch_id: str) -> list:
        """The batch's withdrawals with their staff approvals, for the signer to verify itself."""
        from hsm.approvals import Approval, WithdrawalApproval

        a = t.withdrawal_approvals.c
        with read_transaction(self.engine) as conn:
            members = self._members(conn, batch_id)
            given = conn.execute(select(a.withdrawal_id, a.approver, a.signature)
                                 .where(a.withdrawal_id.in_([m["id"] for m in members]))
                                 .order_by(a.withdrawal_id, a.approver)).all()
        by_id: dict[str, list] = {}
        for g in given:
            by_id.setdefault(g.withdrawal_id, []).append(Approval(g.approver, bytes(g.signature)))
        return [WithdrawalApproval(m["id"], m["account_id"], m["asset"], m["to_address"], m["amount"], m["fee"],
                                   tuple(by_id.get(m["id"], ()))) for m in members]

    def _keys(self, coins: list[Coin]) -> list[tuple[str, str]]:
        return sorted({(self.rules.signer_key_id, c.derivation_path) for c in coins})

    def _reserved_coins(self, batch_id: str) -> list[Coin]:
        r, u, a = t.utxo_reservations.c, t.utxos.c, t.chain_addresses.c
        with read_transaction(self.engine) as conn:
            rows = conn.execute(select(u.txid, u.output_index, u.amount, u.wallet, a.watch_key, a.branch, a.key_index)
                                .select_from(t.utxo_reservations)
                                .join(t.utxos, (u.chain == r.chain) & (u.txid == r.txid) & (u.output_index == r.output_index))
                                .join(t.chain_addresses, a.id == u.address_id).where(r.batch_id == batch_id)
                                .order_by(u.txid, u.output_index)).all()
        return [Coin(x.txid, x.output_index, x.amount, bytes(x.watch_key),
                     signing_path(self.rules, x.wallet, x.branch, x.key_index)) for x in rows]

    def _spent_still(self, conn, batch_id: str, txid: str, height: int) -> int | None:
        """In the transaction that acts on a spend: the scan cursor's height if the batch's reserved
        outpoints are still all spent by txid at height, else None (the scanner unwound that block
        since follow read it). The cursor row is locked first, as the scanner locks it first, so an
        unwind waits for this transaction instead of slipping in before its commit."""
        cursor = load_cursor(conn, CHAIN, for_update=True)
        spends = self._spends(conn, batch_id)
        if cursor is None or not spends or any(s.spent_txid != txid for s in spends):
            return None
        if max(s.spent_height for s in spends) != height:
            return None
        return cursor.height

    def _confirmed(self, batch_id: str, attempt: dict, height: int) -> None:
        confirmations = self.config.asset("BTC").confirmations  # the chain's native asset

        def work(conn):
            view_now = self._spent_still(conn, batch_id, attempt["txid"], height)
            if view_now is None:
                return  # unwound meanwhile: the next pass sees it again, or sends it again
            depth = view_now - height + 1
            batch = self._batch(conn, batch_id)
            members = self._members(conn, batch_id)
            if batch["status"] in (model.SIGNED, model.BROADCAST, CANCELLING):
                # CANCELLING: a refused attempt was mined after all; it paid, the self-spend is moot.
                for m in members:
                    if m["status"] == model.SIGNED:
                        m, _ = store.move(conn, self.ids, m, model.BROADCAST, "withdrawal-job", None)
                    store.move(conn, self.ids, m, model.CONFIRMING, "scanner", f"in block {height}",
                               txid=attempt["txid"])
                self._set_batch(conn, batch_id, status=model.CONFIRMING, confirm_height=height,
                                broadcast_at=batch["broadcast_at"] or store.now())
                members = self._members(conn, batch_id)
            if depth < confirmations:
                return
            self._crash("before_complete")
            if members:
                shares = model.split_fee(attempt["fee"], [m["amount"] for m in members])
                for m, share in zip(members, shares):
                    store.move(conn, self.ids, m, model.COMPLETED, "withdrawal-job",
                               f"{depth} confirmations", network_fee=share, txid=attempt["txid"])
            else:  # a consolidation: the hot wallet paid only the fee
                self._book_fee(conn, batch_id, attempt, "utxo_consolidation_fee")
            self._set_batch(conn, batch_id, status=model.COMPLETED, txid=attempt["txid"], fee=attempt["fee"],
                            fee_rate=attempt["fee_rate"])
        self._write(work)


def _outputs_paid(psbt_bytes: bytes) -> list:
    """The payment outputs of a stored PSBT (all but a change output with a derivation hint)."""
    from embit.psbt import PSBT

    p = PSBT.parse(psbt_bytes)
    return [o for o in p.outputs if not o.bip32_derivations]
