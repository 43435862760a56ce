"""Staff settle a batch held for them (NEEDS_STAFF) on chain proof only (FAILURE_MODES 2, 11).

A batch is held when its reserved inputs were spent by a transaction that is none
of its attempts: a twin (same inputs and outputs, another txid), or a spend by
someone holding the hot key. Staff name that transaction; the service checks it
against what the scanner recorded and the block that holds it, then decides:
- it pays every withdrawal of the batch (address and amount) and nothing else
  leaves the exchange: the withdrawals complete with it, once, its fee booked;
- it pays none of them: the withdrawals fail (holds released).
Either way, what the hot wallet lost through each transaction that spent the
batch's inputs and is not the batch's payment is booked to suspense, an
explicit correction, once per such transaction.
Anything else (an unrelated txid, not deep enough, partly paid) is refused.
"""
from __future__ import annotations

import collections
import hashlib

from embit.transaction import Transaction
from sqlalchemy import delete, select

from custody.db import schema as t
from custody.db.engine import read_transaction
from custody.deposits.model import DEPOSIT_WALLET, WALLETS
from custody.deposits.store import load_cursor
from custody.errors import FailedPrecondition, InvalidArgument, NotFound
from custody.ledger.commands import Command, Idempotency
from custody.ledger.model import Posting, parse_id
from custody.paging import Page
from custody.text import parse_reason
from custody.withdrawals import model, store
from custody.withdrawals.refusal import NEEDS_STAFF

OUR_WALLETS = tuple(w for w in WALLETS if w != DEPOSIT_WALLET)  # the exchange's own: hot and cold


# A batch lists its withdrawals' ids (about 35 bytes each) and a batch may hold thousands
# ([withdrawals] max_batch): a page stops at this many ids so a reply stays well under
# gRPC's 4 MiB, even with fewer batches than page_size.
MAX_WITHDRAWAL_IDS_PER_PAGE = 50_000


def list_batches(engine, status: str, page: Page) -> tuple[list[dict], str]:
    """A page of the batches in status, oldest first (ids sort by creation time), and the next page's token.
    Their withdrawals and the transactions that spent their inputs are read for the whole page at once."""
    b, w, r, u = t.withdrawal_batches.c, t.withdrawals.c, t.utxo_reservations.c, t.utxos.c
    with read_transaction(engine) as conn:
        rows, token = page.read(conn, select(t.withdrawal_batches).where(b.status == status), b.id)
        ids = [row.id for row in rows]
        spent_by, members = collections.defaultdict(set), collections.defaultdict(list)
        if ids:
            for batch_id, txid in conn.execute(
                    select(r.batch_id, u.spent_txid).select_from(t.utxo_reservations)
                    .join(t.utxos, (u.chain == r.chain) & (u.txid == r.txid) & (u.output_index == r.output_index))
                    .where(r.batch_id.in_(ids), u.spent_txid.is_not(None))):
                spent_by[batch_id].add(txid)
            for batch_id, withdrawal_id in conn.execute(
                    select(w.batch_id, w.id).where(w.batch_id.in_(ids)).order_by(w.created_at, w.id)):
                members[batch_id].append(withdrawal_id)
    listed = 0
    for n, row in enumerate(rows):
        listed += len(members[row.id])
        if listed > MAX_WITHDRAWAL_IDS_PER_PAGE and n > 0:  # the page ends before this batch
            rows, token = rows[:n], page.token_after(rows[n - 1].id)
            break
    return [{**dict(row._mapping), "withdrawal_ids": members[row.id], "spent_by": sorted(spent_by[row.id])}
            for row in rows], token


