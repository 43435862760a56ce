"""Invariant 4: the ledger's wallet accounts against what the chains show.

For a UTXO chain, what the chain shows is the service's own UTXO set (table
`utxos`), which the scanner builds from the blocks it applies: every output
paying one of our addresses and the transaction that spent it. A payment to a
deposit address changes that set by its amount, and the ledger's wallet
accounts (`wallet:<chain>:deposit|hot|cold`) when the deposit is credited. A
transaction that spends our coins changes it by what it paid back to the hot
or cold wallet less what it spent, and the ledger when the service books it:
a withdrawal batch when completed, a self-spend when cancelled, a foreign
spend when staff settle it. So

    UTXO set total - wallet accounts total = what is on chain and not booked yet
                                             - what is booked and not on chain now

and each term on the right is itemised from the chain data and the stored
states, not from the ledger (but for what a transaction no longer on the
chain was booked as): a deposit not credited yet (or never, by
policy), a batch mined and not completed yet, a spend held for staff, coins
received from outside the service, a completed batch a reorg took off the
chain. What is left over is unexplained: a violation. The items are money in
flight or waiting for someone; an item no state explains (a batch FAILED whose
transaction was mined, a spend of our coins by no batch of ours) is a
violation too.

Amounts are summed here, not in SQL: SQLite keeps them as text.
"""
from __future__ import annotations

import collections
import dataclasses

from sqlalchemy import exists, func, select

from chains import registry
from custody.db import schema as t
from custody.db.bulk import in_values
from custody.db.types import as_utc
from custody.deposits import model as deposits
from custody.deposits import store as deposit_store
from custody.withdrawals import store as withdrawal_store

# Batch states in which the service has booked the transaction it names (batch.txid).
BOOKED = ("COMPLETED", "CANCELLED")
# Ledger batch kinds that book a withdrawal batch's transactions, and what they reference.
BY_WITHDRAWAL = ("withdrawal_complete",)  # reference: the withdrawal
BY_BATCH = ("withdrawal_cancel_fee", "withdrawal_cancel_fee_reversal", "utxo_consolidation_fee",
            "withdrawal_fee_correction", "withdrawal_foreign_spend")  # reference: the batch


@dataclasses.dataclass(slots=True)  # a pass over a large UTXO set may list many
class Item:
    """A part of the difference between the chain and the ledger, explained (or not) by a state."""
    amount: int  # chain minus ledger
    what: str
    explained: bool
    height: int | None = None  # the block it is in (a spend: the block of the spending transaction)
    address_id: int | None = None  # the address it paid or spent from (a spend: one of them)
    address: str = ""  # filled in from address_id once the pass is over
    more_addresses: int = 0  # a spend of coins of several addresses: how many besides `address`

    @property
    def where(self) -> str:
        """Where on chain it is, as reconciliation must say (FAILURE_MODES 31): block and address."""
        parts = [f"block {self.height}"] if self.height is not None else []
        if self.address:
            parts.append(f"address {self.address}" + (f" and {self.more_addresses} more" if self.more_addresses
                                                       else ""))
        return ", ".join(parts)


@dataclasses.dataclass
class ChainWallets:
    chain: str
    asset: str
    on_chain: int  # the service's unspent outputs
    in_ledger: int  # the wallet accounts' balance
    items: list[Item]

    @property
    def unexplained(self) -> int:
        return self.on_chain - self.in_ledger - sum(i.amount for i in self.items)

    @property
    def first_divergence(self) -> Item | None:
        """The item nothing explains in the lowest block: where the chain and the ledger part."""
        return min((i for i in self.items if not i.explained and i.height is not None),
                   key=lambda i: i.height, default=None)


def reconcile(conn) -> tuple[list[ChainWallets], dict[str, str]]:
    """Each UTXO chain's wallets, read in the caller's transaction (one snapshot); and, for every
    other chain with addresses or wallet accounts, why it is not compared."""
    la = t.ledger_accounts.c
    chains = set(conn.execute(select(t.chain_addresses.c.chain).distinct()).scalars())
    chains |= {code.split(":")[1] for code in conn.execute(select(la.code).where(la.code.like("wallet:%"))).scalars()}
    compared, not_compared = [], {}
    for chain in sorted(chains):
        try:
            by_outputs = registry.load(chain).reconciled_by_outputs
        except (registry.UnknownChain, TypeError) as exc:
            not_compared[chain] = f"no chain plugin to tell how ({exc})"
            continue
        if by_outputs:
            compared.append(_reconcile_chain(conn, chain))
        else:
            not_compared[chain] = "an account chain: its balances must be read from its node (not built)"
    return compared, not_compared


