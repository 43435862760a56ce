"""The service's UTXO set checked against the chain's node (`custody admin check --node`).

Invariant 4 compares the ledger with the UTXO set the scanner built from the
blocks; this asks the node whether each output that set holds unspent is
unspent on its chain, so that a scanner that missed a spend (or kept an
output a reorg took away) is caught too. One node call per output: progress
is reported as it goes. The node may be ahead of the scanner, and a spend in
a block the scanner has not applied yet is not a fault: with the node ahead,
what differs is reported for a second look, not as a violation.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from sqlalchemy import Engine, select

from chains.base import ChainPlugin
from custody.db import schema as t
from custody.db.engine import read_transaction
from custody.deposits import store

PROGRESS_EVERY = 10_000


@dataclasses.dataclass
class NodeCheck:
    chain: str
    checked: int
    scanned_to: int | None  # the scanner's cursor height
    node_tip: int  # the node's tip after the last output was asked about
    # (txid, index, amount, block height, address) unspent in our set, spent or absent on the node
    gone: list[tuple[str, int, int, int, str]]

    @property
    def node_ahead(self) -> bool:
        return self.scanned_to is None or self.node_tip > self.scanned_to


def check_outputs(engine: Engine, plugin: ChainPlugin, chain: str,
                  progress: Callable[[str], None] | None = None) -> NodeCheck:
    u = t.utxos.c
    with read_transaction(engine) as conn:
        cursor = store.load_cursor(conn, chain)
        unspent = conn.execute(select(u.txid, u.output_index, u.amount, u.block_height, u.address_id)
                               .where(u.chain == chain, u.spent_txid.is_(None))).all()
    gone = []
    for n, (txid, index, amount, height, address_id) in enumerate(unspent, start=1):
        if plugin.spent_on_chain(txid, index):
            gone.append((txid, index, amount, height, address_id))
        if progress is not None and n % PROGRESS_EVERY == 0:
            progress(f"{chain}: {n:,} of {len(unspent):,} unspent outputs asked of the node")
    if gone:  # few: their addresses are looked up once the node has answered
        with read_transaction(engine) as conn:
            rows = store.address_rows(conn, {g[4] for g in gone})
        gone = [(txid, index, amount, height, rows[address_id]["address"] if address_id in rows else "?")
                for txid, index, amount, height, address_id in gone]
    return NodeCheck(chain, len(unspent), cursor.height if cursor else None, plugin.tip().height, gone)
