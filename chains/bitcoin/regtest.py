"""A regtest miner with its own key, for tests, the demo and benchmarks. Never for real money.

It mines blocks to its own p2wpkh address and pays anyone from its mature
coinbase outputs with transactions it signs itself (embit), so no node
wallet is needed (bcoin runs without one). Each payment spends one coinbase
output of its own and sends the change back to the miner's address; change
is never reused, so a test's reorg can't pull coins from under a later
payment.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time

from embit.ec import PrivateKey
from embit.script import Script, Witness, p2pkh
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

from chains.base import NodeError
from chains.bitcoin.addresses import p2wpkh_address
from chains.bitcoin.blocks import parse_block
from chains.bitcoin.params import COINBASE_MATURITY, network
from chains.bitcoin.rpc import BitcoinRPC

SEGWIT_HEIGHT = 432  # bcoin regtest activates segwit by BIP9 at 432 (DESIGN section 8)
FEE_SATS = 10_000


@dataclasses.dataclass
class _Coin:
    txid: str
    index: int
    amount: int
    height: int


class RegtestMiner:
    def __init__(self, rpc: BitcoinRPC, seed: bytes = b"custody regtest miner"):
        self.rpc = rpc
        self.net = network("regtest")
        self.key = PrivateKey(hashlib.sha256(seed).digest())
        self.pubkey = self.key.get_public_key()
        self.address, self.script = p2wpkh_address(self.pubkey.sec(), self.net)
        self._coins: list[_Coin] = []
        self._scanned_to = 0
        self._used: set[tuple[str, int]] = set()

    # -- blocks --------------------------------------------------------------------------
    def mine(self, n: int = 1, address: str | None = None) -> list[str]:
        return self.rpc.call("generatetoaddress", n, address or self.address)

    def height(self) -> int:
        return self.rpc.call("getblockcount")

    def ensure_ready(self, spendable: int = 20) -> None:
        """Segwit active and at least `spendable` mature coinbase outputs of ours."""
        if self.height() < SEGWIT_HEIGHT + 1:
            self.mine(SEGWIT_HEIGHT + 1 - self.height())
        self._find_coins()
        while len(self._free_coins()) < spendable:
            self.mine(max(spendable, 10))
            self._find_coins()

    def invalidate(self, height: int) -> str:
        """Drops every block from height up (bcoin: a chain reset to height-1)."""
        block_hash = self.rpc.call("getblockhash", height)
        self.rpc.call("invalidateblock", block_hash)
        self._scanned_to = min(self._scanned_to, height - 1)
        self._coins = [c for c in self._coins if c.height < height]
        return block_hash

    # -- payments ---------------------------------------------------------------------------
    def pay(self, outputs: list[tuple[bytes, int]], broadcast: bool = True) -> tuple[str, bytes]:
        """A transaction paying each (scriptPubKey, sats); returns (txid, raw).
        broadcast=False only signs it (to send later, or never)."""
        # About 2 sat/vB whatever the size (one p2wpkh output is 31 vB): above the relay minimum.
        fee = FEE_SATS + 100 * len(outputs)
        need = sum(amount for _, amount in outputs) + fee
        coin = self._take_coin(need)
        tx = Transaction(version=2, vin=[TransactionInput(bytes.fromhex(coin.txid), coin.index,
                                                          sequence=0xFFFFFFFD)],
                         vout=[TransactionOutput(amount, Script(script)) for script, amount in outputs],
                         locktime=0)
        change = coin.amount - need
        if change > 0:
            tx.vout.append(TransactionOutput(change, Script(self.script)))
        digest = tx.sighash_segwit(0, p2pkh(self.pubkey), coin.amount)
        signature = self.key.sign(digest).serialize() + bytes([SIGHASH.ALL])
        tx.vin[0].witness = Witness([signature, self.pubkey.sec()])
        raw = tx.serialize()
        txid = tx.txid().hex()
        if broadcast:
            self.send(raw)
        return txid, raw

    def send(self, raw: bytes) -> str:
        """Broadcasts and checks that the mempool took it (bcoin says yes either way)."""
        txid = self.rpc.call("sendrawtransaction", raw.hex())
        if not self.in_mempool(txid):
            raise NodeError(f"the node's mempool refused transaction {txid}")
        return txid

    def in_mempool(self, txid: str, wait_s: float = 3.0) -> bool:
        """Whether the node's mempool holds txid within wait_s: bcoin answers sendrawtransaction
        before its mempool has looked at the transaction."""
        deadline = time.monotonic() + wait_s
        while txid not in self.rpc.call("getrawmempool"):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    # -- coins ---------------------------------------------------------------------------------
    def _take_coin(self, need: int) -> _Coin:
        self._find_coins()
        for coin in self._free_coins():
            if coin.amount >= need:
                self._used.add((coin.txid, coin.index))
                return coin
        raise NodeError(f"the regtest miner has no mature coin of at least {need} sats; mine more blocks")

    def _free_coins(self) -> list[_Coin]:
        tip = self.height()
        return [c for c in self._coins
                if (c.txid, c.index) not in self._used and tip - c.height + 1 > COINBASE_MATURITY]

    def _find_coins(self) -> None:
        """Reads our coinbase outputs from blocks not read yet (raw blocks, our own parser)."""
        tip = self.height()
        keys = {self.script}
        for start in range(self._scanned_to + 1, tip + 1, 100):
            heights = range(start, min(start + 100, tip + 1))
            hashes = self.rpc.batch([("getblockhash", h) for h in heights])
            raws = self.rpc.batch([("getblock", h, False) for h in hashes])
            for height, raw in zip(heights, raws):
                block = parse_block(bytes.fromhex(raw), height, keys)
                self._coins += [_Coin(r.txid, r.index, r.amount, height) for r in block.receipts if r.coinbase]
        self._scanned_to = tip