def _reconcile_chain(conn, chain: str) -> ChainWallets:
    u, d, b, a, r = t.utxos.c, t.deposits.c, t.withdrawal_batches.c, t.withdrawal_attempts.c, t.utxo_reservations.c
    batches = {row.id: row for row in conn.execute(select(b.id, b.status, b.kind, b.txid).where(b.chain == chain))}
    attempts = {row.txid: (row.batch_id, row.kind) for row in conn.execute(
        select(a.txid, a.batch_id, a.kind).join(t.withdrawal_batches, b.id == a.batch_id).where(b.chain == chain))}
    effects = _booked_effects(conn, chain)
    # The transaction each batch's bookings are for: the one it names once it completed or was
    # cancelled, or that staff settled it on (a batch may be held for staff after that).
    booked_by_batch = {row.txid: row.id for row in batches.values()
                       if row.txid and (row.status in BOOKED or effects.get(row.id))}
    foreign_booked = _foreign_spends_booked(conn)
    reserved_by = {(row.txid, row.output_index): row.batch_id for row in conn.execute(
        select(r.txid, r.output_index, r.batch_id).where(r.chain == chain))}
    asset, in_ledger = _wallet_accounts(conn, chain)

    # One pass over the UTXO set, streamed. A payment to a deposit address is booked as a deposit
    # whatever else its transaction did (a foreign spend of our coins may pay one); a spend's net is
    # what it took less what it paid back to the hot or cold wallet, as the withdrawal job and staff
    # settlements book it. Hot and cold outputs are kept until every spender is known.
    items: list[Item] = []
    on_chain = 0
    spent, returned = collections.defaultdict(int), collections.defaultdict(int)
    spenders_of = collections.defaultdict(set)  # spender -> the batches whose reserved coins it spent
    to_wallets = []
    # Deposits not credited are few (pending, refused by policy); the rest are looked for only
    # where none records an output (a join streamed through a server-side cursor was planned as a
    # nested loop on tables without statistics: 107 s for 100,000 outputs).
    not_credited = {(row.txid, row.output_index): (row.id, row.status) for row in conn.execute(
        select(d.txid, d.output_index, d.id, d.status).where(d.chain == chain, d.status != deposits.CREDITED))}
    unrecorded = conn.execute(select(u.txid, u.output_index, u.amount, u.block_height, u.address_id).where(
        u.chain == chain, u.wallet == deposits.DEPOSIT_WALLET,
        ~exists().where(d.chain == u.chain, d.txid == u.txid, d.output_index == u.output_index))).all()
    for txid, index, amount, height, address_id in unrecorded:
        items.append(Item(amount, f"{txid}:{index}: paid a deposit address and no deposit records it", False,
                          height, address_id))
    rows = conn.execution_options(yield_per=10_000).execute(
        select(u.txid, u.output_index, u.wallet, u.amount, u.spent_txid, u.block_height, u.address_id)
        .where(u.chain == chain))
    for txid, index, wallet, amount, spender, height, address_id in rows:
        if spender is None:
            on_chain += amount
        else:
            spent[spender] += amount
            if (txid, index) in reserved_by:
                spenders_of[spender].add(reserved_by[(txid, index)])
        if wallet != deposits.DEPOSIT_WALLET:
            returned[txid] += amount
            to_wallets.append((txid, index, wallet, amount, height, address_id))
        elif (txid, index) in not_credited:
            deposit_id, status = not_credited[(txid, index)]
            waiting = status in (deposits.PENDING, deposits.BELOW_MINIMUM, deposits.ASSET_DISABLED)
            items.append(Item(amount, f"{txid}:{index}: deposit {deposit_id}, {status}", waiting, height, address_id))

    # Transactions that spent our coins, not booked (yet).
    spender_items: dict[str, Item] = {}
    for spender in sorted(spent):
        if spender in booked_by_batch or spender in foreign_booked:
            continue
        net = returned.get(spender, 0) - spent[spender]
        if spender in attempts:
            batch_id, kind = attempts[spender]
            state, waiting = _attempt_state(batches[batch_id], kind, bool(effects.get(batch_id)))
            spender_items[spender] = Item(net, f"{spender}: {kind} attempt of batch {batch_id}, {state}", waiting)
            continue
        of = sorted(spenders_of.get(spender, ()))
        held = [i for i in of if batches[i].status == "NEEDS_STAFF"]
        spender_items[spender] = Item(
            net, f"{spender}: spent our coins and is none of our transactions; "
                 + (f"held for staff in batch {', '.join(held)}" if held else
                    "not booked" + "".join(f"; it spent the inputs of batch {i} ({batches[i].status})" for i in of)),
            bool(held))
    _locate_spenders(conn, chain, spender_items)
    items += spender_items.values()
    # Payments to the hot or cold wallet by transactions that spent none of our coins.
    for txid, index, wallet, amount, height, address_id in to_wallets:
        if txid not in spent:
            items.append(Item(amount, f"{txid}:{index}: paid the {wallet} wallet from outside the service (not "
                                      "booked: treasury moves are not built)", True, height, address_id))
    # Booked, and not on the chain now: a reorg deeper than the confirmations took it off.
    for txid, batch_id in sorted(booked_by_batch.items()):
        if txid not in spent:
            items.append(Item(-effects.get(batch_id, 0), f"{txid}: booked for batch {batch_id} "
                                                         f"({batches[batch_id].status}), not on the chain now", True))
    # Bookings on the wallet accounts that no chain event makes (a staff adjustment, a correction
    # booked against the wrong account): named, with who made them, instead of a bare residual.
    for batch_id, kind, actor, created_at, effect in _bookings_of_no_chain_event(conn, chain):
        items.append(Item(-effect, f"ledger batch {batch_id}: {kind} by {actor} at {created_at:%Y-%m-%d %H:%M:%S}, "
                                   "booked on the wallet accounts; no chain event is booked so", False))
    _fill_addresses(conn, items)
    return ChainWallets(chain, asset, on_chain, in_ledger, items)


