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

from sqlalchemy import select

from chains import registry
from custody.db import schema as t
from custody.deposits import model as deposits
from custody.ledger.commands import SERVICE_SCOPE

# Batch states in which the service has booked the transaction it names (batch.txid).
BOOKED = ("COMPLETED", "CANCELLED")
# Ledger batch kinds that book a withdrawal batch's transactions, and what they reference.
BY_WITHDRAWAL = ("withdrawal_complete",)  # reference: the withdrawal
BY_BATCH = ("withdrawal_cancel_fee", "utxo_consolidation_fee", "withdrawal_fee_correction",
            "withdrawal_foreign_spend")  # reference: the batch


@dataclasses.dataclass
class Item:
    """A part of the difference between the chain and the ledger, explained (or not) by a state."""
    amount: int  # chain minus ledger
    what: str
    explained: bool


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
    u, d, b, a = t.utxos.c, t.deposits.c, t.withdrawal_batches.c, t.withdrawal_attempts.c
    outputs = conn.execute(select(u.txid, u.output_index, u.wallet, u.amount, u.spent_txid)
                           .where(u.chain == chain)).all()
    # A payment to a deposit address is booked as a deposit whatever else its transaction did (a
    # foreign spend of our coins may pay one); a spend's net is what it took less what it paid back
    # to the hot or cold wallet, as the withdrawal job and staff settlements book it.
    returned, spent = collections.defaultdict(int), collections.defaultdict(int)
    for txid, _, wallet, amount, spender in outputs:
        if wallet != deposits.DEPOSIT_WALLET:
            returned[txid] += amount
        if spender is not None:
            spent[spender] += amount
    on_chain = sum(amount for _, _, _, amount, spender in outputs if spender is None)

    deposit_rows = {(r.txid, r.output_index): r for r in conn.execute(
        select(d.id, d.txid, d.output_index, d.status, d.asset).where(d.chain == chain))}
    batches = {r.id: r for r in conn.execute(select(b.id, b.status, b.kind, b.txid).where(b.chain == chain))}
    attempt_of = dict(conn.execute(select(a.txid, a.batch_id).join(t.withdrawal_batches, b.id == a.batch_id)
                                   .where(b.chain == chain)).all())
    effects = _booked_effects(conn, batches)
    # The transaction each batch's bookings are for: the one it names once it completed or was
    # cancelled, or that staff settled it on (a batch may be held for staff after that).
    booked_by_batch = {r.txid: r.id for r in batches.values() if r.txid and (r.status in BOOKED or effects.get(r.id))}
    foreign_booked = _foreign_spends_booked(conn)
    reserved_by = dict(((r.txid, r.output_index), r.batch_id) for r in conn.execute(
        select(t.utxo_reservations.c.txid, t.utxo_reservations.c.output_index, t.utxo_reservations.c.batch_id)
        .where(t.utxo_reservations.c.chain == chain)))
    asset, in_ledger = _wallet_accounts(conn, chain)

    items: list[Item] = []
    # Transactions that spent our coins, not booked (yet).
    spenders_of = collections.defaultdict(set)  # spender -> the batches whose reserved coins it spent
    for txid, index, _, _, spender in outputs:
        if spender is not None and (txid, index) in reserved_by:
            spenders_of[spender].add(reserved_by[(txid, index)])
    for spender in sorted(spent):
        if spender in booked_by_batch or spender in foreign_booked:
            continue
        net = returned.get(spender, 0) - spent[spender]
        batch_id = attempt_of.get(spender)
        if batch_id is not None:
            batch = batches[batch_id]
            waiting = batch.status not in (*BOOKED, "FAILED")
            items.append(Item(net, f"{spender}: {batch.kind} attempt of batch {batch_id}, which is {batch.status}"
                                   + ("" if waiting else f" with {batch.txid}: mined and never booked"), waiting))
            continue
        of = sorted(spenders_of.get(spender, ()))
        held = [i for i in of if batches[i].status == "NEEDS_STAFF"]
        items.append(Item(net, f"{spender}: spent our coins and is none of our transactions; "
                               + (f"held for staff in batch {', '.join(held)}" if held else
                                  "not booked" + "".join(f"; it spent the inputs of batch {i} ({batches[i].status})"
                                                         for i in of)),
                          bool(held)))
    # Deposits, and payments to the hot or cold wallet by transactions that spent none of our coins.
    for txid, index, wallet, amount, _ in outputs:
        if txid in spent and wallet != deposits.DEPOSIT_WALLET:
            continue
        deposit = deposit_rows.get((txid, index))
        if deposit is not None:
            if deposit.status == deposits.CREDITED:
                continue
            waiting = deposit.status in (deposits.PENDING, deposits.BELOW_MINIMUM, deposits.ASSET_DISABLED)
            items.append(Item(amount, f"{txid}:{index}: deposit {deposit.id}, {deposit.status}", waiting))
        elif wallet == deposits.DEPOSIT_WALLET:
            items.append(Item(amount, f"{txid}:{index}: paid a deposit address and no deposit records it", False))
        else:
            items.append(Item(amount, f"{txid}:{index}: paid the {wallet} wallet from outside the service "
                                      "(not booked: book it with a correction)", True))
    # Booked, and not on the chain now: a reorg deeper than the confirmations took it off.
    for txid, batch_id in sorted(booked_by_batch.items()):
        if txid not in spent:
            items.append(Item(-effects.get(batch_id, 0), f"{txid}: booked for batch {batch_id} "
                                                         f"({batches[batch_id].status}), not on the chain now", True))
    return ChainWallets(chain, asset, on_chain, in_ledger, items)


