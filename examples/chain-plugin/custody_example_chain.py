"""A toy chain plugin: the smallest complete example of chains.base.ChainPlugin.

Its "node" is a JSON file: a list of blocks, each
    {"hash": "...", "parent": "...", "transfers": [{"txid": "...", "index": 0, "to": "toy1...", "amount": 5}]}
An address is "toy1" + 40 hex digits derived from the extended key and index;
its watch key is the 20 bytes behind the hex. Everything else a real chain
needs (RPC client, retries, raw parsing) is left out on purpose.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import re

from chains.base import (
    AssetInfo, Block, BlockNotFound, BlockRef, ChainPlugin, DerivedAddress, InvalidAddress, NetworkParams,
    Receipt, TxState, TxStatus,
)

_ADDRESS = re.compile(r"toy1([0-9a-f]{40})")


class ToyChain(ChainPlugin):
    name = "toychain"

    def __init__(self, settings):
        if not settings.get("rpc_url", "").startswith("file://"):
            raise ValueError("rpc_url must be file://<path to the blocks JSON>")
        self.path = pathlib.Path(settings["rpc_url"].removeprefix("file://"))
        self._params = NetworkParams("toychain", str(settings.get("network", "toynet")), AssetInfo("TOY", 0))

    @property
    def params(self):
        return self._params

    def derive_address(self, extended_public_key, index, change=False):
        key = hashlib.sha256(f"{extended_public_key}/{int(change)}/{index}".encode()).digest()[:20]
        return DerivedAddress("toy1" + key.hex(), key, f"{int(change)}/{index}")

    def validate_address(self, text):
        match = _ADDRESS.fullmatch(text.lower())
        if not match:
            raise InvalidAddress("a toychain address is toy1 followed by 40 hex digits")
        return text.lower()

    def watch_key(self, address):
        return bytes.fromhex(self.validate_address(address)[4:])

    def _blocks(self):
        return json.loads(self.path.read_text())

    def tip(self):
        blocks = self._blocks()
        return BlockRef(len(blocks) - 1, blocks[-1]["hash"])

    def block_hash(self, height):
        blocks = self._blocks()
        if not 0 <= height < len(blocks):
            raise BlockNotFound(f"no block at height {height}")
        return blocks[height]["hash"]

    def fetch_block(self, height, watch):
        blocks = self._blocks()
        if not 0 <= height < len(blocks):
            raise BlockNotFound(f"no block at height {height}")
        b = blocks[height]
        receipts = tuple(Receipt(t["txid"], t["index"], self.watch_key(t["to"]), t["amount"])
                         for t in b["transfers"] if self.watch_key(t["to"]) in watch.keys)
        return Block(height, b["hash"], b["parent"], receipts, (), len(b["transfers"]), len(b["transfers"]))

    def balances(self, addresses):
        totals = {a: {"": 0} for a in addresses}
        for b in self._blocks():
            for t in b["transfers"]:
                if t["to"] in totals:
                    totals[t["to"]][""] += t["amount"]
        return totals

    def build_transaction(self, payments, coins, change, fee_rate):
        raise NotImplementedError("the toy chain only receives")

    def combine(self, unsigned, signatures):
        raise NotImplementedError("the toy chain only receives")

    def txid(self, raw):
        return hashlib.sha256(raw).hexdigest()

    def broadcast(self, raw):
        raise NotImplementedError("the toy chain only receives")

    def transaction_status(self, txid):
        return TxStatus(TxState.UNKNOWN)