def _locate_spenders(conn, chain: str, items: dict[str, Item]) -> None:
    """Each spender's block, an address it spent from and how many more: read for the few spenders
    listed, not kept for every spender of the pass (a million spends cost 400 MiB more that way)."""
    if not items:
        return
    u = t.utxos.c
    for spender, height, first, addresses in conn.execute(
            select(u.spent_txid, func.min(u.spent_height), func.min(u.address_id), func.count(u.address_id.distinct()))
            .where(u.chain == chain, in_values(conn, u.spent_txid, list(items))).group_by(u.spent_txid)):
        item = items[spender]
        item.height, item.address_id, item.more_addresses = height, first, addresses - 1


def _fill_addresses(conn, items: list[Item]) -> None:
    found = deposit_store.address_rows(conn, {i.address_id for i in items if i.address_id is not None})
    for i in items:
        i.address = found[i.address_id]["address"] if i.address_id in found else ""


# Batch states in which a mined attempt is still to be booked by the withdrawal job.
IN_FLIGHT = ("QUEUED", "SIGNING", "SIGNED", "BROADCAST", "CONFIRMING", "CANCELLING")


def _attempt_state(batch, kind: str, booked: bool) -> tuple[str, bool]:
    """(what to say of a mined attempt of batch not booked yet, whether a state explains it)."""
    if batch.status in IN_FLIGHT:
        return f"which is {batch.status}", True
    if batch.status == "COMPLETED" and kind == "payment":
        # The same payments mined instead of the one completed (a fee bump after a reorg): the
        # job's next pass takes it up and books the fee difference (withdrawals/completed.py).
        return f"mined instead of {batch.txid}, which completed it", True
    if batch.status == "NEEDS_STAFF" and not booked:
        return "held for staff", True
    if batch.status == "NEEDS_STAFF":  # booked already: cancelled, its withdrawals failed or requeued
        return "held for staff after it was cancelled and booked: paid after its cancellation", False
    return f"which is {batch.status} with {batch.txid}: mined and never booked", False


