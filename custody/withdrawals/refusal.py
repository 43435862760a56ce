"""Node refusals and spends that are none of ours, for the Bitcoin withdrawal job (a part of
BitcoinSender; docs/withdrawals.md "Node refusal: a self-spend first" and "Inputs spent by
something else: staff").

A refused transaction is still validly signed and could be mined later, so a refused
batch's inputs are first spent back to the hot wallet by a self-spend (stored before it
is sent); its withdrawals fail or are requeued only once that self-spend is confirmed,
and its outpoints stay watched while a reorg could undo it.
"""
from __future__ import annotations

import logging
import math

from sqlalchemy import select

from chains.base import NodeError, NodeUnavailable
from custody.db import schema as t
from custody.db.engine import read_transaction
from custody.deposits.store import load_cursor
from custody.ledger.commands import Command, Idempotency
from custody.ledger.model import Posting
from custody.withdrawals import model, store

log = logging.getLogger(__name__)
CHAIN = "bitcoin"
# Batch states beyond the withdrawals' own.
CANCELLING = "CANCELLING"  # refused by the node: its inputs are being spent back to the hot wallet
CANCELLED = "CANCELLED"  # that self-spend confirmed; the withdrawals were failed or requeued
NEEDS_STAFF = "NEEDS_STAFF"  # inputs spent by a transaction that is none of ours: staff resolve it
# Attempt kinds.
PAYMENT, CANCEL = "payment", "cancel"
# BIP125 rule 4: a replacement pays at least this much more per vbyte of its own size.
MIN_RELAY_FEE_RATE = 1