def resolve_batch(withdrawals, staff: str, batch_id: str, txid: str, reason: str) -> tuple[dict, list[dict]]:
    """withdrawals: the Withdrawals service (engine, config, plugins, ledger ids, notify)."""
    batch_id = parse_id(batch_id, "batch_id")
    reason = parse_reason(reason)
    txid = (txid or "").strip().lower()
    if len(txid) != 64 or any(c not in "0123456789abcdef" for c in txid):
        raise InvalidArgument("txid: the 64 hex digits of the transaction that spent the batch's inputs")
    with read_transaction(withdrawals.engine) as conn:
        batch, coins = _load(conn, batch_id)
        cursor = load_cursor(conn, batch["chain"])
    spent = [c for c in coins if c["spent_txid"] == txid]
    if not spent:
        raise FailedPrecondition(f"{txid} does not spend any input of batch {batch_id} (spent by: "
                                 f"{', '.join(sorted({c['spent_txid'] for c in coins if c['spent_txid']})) or 'none'})")
    depth = cursor.height - spent[0]["spent_height"] + 1
    confirmations = _native_asset(withdrawals.config, batch["chain"]).confirmations
    if depth < confirmations:
        raise FailedPrecondition(f"{txid} has {depth} of the {confirmations} confirmations needed")
    plugin = withdrawals.plugin_for(batch["chain"])
    raw = plugin.block_transaction(spent[0]["spent_height"], txid)
    if raw is None:
        raise FailedPrecondition(f"{txid} is not in block {spent[0]['spent_height']} any more: wait for the scanner")
    tx = Transaction.parse(raw)

    def work(conn):
        # The scan cursor first, as the scanner and the withdrawal job lock it first: an unwind
        # waits for this transaction instead of slipping in before its commit.
        cursor_now = load_cursor(conn, batch["chain"], for_update=True)
        b, coins = _load(conn, batch_id, lock=True)  # two staff at once: the second sees it settled
        if b["status"] != NEEDS_STAFF:
            raise FailedPrecondition(f"batch {batch_id} is {b['status']}, not {NEEDS_STAFF}")
        # Checked again here: the checks above were read before the node was asked for the
        # transaction, and a reorg meanwhile could take the spend away; settled on it all the same,
        # the withdrawals failed and their holds were released while the batch's own signed payment
        # could still confirm.
        still = [c for c in coins if c["spent_txid"] == txid]
        if not still or still[0]["spent_height"] != spent[0]["spent_height"] \
                or cursor_now.height - still[0]["spent_height"] + 1 < confirmations:
            raise FailedPrecondition(f"{txid} no longer spends batch {batch_id}'s inputs {confirmations} blocks deep "
                                     "(a reorg since it was checked): nothing was changed; look again")
        members = [m for m in conn.execute(select(t.withdrawals).where(t.withdrawals.c.batch_id == batch_id)
                                           .order_by(t.withdrawals.c.created_at, t.withdrawals.c.id))]
        members = [dict(m._mapping) for m in members]
        ours_in = _our_inputs(conn, b["chain"], tx)
        ours_out = _our_outputs(conn, b["chain"], txid)
        outputs = [(o.script_pubkey.data, o.value) for o in tx.vout]
        wanted = [(plugin.watch_key(m["to_address"]), m["amount"]) for m in members]
        external = [o for i, o in enumerate(outputs) if i not in ours_out]
        paid = _multiset_includes(external, wanted)
        none_paid = not any(w in external for w in wanted)
        kept = sum(ours_out.values())
        if paid and len(external) == len(wanted) and ours_in is not None:
            fee = ours_in - kept - sum(m["amount"] for m in members)
            why = f"resolved by {staff}: paid by {txid} ({reason})"
            if members:
                shares = model.split_fee(fee, [m["amount"] for m in members])
                for m, share in zip(members, shares):
                    m, _ = _to(conn, withdrawals, m, model.BROADCAST, staff, why)
                    m, _ = _to(conn, withdrawals, m, model.CONFIRMING, staff, why, txid=txid)
                    store.move(conn, withdrawals.ids, m, model.COMPLETED, staff, why, network_fee=share, txid=txid)
            elif fee > 0:
                # No withdrawals (a consolidation): only the fee left the hot wallet, booked as the job
                # books a self-spend's or a consolidation's (refusal.py _book_fee), under the same key,
                # unless that key holds the fee of another transaction: a self-spend booked when the
                # batch was cancelled, which a reorg took away (reversed below). Under its key the
                # settlement replayed that booking, and this spend's fee was booked nowhere (found by
                # today's review).
                booked = {memo for memo, _ in _fee_bookings(conn, batch_id)}
                if txid not in booked:
                    store.apply_command(conn, withdrawals.ids, Command(
                        kind="utxo_consolidation_fee" if b["kind"] == "consolidation" else "withdrawal_cancel_fee",
                        actor=staff, postings=(Posting(_native_asset(withdrawals.config, b["chain"]).asset,
                                                       "fees:network", f"wallet:{b['chain']}:hot", fee),),
                        idempotency=Idempotency(store.SCOPE, f"fee:{batch_id}:{txid}" if booked else f"fee:{batch_id}",
                                                batch_id),
                        reference=batch_id, memo=txid))
            _book_foreign_spends(conn, withdrawals, b, coins, staff, reason, exclude=txid)
            status = model.COMPLETED
        elif none_paid:
            why = f"resolved by {staff}: {txid} paid none of its withdrawals ({reason})"
            for m in members:
                if m["status"] == model.CONFIRMING:  # held for staff before that step back existed
                    m, _ = _to(conn, withdrawals, m, model.BROADCAST, staff, why)
                store.move(conn, withdrawals.ids, m, model.FAILED, staff, why, batch_id=None)
            _book_foreign_spends(conn, withdrawals, b, coins, staff, reason)
            status = model.FAILED
        else:
            raise FailedPrecondition(f"{txid} pays some but not all of batch {batch_id}'s withdrawals, or pays "
                                     "others too: this needs a ledger correction by hand")
        _reverse_cancel_fee(conn, withdrawals, b, txid, staff, reason)
        # Inputs nobody spent are free again: no attempt of this batch can confirm without the spent ones.
        r = t.utxo_reservations.c
        for c in coins:
            if c["spent_txid"] is None:
                conn.execute(delete(t.utxo_reservations).where(
                    r.chain == b["chain"], r.txid == c["txid"], r.output_index == c["output_index"]))
        conn.execute(t.withdrawal_batches.update().where(t.withdrawal_batches.c.id == batch_id).values(
            status=status, txid=txid, reason=why, updated_at=store.now()))
        store.emit_events(conn, [("withdrawal.batch_resolved", {
            "batch_id": batch_id, "staff": staff, "txid": txid, "status": status, "reason": reason,
            "withdrawal_ids": [m["id"] for m in members]})])
        return [store.load(conn, m["id"]) for m in members]
    done = withdrawals._write(work)
    return list_batches_by_id(withdrawals.engine, batch_id), done


