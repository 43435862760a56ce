"""The Bitcoin chain plugin: BIP84 deposit addresses, raw block scanning, broadcast.

Works against Bitcoin Core and bcoin; where they differ (DESIGN section 8)
both behaviours are handled here:
- getblock verbosity: both return raw hex for `false`/0 (the only form used);
- sendrawtransaction: bcoin returns the txid even when its mempool refused
  the transaction, so acceptance is confirmed with getmempoolentry;
- getblockchaininfo: only "chain" is read ("main", "test", "signet", "regtest").
"""
from __future__ import annotations

import functools
import time
from typing import Mapping, Sequence

from chains.base import (
    AssetInfo,
    Block,
    BlockNotFound,
    BlockRef,
    ChainPlugin,
    Coin,
    DerivedAddress,
    NetworkParams,
    NodeError,
    Payment,
    TxState,
    TxStatus,
    UnsignedTransaction,
    Watch,
)
from chains.bitcoin import addresses
from chains.bitcoin.blocks import parse_block, transaction_id
from chains.bitcoin.params import COINBASE_MATURITY, network
from chains.bitcoin.rpc import BitcoinRPC, RpcError

# Bitcoin Core: -8 "Block height out of range", -5 "Block not found".
_NOT_FOUND_CODES = (-8, -5)
# Blocks fetched in one JSON-RPC batch while catching up.
FETCH_BATCH = 16
# How long broadcast waits for a sent transaction to show in the mempool.
MEMPOOL_WAIT_S = 3.0


class BitcoinChain(ChainPlugin):
    name = "bitcoin"

    def __init__(self, settings: Mapping[str, object]):
        self.network = network(str(settings.get("network", "mainnet")))
        url = settings.get("rpc_url")
        if not url:
            raise ValueError("rpc_url is required")
        self.rpc = BitcoinRPC(
            str(url),
            timeout_s=float(settings.get("rpc_timeout_s", 30)),
            retries=int(settings.get("rpc_retries", 5)),
            backoff_s=float(settings.get("rpc_backoff_s", 0.25)),
            max_backoff_s=float(settings.get("rpc_max_backoff_s", 8)),
        )
        self._params = NetworkParams("bitcoin", self.network.name, AssetInfo("BTC", 8), COINBASE_MATURITY)

    @property
    def params(self) -> NetworkParams:
        return self._params

    # -- addresses -------------------------------------------------------------------------
    def derive_address(self, extended_public_key: str, index: int, change: bool = False) -> DerivedAddress:
        return addresses.derive(self._account_key(extended_public_key), index, change, self.network)

    @functools.lru_cache(maxsize=16)
    def _account_key(self, text: str):
        return addresses.parse_account_key(text, self.network)

    def validate_address(self, text: str) -> str:
        return addresses.parse_address(text, self.network)[0]

    def watch_key(self, address: str) -> bytes:
        return addresses.parse_address(address, self.network)[1]

    def address_of(self, watch_key: bytes) -> str | None:
        return addresses.script_to_address(watch_key, self.network)

    # -- the chain ---------------------------------------------------------------------------
    def check_network(self) -> None:
        """Raises NodeError if the node runs another network than configured."""
        chain = self.rpc.call("getblockchaininfo")["chain"]
        if chain != self.network.core_name:
            raise NodeError(f"the node runs {chain!r} but the config says network = {self.network.name!r}")

    def tip(self) -> BlockRef:
        best, height = self.rpc.batch([("getbestblockhash",), ("getblockcount",)])
        # The two answers may straddle a new block; the hash is the truth.
        if self.block_hash(height) != best:
            height = self.rpc.call("getblock", best, True)["height"]
        return BlockRef(height, best)

    def block_hash(self, height: int) -> str:
        try:
            return self.rpc.call("getblockhash", height)
        except RpcError as exc:
            if exc.code in _NOT_FOUND_CODES:
                raise BlockNotFound(f"no block at height {height}") from None
            raise

    def fetch_block(self, height: int, watch: Watch) -> Block:
        blocks = self.fetch_blocks(height, 1, watch)
        if not blocks:
            raise BlockNotFound(f"no block at height {height}")
        return blocks[0]

    def fetch_blocks(self, start: int, count: int, watch: Watch) -> list[Block]:
        """Two batched round trips: hashes, then raw blocks. Stops at the tip."""
        hashes = []
        try:
            hashes = self.rpc.batch([("getblockhash", h) for h in range(start, start + count)])
        except RpcError as exc:
            if exc.code not in _NOT_FOUND_CODES:
                raise
            # Some heights are above the tip: ask one by one up to it.
            for h in range(start, start + count):
                try:
                    hashes.append(self.block_hash(h))
                except BlockNotFound:
                    break
        if not hashes:
            return []
        try:
            raws = self.rpc.batch([("getblock", h, False) for h in hashes])
        except RpcError as exc:
            if exc.code in _NOT_FOUND_CODES:  # reorged away between the two calls
                raise BlockNotFound(f"a block from height {start} left the best chain while fetching") from None
            raise
        blocks = []
        for offset, (expected, raw_hex) in enumerate(zip(hashes, raws)):
            block = parse_block(bytes.fromhex(raw_hex), start + offset, watch.keys, watch.outpoints)
            if block.hash != expected:
                raise NodeError(f"getblock {expected} returned a block whose hash is {block.hash}")
            blocks.append(block)
        return blocks

    # -- reconciliation ----------------------------------------------------------------------
    def balances(self, addresses_: Sequence[str]) -> dict[str, dict[str, int]]:
        raise NotImplementedError(
            "Bitcoin balances come from the service's own UTXO set (custody.deposits.store); "
            "nodes without an address index can't answer per address")

    # -- transactions -------------------------------------------------------------------------
    def build_transaction(self, payments: Sequence[Payment], coins: Sequence[Coin], change: DerivedAddress,
                          fee_rate: int) -> UnsignedTransaction:
        raise NotImplementedError("built in the withdrawal issue (PSBT from the service's own UTXO set)")

    def combine(self, unsigned: UnsignedTransaction, signatures: Sequence[bytes]) -> bytes:
        raise NotImplementedError("built in the withdrawal issue")

    def txid(self, raw: bytes) -> str:
        return transaction_id(raw)

    def broadcast(self, raw: bytes) -> str:
        txid = self.txid(raw)
        try:
            answer = self.rpc.call("sendrawtransaction", raw.hex())
        except RpcError as exc:
            if "already in block chain" in exc.message or exc.code == -27:
                return txid
            raise
        if answer != txid:
            raise NodeError(f"sendrawtransaction returned {answer}, expected {txid}")
        # bcoin returns the txid even for a transaction its mempool refused,
        # and before its mempool has looked at it: wait a moment for the entry.
        deadline = time.monotonic() + MEMPOOL_WAIT_S
        while self.transaction_status(txid).state is not TxState.MEMPOOL:
            if time.monotonic() > deadline:
                raise NodeError(f"the node did not accept transaction {txid} into its mempool")
            time.sleep(0.02)
        return txid

    def transaction_status(self, txid: str) -> TxStatus:
        """MEMPOOL or UNKNOWN. Without a transaction index a node can't say which
        block holds a transaction; confirmed ones are known from the scanner."""
        try:
            self.rpc.call("getmempoolentry", txid)
        except RpcError:
            return TxStatus(TxState.UNKNOWN)
        return TxStatus(TxState.MEMPOOL)