class RefusalMixin:
    def _watched(self, status: str) -> list[str]:
        """Batches in status (CANCELLED, COMPLETED) whose transaction a reorg could still undo."""
        b = t.withdrawal_batches.c
        with read_transaction(self.engine) as conn:
            cursor = load_cursor(conn, CHAIN)
            if cursor is None:
                return []
            return list(conn.execute(select(b.id).where(
                b.chain == CHAIN, b.status == status,
                b.confirm_height >= cursor.height - self.chain_cfg.max_reorg_depth).order_by(b.created_at, b.id)
            ).scalars())

    # -- node refusal: spend the inputs back to ourselves before anything is failed or requeued ---------------
    def _rejected(self, batch_id: str, batch: dict, attempts: list[dict], exc: Exception) -> None:
        """The node refused every attempt. A refused transaction is still validly signed and
        could be mined later (it may have reached other nodes), so the withdrawals are not
        failed or requeued now: the batch's inputs are first spent back to the hot wallet by
        a self-spend paying a higher fee (stored before it is sent), and only when that
        self-spend is confirmed can no attempt pay anyone (docs/withdrawals.md)."""
        from chains.bitcoin.psbt import vsize

        coins = self._reserved_coins(batch_id)
        if any(self.plugin.spent_on_chain(c.txid, c.index) for c in coins):
            log.warning("batch %s: refused but an input is spent on chain; waiting for the scanner", batch_id)
            return
        # A consolidation too: only re-sent, one refused for good (an input gone with a reorg deeper
        # than the confirmations) kept its other coins reserved forever, and the withdrawals waiting
        # for the merge waited forever. Its self-spend gives them back as one coin of the hot wallet.
        reason = f"the node refused the transaction: {exc}"
        top = max(attempts, key=lambda a: a["fee_rate"])
        rate = min(max(top["fee_rate"] + 1, math.ceil(top["fee_rate"] * self.rules.replace_fee_multiplier)),
                   self.rules.max_fee_rate)
        change = self.plugin.derive_address(self.chain_cfg.hot_xpub, 0, change=False)
        min_fee = max(a["fee"] for a in attempts) + vsize(len(coins), [change.watch_key]) * MIN_RELAY_FEE_RATE
        try:
            unsigned = self.plugin.build_transaction([], coins, change, rate, min_fee=min_fee)
        except NodeError as err:
            self._needs_staff(batch_id, f"{reason}; no self-spend of its inputs is possible: {err}",
                              "alert.withdrawal_refused_not_cancellable")
            return
        result = self.signer.sign(CHAIN, unsigned.payload, self._keys(coins), reference=f"{batch_id}:cancel")
        if not result.signed:
            self._needs_staff(batch_id, f"{reason}; the signer refused the self-spend of its inputs "
                                        f"({result.refused_rule}): {result.refused_reason}",
                              "alert.withdrawal_refused_not_cancellable")
            return
        raw = result.raw_transaction or self.plugin.combine(None, [result.signed_payload])
        txid = self.plugin.txid(raw)

        def stored(conn) -> dict | None:
            if self._batch(conn, batch_id)["status"] not in (model.SIGNED, model.BROADCAST):
                return None
            self._store_attempt(conn, batch_id, txid, raw, unsigned.fee, rate, kind=CANCEL)
            why = (f"{reason}; its inputs are being spent back to the hot wallet by {txid} before it is "
                   "failed or requeued")
            self._set_batch(conn, batch_id, status=CANCELLING, reason=why)
            store.emit_events(conn, [store.record(conn, m, m["status"], "withdrawal-job", why)
                                     for m in self._members(conn, batch_id)])
            return {"txid": txid, "raw": raw}
        cancel = self._write(stored)
        if cancel is None:
            return
        log.warning("batch %s (%s): %s; its inputs are being spent back to the hot wallet by %s",
                    batch_id, batch["kind"], reason, cancel["txid"])
        self._crash("after_cancel_store")
        self._push(batch_id, cancel)

    def _push(self, batch_id: str, cancel: dict) -> None:
        """Sends the stored self-spend (again); a refusal waits for the next pass."""
        if self.plugin.in_mempool(cancel["txid"]):
            return
        try:
            self.plugin.broadcast(cancel["raw"])
        except (NodeError, NodeUnavailable) as exc:
            log.info("batch %s: self-spend %s not accepted yet (%s); sent again next pass",
                     batch_id, cancel["txid"], exc)

    def _cancel_confirmed(self, batch_id: str, attempt: dict, height: int, view: int) -> None:
        """The self-spend is in a block. At the asset's depth no attempt can pay anyone any
        more: the withdrawals fail or are requeued (on_node_rejection), the self-spend's fee
        is booked, and the reserved outpoints stay with this batch, watched."""
        if view - height + 1 < self.config.asset("BTC").confirmations:
            return

        def work(conn):
            view_now = self._spent_still(conn, batch_id, attempt["txid"], height)
            if view_now is None or view_now - height + 1 < self.config.asset("BTC").confirmations:
                return  # unwound meanwhile
            batch = self._batch(conn, batch_id)
            if batch["status"] != CANCELLING:
                return
            refusal = (batch["reason"] or "the node refused the transaction").split("; its inputs")[0]
            reason = f"{refusal}; its inputs went back to the hot wallet in {attempt['txid']}"
            self._dissolve(conn, batch_id, self._members(conn, batch_id), reason,
                           requeue=self.rules.on_node_rejection == "requeue", status=CANCELLED,
                           keep_reservations=True)
            self._set_batch(conn, batch_id, txid=attempt["txid"], confirm_height=height, fee=attempt["fee"],
                            fee_rate=attempt["fee_rate"])
            self._book_fee(conn, batch_id, attempt, "withdrawal_cancel_fee")
        self._write(work)

    def _book_fee(self, conn, batch_id: str, attempt: dict, kind: str) -> None:
        """A transaction of ours that pays nobody (a self-spend, a consolidation): only its fee left the hot wallet."""
        store.apply_command(conn, self.ids, Command(
            kind=kind, actor="withdrawal-job",
            postings=(Posting("BTC", "fees:network", f"wallet:{CHAIN}:hot", attempt["fee"]),),
            idempotency=Idempotency(store.SCOPE, f"fee:{batch_id}", batch_id), reference=batch_id,
            memo=attempt["txid"]))

    def watch_cancelled(self, batch_id: str) -> None:
        """A cancelled batch's outpoints stay watched while a reorg could undo its self-spend:
        unspent again -> the self-spend is sent again; spent by anything else -> staff."""
        batch, attempts, spends, cursor = self._state(batch_id)
        spenders = {s.spent_txid for s in spends}
        if spenders == {batch["txid"]}:
            return
        others = spenders - {batch["txid"], None}
        if others:
            self._needs_staff(batch_id, f"after it was cancelled its inputs were spent by {', '.join(sorted(others))}",
                              "alert.withdrawal_paid_after_cancel")
            return
        self._push(batch_id, attempts[batch["txid"]])

    def retry_held(self, batch_id: str) -> None:
        """A batch held for staff none of whose inputs is spent on chain, with its withdrawals still
        in it and no self-spend ever made (the self-spend could not be built or signed, then the
        conflict that made the node refuse the payment left the mempool; or a foreign spend left
        the chain with a reorg). Nothing could settle it: staff resolve on a spend, and a SIGNED
        withdrawal can't be cancelled, so its hold stayed for good. Its stored payment, still
        validly signed, is sent again; once the node takes it, the batch is followed as before."""
        batch, attempts, spends, _ = self._state(batch_id)
        payments = [a for a in attempts.values() if a["kind"] == PAYMENT]
        if (batch["status"] != NEEDS_STAFF or not payments or any(s.spent_txid for s in spends)
                or any(a["kind"] == CANCEL for a in attempts.values())):
            return
        accepted = None
        for attempt in reversed(payments):  # the highest fee first
            try:
                if not self.plugin.in_mempool(attempt["txid"]):
                    self.plugin.broadcast(attempt["raw"])
                accepted = attempt
                break
            except (NodeError, NodeUnavailable):
                continue
        if accepted is None:
            return

        def work(conn) -> bool:
            held = self._batch(conn, batch_id)
            members = self._members(conn, batch_id)
            if held["status"] != NEEDS_STAFF or (held["kind"] == "withdrawals" and not members):
                return False
            why = f"released from the staff hold: the node took its payment {accepted['txid']} again"
            status = model.SIGNED if any(m["status"] == model.SIGNED for m in members) else model.BROADCAST
            self._set_batch(conn, batch_id, status=status, reason=why)
            store.emit_events(conn, [store.record(conn, m, m["status"], "withdrawal-job", why) for m in members]
                              + [("withdrawal.batch_released", {"chain": CHAIN, "batch_id": batch_id,
                                                                "txid": accepted["txid"]})])
            return True
        if self._write(work):
            log.warning("batch %s: released from the staff hold, its payment %s was taken by the node again",
                        batch_id, accepted["txid"])

    def _needs_staff(self, batch_id: str, reason: str, alert: str) -> None:
        """Stops the job for this batch: an alert event, the reason on the batch and in each
        withdrawal's history (holds kept); staff settle it on chain proof (resolve_batch)."""
        def work(conn) -> bool:
            batch = self._batch(conn, batch_id)
            if batch["status"] == NEEDS_STAFF:
                return False
            self._set_batch(conn, batch_id, status=NEEDS_STAFF, reason=reason)
            members = self._members(conn, batch_id)
            # Its own payment is in no block now (something else spent its inputs): a member still
            # CONFIRMING goes back, or staff could never fail it (CONFIRMING leads only to COMPLETED).
            members = [store.move(conn, self.ids, m, model.BROADCAST, "withdrawal-job", "its block left the best "
                                  "chain")[0] if m["status"] == model.CONFIRMING else m for m in members]
            events = [store.record(conn, m, m["status"], "withdrawal-job", f"held for staff: {reason}")
                      for m in members]
            # A cancelled batch's withdrawals have left it (failed or requeued): found by their history.
            h = t.withdrawal_history.c
            ids = [m["id"] for m in members] or sorted(set(conn.execute(select(h.withdrawal_id).where(
                h.to_status == model.QUEUED, h.reason == f"batch {batch_id}")).scalars()))
            events.append((alert, {"chain": CHAIN, "batch_id": batch_id, "reason": reason, "withdrawal_ids": ids}))
            store.emit_events(conn, events)
            return True
        if self._write(work):
            log.error("batch %s needs staff: %s", batch_id, reason)