def _foreign_spends_booked(conn) -> set[str]:
    """Spenders staff settled (custody/withdrawals/resolve.py books each under this key)."""
    k = t.idempotency_keys.c
    keys = conn.execute(select(k.key).where(k.scope == SERVICE_SCOPE, k.key.like("foreign-spend:%"))).scalars()
    return {key.removeprefix("foreign-spend:") for key in keys}


def _wallet_accounts(conn, chain: str) -> tuple[str, int]:
    """(the chain's asset, the balance of its wallet accounts: assets, debits less credits)."""
    la = t.ledger_accounts.c
    rows = conn.execute(select(la.asset, la.debits, la.credits).where(la.code.like(f"wallet:{chain}:%"))).all()
    assets = {asset for asset, _, _ in rows}
    if len(assets) > 1:
        raise ValueError(f"{chain}: wallet accounts in {', '.join(sorted(assets))}: not a one-asset UTXO chain")
    return (assets.pop() if assets else ""), sum(debits - credits for _, debits, credits in rows)


def _booked_effects(conn, batches: dict) -> dict[str, int]:
    """Withdrawal batch id -> what the ledger booked for it on the wallet accounts."""
    lb, tr, la, w = t.ledger_batches.c, t.ledger_transfers.c, t.ledger_accounts.c, t.withdrawals.c
    wallet_ids = set(conn.execute(select(la.id).where(la.code.like("wallet:%"))).scalars())
    batch_of_withdrawal = dict(conn.execute(select(w.id, w.batch_id).where(w.batch_id.in_(list(batches)))).all())
    effects: dict[str, int] = collections.defaultdict(int)
    for kind, reference, debit, credit, amount in conn.execute(
            select(lb.kind, lb.reference, tr.debit_account_id, tr.credit_account_id, tr.amount)
            .join(t.ledger_transfers, tr.batch_id == lb.id).where(lb.kind.in_((*BY_WITHDRAWAL, *BY_BATCH)))):
        batch_id = batch_of_withdrawal.get(reference) if kind in BY_WITHDRAWAL else reference
        if batch_id is None:
            continue
        effects[batch_id] += (amount if debit in wallet_ids else 0) - (amount if credit in wallet_ids else 0)
    return effects

