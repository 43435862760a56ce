"""Coin selection and consolidation for the Bitcoin withdrawal job (a part of BitcoinSender).

Selection: largest first, only coins worth more than their own input's fee,
within max_inputs and the standard size (max_tx_vsize), with change enough to
bump the fee to max_fee_rate when the coins allow it. Consolidation
(FAILURE_MODES 29): when the coins exist but not within one transaction, the
largest hot-wallet coins are merged into one, as many merges as the waiting
withdrawals need (docs/withdrawals.md).
"""
from __future__ import annotations

import logging

from sqlalchemy import exists, select

from chains.base import Coin, NodeError
from custody.db import schema as t
from custody.deposits.model import CREDITED, DEPOSIT_WALLET
from custody.deposits.store import load_cursor
from custody.withdrawals import model

log = logging.getLogger(__name__)
CHAIN = "bitcoin"


def signing_path(rules, wallet: str, branch: int, key_index: int) -> str:
    """The signer's derivation path of a coin's key: its wallet's account, then branch and index."""
    account = rules.deposit_account_path if wallet == DEPOSIT_WALLET else rules.hot_account_path
    return f"{account}/{branch}/{key_index}"


class CoinsMixin:
    def consolidate_when_cheap(self) -> str | None:
        """Scheduled merge (FAILURE_MODES 29): with more than consolidate_above spendable
        hot-wallet coins, no withdrawal waiting, no merge on its way and fees at or below
        consolidation_max_fee_rate, the smallest max_inputs coins become one. Returns the batch."""
        rules = self.rules
        if not rules.consolidate_above:
            return None
        fee_rate = min(self.plugin.fee_rate() or rules.fallback_fee_rate, rules.max_fee_rate)
        if fee_rate > rules.consolidation_max_fee_rate:
            return None

        def work(conn):
            w, b = t.withdrawals.c, t.withdrawal_batches.c
            if conn.execute(select(w.id).where(w.chain == CHAIN, w.status == model.APPROVED).limit(1)).first():
                return None
            if conn.execute(select(b.id).where(b.chain == CHAIN, b.kind == "consolidation", b.status.in_(
                    [model.QUEUED, model.SIGNING, model.SIGNED, model.BROADCAST, model.CONFIRMING])).limit(1)).first():
                return None
            hot = [c for wallet, c in self._spendable(conn, fee_rate) if wallet == "hot"]
            if len(hot) <= rules.consolidate_above:
                return None
            coins = sorted(hot, key=lambda c: (c.amount, c.txid, c.index))[: self._max_inputs([self._change().watch_key])]
            try:
                unsigned = self.plugin.build_transaction([], coins, self._change(), fee_rate)
            except NodeError as exc:
                log.warning("no consolidation: %s", exc)
                return None
            batch_id = self._insert_batch(conn, "consolidation", unsigned, fee_rate, coins)
            log.info("batch %s: merging the %d smallest of %d hot-wallet coins at %d sat/vB",
                     batch_id, len(coins), len(hot), fee_rate)
            return batch_id
        return self._write(work)

    def _consolidate(self, conn, spendable: list[tuple[str, Coin]], pending: list[dict], fee_rate: int) -> str | None:
        """FAILURE_MODES 29: the coins exist but not within max_inputs / max_tx_vsize of one
        transaction. Merge the largest hot-wallet coins (up to max_inputs) into one output of the
        hot wallet; the withdrawals wait for it. No more merges than the withdrawals need."""
        from chains.bitcoin.psbt import vsize

        need = sum(p["amount"] for p in pending)
        scripts = [self.plugin.watch_key(p["to_address"]) for p in pending] + [b"\0" * 22]
        need += vsize(len(pending), scripts) * fee_rate  # a generous allowance for a few inputs' fee
        hot = [c for wallet, c in spendable if wallet == "hot"]
        in_flight = self._consolidating(conn)
        if in_flight >= need:
            return None  # merges already on their way cover it: wait for them to confirm
        if len(hot) < 2 or in_flight + sum(c.amount for c in hot) < need:
            log.warning("not enough spendable hot-wallet coins for %d withdrawals", len(pending))
            return None
        coins = hot[: self._max_inputs([self._change().watch_key])]
        unsigned = self.plugin.build_transaction([], coins, self._change(), fee_rate)
        batch_id = self._insert_batch(conn, "consolidation", unsigned, fee_rate, coins)
        log.info("batch %s: merging %d hot-wallet coins so that %d withdrawals fit in one transaction",
                 batch_id, len(coins), len(pending))
        return batch_id

    def _payable(self, conn, spendable: list[tuple[str, Coin]], pending: list[dict], fee_rate: int) -> list[dict]:
        """The oldest of pending that the spendable coins and the merges on their way could pay
        together, skipping each that would take the total past them: one withdrawal larger than
        the hot wallet must not hold up the others. A skipped one waits, APPROVED, with a warning
        saying how much is missing, for staff to refill the hot wallet."""
        from chains.bitcoin.psbt import INPUT_VSIZE, output_vsize, vsize

        # Each coin net of its own input's fee (it is worth more: _spendable), less the
        # transaction's overhead and change output: what one transaction of them all could pay.
        funds = (sum(c.amount - INPUT_VSIZE * fee_rate for _, c in spendable) + self._consolidating(conn)
                 - vsize(0, [self._change().watch_key]) * fee_rate)
        payable, total = [], 0
        for p in pending:
            cost = p["amount"] + output_vsize(self.plugin.watch_key(p["to_address"])) * fee_rate
            if total + cost <= funds:
                payable.append(p)
                total += cost
            else:
                log.warning("withdrawal %s of %d sats waits: the spendable coins are %d sats short of it; "
                            "refill the hot wallet", p["id"], p["amount"], total + cost - funds)
        return payable

    def _consolidating(self, conn) -> int:
        """What the unconfirmed consolidations will give back to the hot wallet."""
        b, r, u = t.withdrawal_batches.c, t.utxo_reservations.c, t.utxos.c
        rows = conn.execute(select(b.id, b.fee).where(
            b.chain == CHAIN, b.kind == "consolidation",
            b.status.in_([model.QUEUED, model.SIGNING, model.SIGNED, model.BROADCAST, model.CONFIRMING]))).all()
        total = 0
        for row in rows:
            spent = conn.execute(select(u.amount).select_from(t.utxo_reservations).join(
                t.utxos, (u.chain == r.chain) & (u.txid == r.txid) & (u.output_index == r.output_index))
                .where(r.batch_id == row.id)).scalars().all()
            total += sum(spent) - row.fee
        return total

    def _max_inputs(self, scripts: list[bytes]) -> int:
        """max_inputs, fewer if that many would take the transaction over max_tx_vsize."""
        from chains.bitcoin.psbt import INPUT_VSIZE, vsize

        room = self.rules.max_tx_vsize - vsize(0, scripts)
        return max(0, min(self.rules.max_inputs, room // INPUT_VSIZE))

    def _spendable(self, conn, fee_rate: int) -> list[tuple[str, Coin]]:
        """(wallet, coin) of the unreserved, unspent, mature coins worth spending at fee_rate
        (at least min_utxo and more than their own input's fee), hot wallet first, largest first.

        Only coins as deep as the native asset's confirmations: a shallower one may be taken
        away by a reorg for good (the change of a batch attempt whose fee bump is mined in the
        new branch instead, a deposit its sender double-spends), and a batch spending it could
        then never be mined, its withdrawals stuck (the same depth makes deposits credited)."""
        from chains.bitcoin.psbt import INPUT_VSIZE

        least = max(self.rules.min_utxo, INPUT_VSIZE * fee_rate + 1)
        u, r, a, d = t.utxos.c, t.utxo_reservations.c, t.chain_addresses.c, t.deposits.c
        view = (load_cursor(conn, CHAIN) or None)
        height = view.height if view else 0
        deep_enough = height - self.config.asset("BTC").confirmations + 1  # the chain's native asset
        wallets = ["hot"] + (["deposit"] if self.rules.include_deposit_wallet else [])
        # A deposit-wallet coin only once the ledger credited it: one outside policy (below the
        # minimum, asset disabled) stays on its address for staff to refund or credit by hand, and
        # spending it would move coins the ledger never counted.
        credited = exists().where(d.chain == u.chain, d.txid == u.txid, d.output_index == u.output_index,
                                  d.status == CREDITED)
        rows = conn.execute(
            select(u.txid, u.output_index, u.amount, u.wallet, a.watch_key, a.branch, a.key_index)
            .join(t.chain_addresses, a.id == u.address_id)
            .outerjoin(t.utxo_reservations, (r.chain == u.chain) & (r.txid == u.txid) & (r.output_index == u.output_index))
            .where(u.chain == CHAIN, u.wallet.in_(wallets), u.spent_txid.is_(None), r.batch_id.is_(None),
                   u.block_height <= deep_enough, (u.wallet != DEPOSIT_WALLET) | credited,
                   (u.coinbase == False) | (u.block_height <= height - self.plugin.params.coinbase_maturity))  # noqa: E712
        ).all()
        # Amounts are compared here, not in SQL: SQLite stores them as text (custody/db/types.py),
        # where "500" >= "2000" and "100000" < "2000".
        rows = [x for x in rows if x.amount >= least]
        rows.sort(key=lambda x: (wallets.index(x.wallet), -x.amount, x.txid, x.output_index))
        return [(x.wallet, Coin(x.txid, x.output_index, x.amount, bytes(x.watch_key),
                                signing_path(self.rules, x.wallet, x.branch, x.key_index))) for x in rows]

    def _select(self, spendable: list[tuple[str, Coin]], pending: list[dict], fee_rate: int) -> list[Coin] | None:
        """Largest coins first until they pay the withdrawals and the fee, within max_inputs and
        the standard size (max_tx_vsize); None if they can't.

        Then more coins while the change could not pay a bump to max_fee_rate and stay above dust:
        a bump takes its fee from the change (psbt.bump), so a batch with no change, or too little,
        could never be bumped and waited out a fee spike (FAILURE_MODES 26). If the coins run out
        first, the smallest selection that pays goes as it is."""
        from chains.bitcoin.psbt import DUST, vsize

        need = sum(p["amount"] for p in pending)
        scripts = [self.plugin.watch_key(p["to_address"]) for p in pending] + [b"\0" * 22]
        chosen, total, paying = [], 0, None
        for _, coin in spendable[: self._max_inputs(scripts)]:
            chosen.append(coin)
            total += coin.amount
            size = vsize(len(chosen), scripts)
            if total >= need + size * self.rules.max_fee_rate + DUST:
                return chosen
            if paying is None and total >= need + size * fee_rate:
                paying = list(chosen)
        return paying