def _fee_bookings(conn, batch_id: str, *kinds: str) -> list[tuple[str, int]]:
    """(transaction, fee) of each fee booked for the batch's own transactions that paid nobody."""
    lb, tr = t.ledger_batches.c, t.ledger_transfers.c
    return [tuple(row) for row in conn.execute(
        select(lb.memo, tr.amount).join(t.ledger_transfers, tr.batch_id == lb.id)
        .where(lb.kind.in_(kinds or ("withdrawal_cancel_fee", "utxo_consolidation_fee")), lb.reference == batch_id))]


def _reverse_cancel_fee(conn, withdrawals, batch: dict, txid: str, staff: str, reason: str) -> None:
    """A batch cancelled and booked (its self-spend's fee), then paid after all: a reorg took the
    self-spend away and staff settle on another spend of the same inputs, so the self-spend can't
    be on the chain any more. Its fee, booked out of the hot wallet, never left it: reversed, once
    (the settlement books what the spend they name took)."""
    fee = sum(amount for memo, amount in _fee_bookings(conn, batch["id"], "withdrawal_cancel_fee") if memo != txid)
    if fee <= 0:
        return
    store.apply_command(conn, withdrawals.ids, Command(
        kind="withdrawal_cancel_fee_reversal", actor=staff,
        postings=(Posting(_native_asset(withdrawals.config, batch["chain"]).asset,
                          f"wallet:{batch['chain']}:hot", "fees:network", fee),),
        idempotency=Idempotency(store.SCOPE, f"fee-reversal:{batch['id']}", batch["id"]),
        reference=batch["id"], memo=f"resolved by {staff}: {txid} spent its inputs, not the self-spend ({reason})"[:256]))


