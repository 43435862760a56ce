"""Completed batches a reorg could still undo, for the Bitcoin withdrawal job (a part of
BitcoinSender; docs/withdrawals.md "States").

A batch completes at the asset's confirmations: its withdrawals are COMPLETED and their holds
posted. A reorg deeper than that can still take its transaction out of the chain (bcoin forgets
it), and then the ledger says paid while the payees have nothing and the inputs stay reserved.
So a completed batch stays watched for max_reorg_depth blocks past its block.
"""
from __future__ import annotations

import hashlib
import logging

from sqlalchemy import update

from chains.base import NodeError, NodeUnavailable
from custody.db import schema as t
from custody.ledger.commands import Command, Idempotency
from custody.ledger.model import Posting
from custody.withdrawals import model, store
from custody.withdrawals.refusal import CHAIN, PAYMENT

log = logging.getLogger(__name__)


class CompletedWatchMixin:
    def watch_completed(self, batch_id: str) -> None:
        """Where are a completed batch's inputs now? Spent by its transaction: nothing to do (the
        watch follows the block it is in). Unspent again: its stored transaction, still paying
        exactly its withdrawals, is sent again. Spent by another of its payment attempts (a fee
        bump mined instead): still paid, the batch takes that attempt. Spent by anything else:
        the payees are not paid; one alert for staff. Batches staff settled are not watched."""
        batch, attempts, spends, cursor = self._state(batch_id)
        if batch["txid"] not in attempts or cursor is None:
            return
        spenders = {s.spent_txid for s in spends}
        if spenders == {batch["txid"]}:
            height = min(s.spent_height for s in spends)
            if height != batch["confirm_height"]:  # mined again in another block: watched from there
                self._write(lambda conn: self._set_batch(conn, batch_id, confirm_height=height))
            return
        if None in spenders and len(spenders) == 1:
            self._send_again(batch_id, attempts[batch["txid"]], cursor.height)
            return
        (spender,) = spenders if len(spenders) == 1 else (None,)
        if spender in attempts and attempts[spender]["kind"] == PAYMENT:
            self._paid_by(batch_id, batch, attempts[spender], min(s.spent_height for s in spends))
            return
        why = (f"completed by {batch['txid']}, which a reorg took out of the chain; its inputs were then spent by "
               f"{', '.join(sorted(s for s in spenders if s))}: its withdrawals are not paid")
        if batch["reason"] == why:
            return

        def alert(conn) -> None:
            self._set_batch(conn, batch_id, reason=why)
            store.emit_events(conn, [("alert.withdrawal_spent_after_completion", {
                "chain": CHAIN, "batch_id": batch_id, "reason": why,
                "withdrawal_ids": [m["id"] for m in self._members(conn, batch_id)]})])
        self._write(alert)
        log.error("batch %s: %s", batch_id, why)

    def _send_again(self, batch_id: str, attempt: dict, tip: int) -> None:
        if self.plugin.in_mempool(attempt["txid"]):
            return
        try:
            self.plugin.broadcast(attempt["raw"])
        except (NodeError, NodeUnavailable) as exc:
            log.error("batch %s: completed by %s, which a reorg took out of the chain; the node refuses it "
                      "(%s); sent again next pass", batch_id, attempt["txid"], exc)
            return
        log.error("batch %s: completed by %s, which a reorg took out of the chain; sent again", batch_id,
                  attempt["txid"])

        def sent(conn) -> None:
            # Watched on from here while it waits for a block: anchored to its old block, the watch
            # ended max_reorg_depth past it, and a transaction dropped from the mempool after that
            # was forgotten again.
            self._set_batch(conn, batch_id, confirm_height=tip)
            store.emit_events(conn, [("alert.withdrawal_resent_after_reorg", {
                "chain": CHAIN, "batch_id": batch_id, "txid": attempt["txid"],
                "withdrawal_ids": [m["id"] for m in self._members(conn, batch_id)]})])
        self._write(sent)

    def _paid_by(self, batch_id: str, batch: dict, attempt: dict, height: int) -> None:
        """Another payment attempt of the batch (the same payments, another fee) was mined instead:
        the withdrawals are paid by it; its txid goes on them and the fee difference is booked."""
        def work(conn) -> None:
            difference = attempt["fee"] - batch["fee"]
            if difference:
                source, target = ("fees:network", f"wallet:{CHAIN}:hot") if difference > 0 else \
                                 (f"wallet:{CHAIN}:hot", "fees:network")
                store.apply_command(conn, self.ids, Command(
                    kind="withdrawal_fee_correction", actor="withdrawal-job",
                    postings=(Posting("BTC", source, target, abs(difference)),),
                    idempotency=Idempotency(store.SCOPE, f"fee:{batch_id}:{attempt['txid']}",
                                            hashlib.sha256(f"{attempt['txid']}:{difference}".encode()).hexdigest()),
                    reference=batch_id, memo=f"mined as {attempt['txid']} instead of {batch['txid']}"))
            self._set_batch(conn, batch_id, txid=attempt["txid"], fee=attempt["fee"], fee_rate=attempt["fee_rate"],
                            confirm_height=height)
            conn.execute(update(t.withdrawals).where(t.withdrawals.c.batch_id == batch_id,
                                                     t.withdrawals.c.status == model.COMPLETED)
                         .values(txid=attempt["txid"]))
            store.emit_events(conn, [("withdrawal.batch_remined", {
                "chain": CHAIN, "batch_id": batch_id, "txid": attempt["txid"], "previous_txid": batch["txid"]})])
        self._write(work)
        log.warning("batch %s: its payment %s left the chain with a reorg and its attempt %s was mined instead",
                    batch_id, batch["txid"], attempt["txid"])