def _foreign_spends_booked(conn) -> set[str]:
    """Spenders staff settled (custody/withdrawals/resolve.py books each under this key)."""
    k = t.idempotency_keys.c
    keys = conn.execute(select(k.key).where(k.scope == withdrawal_store.SCOPE,
                                            k.key.like(withdrawal_store.FOREIGN_SPEND_KEY + "%"))).scalars()
    return {key.removeprefix(withdrawal_store.FOREIGN_SPEND_KEY) for key in keys}


def _wallet_accounts(conn, chain: str) -> tuple[str, int]:
    """(the chain's asset, the balance of its wallet accounts: assets, debits less credits)."""
    la = t.ledger_accounts.c
    rows = conn.execute(select(la.asset, la.debits, la.credits).where(la.code.like(f"wallet:{chain}:%"))).all()
    assets = {asset for asset, _, _ in rows}
    if len(assets) > 1:
        raise ValueError(f"{chain}: wallet accounts in {', '.join(sorted(assets))}: not a one-asset UTXO chain")
    return (assets.pop() if assets else ""), sum(debits - credits for _, debits, credits in rows)


# Ledger batch kinds that book what a chain did: deposits (against the deposit's outputs) and the
# withdrawal kinds above (against the batches' transactions).
CHAIN_EVENT_KINDS = ("deposit", "deposit_reversal", *BY_WITHDRAWAL, *BY_BATCH)


def _bookings_of_no_chain_event(conn, chain: str) -> list[tuple]:
    """(batch id, kind, actor, time, what it booked on the chain's wallet accounts) of each ledger
    batch of another kind that touched them, in commit order."""
    lb, tr, la = t.ledger_batches.c, t.ledger_transfers.c, t.ledger_accounts.c
    wallet_ids = set(conn.execute(select(la.id).where(la.code.like(f"wallet:{chain}:%"))).scalars())
    if not wallet_ids:
        return []
    effects: dict[str, list] = {}
    for batch_id, kind, actor, created_at, debit, credit, amount in conn.execute(
            select(lb.id, lb.kind, lb.actor, lb.created_at, tr.debit_account_id, tr.credit_account_id, tr.amount)
            .join(t.ledger_transfers, tr.batch_id == lb.id)
            .where(lb.kind.not_in(CHAIN_EVENT_KINDS),
                   tr.debit_account_id.in_(wallet_ids) | tr.credit_account_id.in_(wallet_ids))
            .order_by(lb.event_cursor, lb.id)):
        entry = effects.setdefault(batch_id, [batch_id, kind, actor, as_utc(created_at), 0])
        entry[4] += (amount if debit in wallet_ids else 0) - (amount if credit in wallet_ids else 0)
    return [tuple(e) for e in effects.values() if e[4]]


def _booked_effects(conn, chain: str) -> dict[str, int]:
    """Withdrawal batch id -> what the ledger booked for it on the chain's wallet accounts."""
    lb, tr, la, w, b = t.ledger_batches.c, t.ledger_transfers.c, t.ledger_accounts.c, t.withdrawals.c, \
        t.withdrawal_batches.c
    wallet_ids = set(conn.execute(select(la.id).where(la.code.like(f"wallet:{chain}:%"))).scalars())
    batch_of_withdrawal = dict(conn.execute(select(w.id, w.batch_id).join(t.withdrawal_batches, b.id == w.batch_id)
                                            .where(b.chain == chain)).all())
    effects: dict[str, int] = collections.defaultdict(int)
    for kind, reference, debit, credit, amount in conn.execute(
            select(lb.kind, lb.reference, tr.debit_account_id, tr.credit_account_id, tr.amount)
            .join(t.ledger_transfers, tr.batch_id == lb.id).where(lb.kind.in_((*BY_WITHDRAWAL, *BY_BATCH)))):
        batch_id = batch_of_withdrawal.get(reference) if kind in BY_WITHDRAWAL else reference
        if batch_id is None:
            continue
        effects[batch_id] += (amount if debit in wallet_ids else 0) - (amount if credit in wallet_ids else 0)
    return effects