def _book_foreign_spends(conn, withdrawals, batch: dict, coins: list[dict], staff: str, reason: str,
                         exclude: str | None = None) -> None:
    """Books to suspense what the hot wallet lost through each transaction that spent the batch's
    inputs and is not ours (exclude: the one staff named as paying the batch). Each spender is
    booked whole (every coin of ours it spent less what it paid back to us), once, under a key of
    its own: a batch whose inputs two outside transactions spent was settled naming one of them,
    and the other's loss was never booked. A spender of two batches' inputs is booked once."""
    u, r, b = t.utxos.c, t.utxo_reservations.c, t.withdrawal_batches.c
    chain = batch["chain"]
    spenders = sorted({c["spent_txid"] for c in coins if c["spent_txid"] and c["spent_txid"] != exclude})
    for spender in spenders:
        # A spender of another batch's inputs too may be that batch's payment: its amounts and fee
        # are booked by that batch's settlement, and booking it here as well counted them twice.
        others = dict(conn.execute(
            select(b.id, b.status).join(t.utxo_reservations, r.batch_id == b.id)
            .join(t.utxos, (u.chain == r.chain) & (u.txid == r.txid) & (u.output_index == r.output_index))
            .where(u.chain == chain, u.spent_txid == spender, b.id != batch["id"])).all())
        if any(status == model.COMPLETED for status in others.values()) or conn.execute(
                select(b.id).where(b.chain == chain, b.txid == spender, b.status == model.COMPLETED,
                                   b.id != batch["id"])).first():
            continue
        open_ = sorted(i for i, status in others.items() if status not in (model.FAILED, "CANCELLED"))
        if open_:
            raise FailedPrecondition(f"{spender} also spent the inputs of batch {', '.join(open_)}, not settled "
                                     "yet: settle that batch first (it may be what paid it)")
        taken = sum(a for (a,) in conn.execute(select(u.amount).where(u.chain == chain, u.spent_txid == spender)))
        lost = taken - sum(_our_outputs(conn, chain, spender).values())
        if lost > 0:
            why = f"resolved by {staff}: {spender} spent the hot wallet's coins of batch {batch['id']} ({reason})"
            store.apply_command(conn, withdrawals.ids, Command(
                kind="withdrawal_foreign_spend", actor=staff,
                postings=(Posting(_native_asset(withdrawals.config, chain).asset, "suspense",
                                  f"wallet:{chain}:hot", lost),),
                idempotency=Idempotency(store.SCOPE, store.FOREIGN_SPEND_KEY + spender,
                                        hashlib.sha256(f"{spender}:{lost}".encode()).hexdigest()),
                reference=batch["id"], memo=why[:256]))


def list_batches_by_id(engine, batch_id: str) -> dict:
    with read_transaction(engine) as conn:
        batch, _ = _load(conn, batch_id)
    return {**batch, "withdrawal_ids": [], "spent_by": [batch["txid"]] if batch["txid"] else []}


def _load(conn, batch_id: str, lock: bool = False) -> tuple[dict, list[dict]]:
    query = select(t.withdrawal_batches).where(t.withdrawal_batches.c.id == batch_id)
    row = conn.execute(query.with_for_update() if lock and conn.dialect.name == "postgresql" else query).first()
    if row is None:
        raise NotFound(f"withdrawal batch {batch_id[:40]!r} does not exist")
    r, u = t.utxo_reservations.c, t.utxos.c
    coins = conn.execute(select(u.txid, u.output_index, u.amount, u.spent_txid, u.spent_height)
                         .select_from(t.utxo_reservations)
                         .join(t.utxos, (u.chain == r.chain) & (u.txid == r.txid) & (u.output_index == r.output_index))
                         .where(r.batch_id == batch_id)).all()
    return dict(row._mapping), [dict(c._mapping) for c in coins]


def _our_inputs(conn, chain: str, tx) -> int | None:
    """The sum of tx's inputs if every one is an output of ours, else None."""
    u = t.utxos.c
    total = 0
    for vin in tx.vin:
        amount = conn.execute(select(u.amount).where(u.chain == chain, u.txid == vin.txid.hex(),
                                                     u.output_index == vin.vout)).scalar()
        if amount is None:
            return None
        total += amount
    return total


def _our_outputs(conn, chain: str, txid: str) -> dict[int, int]:
    """Outputs of txid paying our own wallets, hot or cold (the scanner recorded them): index ->
    amount. Not a user's deposit address: that output is the user's deposit, which the scanner
    credits. Counted as ours, it shrank a foreign spender's loss and let a transaction paying
    one pass as a batch's payment, and the ledger kept in the hot wallet coins a user owned."""
    u = t.utxos.c
    return {r.output_index: r.amount for r in conn.execute(
        select(u.output_index, u.amount).where(u.chain == chain, u.txid == txid, u.wallet.in_(OUR_WALLETS)))}


def _multiset_includes(have: list, want: list) -> bool:
    pool = list(have)
    for w in want:
        if w not in pool:
            return False
        pool.remove(w)
    return True


def _to(conn, withdrawals, m: dict, status: str, actor: str, why: str, **values):
    if m["status"] == status:
        return m, None
    return store.move(conn, withdrawals.ids, m, status, actor, why, **values)


def _native_asset(config, chain: str):
    for a in config.assets:
        if a.chain == chain and not getattr(a, "contract", ""):
            return a
    raise FailedPrecondition(f"no native asset configured for {chain}")
