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
import threading
import time
from typing import Iterator, Mapping, Sequence

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
    WrongNetwork,
)
from chains.bitcoin import addresses, psbt
from chains.bitcoin.blocks import parse_block, transaction_id
from chains.bitcoin.fetcher import BlockFetcher, RawBlock, block_hashes, not_found, raw_blocks
from chains.bitcoin.params import COINBASE_MATURITY, network
from chains.bitcoin.rpc import BitcoinRPC, RpcError

# Blocks fetched in one JSON-RPC batch while catching up (the benchmark's unit).
FETCH_BATCH = 16
# Raw blocks per request while pipelining fetch and parse.
PIPELINE_CHUNK = 4
# How long broadcast waits for a sent transaction to show in the mempool.
MEMPOOL_WAIT_S = 3.0


class BitcoinChain(ChainPlugin):
    name = "bitcoin"
    settings_keys = ("rpc_timeout_s", "rpc_retries", "rpc_backoff_s", "rpc_max_backoff_s")
    reconciled_by_outputs = True

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
        self._fetcher = BlockFetcher(dict(url=str(url), timeout_s=self.rpc.timeout_s, retries=self.rpc.retries,
                                          backoff_s=self.rpc.backoff_s, max_backoff_s=self.rpc.max_backoff_s),
                                     PIPELINE_CHUNK)
        self._fetching = threading.Lock()
        # (start, count, request id) of raw blocks fetched ahead for the next fetch_blocks call.
        self._ahead: tuple[int, int, int] | None = None
        self._params = NetworkParams("bitcoin", self.network.name, AssetInfo("BTC", 8), COINBASE_MATURITY)
        # The hot wallet's account key: change outputs carry its derivation hint for the signer.
        self.change_xpub = str(settings.get("hot_xpub", ""))

    @property
    def params(self) -> NetworkParams:
        return self._params

    @property
    def fetcher_pid(self) -> int | None:
        """The block fetcher process, while it runs (it starts with the first large fetch)."""
        return self._fetcher.pid

    def close(self) -> None:
        self._fetcher.close()
        self.rpc.close()

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

    def smallest_payment(self, address: str) -> int:
        return psbt.dust_limit(self.watch_key(address))

    def address_of(self, watch_key: bytes) -> str | None:
        return addresses.script_to_address(watch_key, self.network)

    # -- the chain ---------------------------------------------------------------------------
    def check_network(self) -> None:
        chain = self.rpc.call("getblockchaininfo")["chain"]
        if chain != self.network.core_name:
            raise WrongNetwork(f"the node at rpc_url runs {chain!r} but the config says network = "
                               f"{self.network.name!r}: nothing is scanned until they agree")

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
            if not_found(exc):
                raise BlockNotFound(f"no block at height {height}") from None
            raise

    def fetch_block(self, height: int, watch: Watch) -> Block:
        blocks = self.fetch_blocks(height, 1, watch)
        if not blocks:
            raise BlockNotFound(f"no block at height {height}")
        return blocks[0]

    def fetch_blocks(self, start: int, count: int, watch: Watch) -> list[Block]:
        """Blocks start..start+count-1 (fewer at the tip), parsed with `watch`.

        Parsing is CPU work in this process; fetching is mostly the node's
        work. A batch of more than PIPELINE_CHUNK blocks is fetched by a child
        process (chains/bitcoin/fetcher.py), PIPELINE_CHUNK blocks per request,
        while this thread parses the ones already here, and the next batch is
        requested right behind it, since a scanner catching up asks for it
        next. Only raw bytes are fetched ahead, never parsed ahead: the watched
        set is the caller's at the time of the call. Blocks fetched ahead may
        be a moment old; like any fetched block they may straddle a reorg,
        which the caller sees in the parent hashes."""
        blocks: list[Block] = []
        created: dict[str, list] = {}  # paid to us in this batch: their spends count too
        with self._fetching:  # one reader of the fetcher's answers at a time
            for expected, raw in self._raw_blocks(start, count):
                block = parse_block(raw, start + len(blocks), watch.keys, watch.outpoints, created)
                if block.hash != expected:
                    raise NodeError(f"getblock {expected} returned a block whose hash is {block.hash}")
                blocks.append(block)
        return blocks

    def _raw_blocks(self, start: int, count: int) -> Iterator[RawBlock]:
        request = self._take_ahead(start, count)
        if request is None and count <= PIPELINE_CHUNK:  # near the tip: one request, no child needed
            yield from raw_blocks(self.rpc, block_hashes(self.rpc, start, count))
            return
        if request is None:
            request = self._fetcher.request(start, count)
        if count > PIPELINE_CHUNK:
            # Catching up: the next batch is asked for next. Requested now, the
            # child goes on to it while this thread parses the end of this one.
            self._ahead = (start + count, count, self._fetcher.request(start + count, count))
        left = count
        for chunk in self._fetcher.chunks(request):
            yield from chunk[:left]
            left -= len(chunk)
            if left <= 0:
                return  # the rest of a larger batch fetched ahead: cancelled

    def _take_ahead(self, start: int, count: int) -> int | None:
        """The request fetched ahead if it begins at start and covers count blocks."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        ahead_start, ahead_count, request = ahead
        if ahead_start == start and count <= ahead_count:
            return request
        self._fetcher.cancel(request)  # not what is wanted
        return None

    # -- reconciliation ----------------------------------------------------------------------
    def balances(self, addresses_: Sequence[str]) -> dict[str, dict[str, int]]:
        raise NotImplementedError(
            "Bitcoin balances come from the service's own UTXO set (custody.deposits.store); "
            "nodes without an address index can't answer per address")

    # -- transactions -------------------------------------------------------------------------
    def build_transaction(self, payments: Sequence[Payment], coins: Sequence[Coin], change: DerivedAddress,
                          fee_rate: int, min_fee: int = 0) -> UnsignedTransaction:
        """A PSBT spending exactly `coins` (p2wpkh, each with its witness_utxo so
        the signer can check the fee), paying `payments`, the rest less the fee
        to `change` (left out when below the dust limit: the fee takes it)."""
        branch, index = (int(x) for x in change.path.split("/"))
        change_pub = None
        if getattr(self, "change_xpub", ""):
            change_pub = self._account_key(self.change_xpub).child(branch).child(index).sec()
        return psbt.build(payments, coins, change, fee_rate, self.network, change_pub, min_fee=min_fee)

    def combine(self, unsigned: UnsignedTransaction, signatures: Sequence[bytes]) -> bytes:
        """signatures: one signed PSBT (what the signer returns) -> the raw transaction."""
        return psbt.finalize(signatures[0])

    def fee_rate(self, target_blocks: int = 6) -> int | None:
        """sat/vB for confirmation within target_blocks, or None when the node has
        no estimate (bcoin answers {"fee": -1}; Core {"feerate": BTC/kvB} or errors)."""
        try:
            answer = self.rpc.call("estimatesmartfee", target_blocks)
        except RpcError:
            return None
        rate = answer.get("feerate", answer.get("fee", -1)) if isinstance(answer, dict) else -1
        if rate is None or float(rate) <= 0:
            return None
        return max(1, -(-int(round(float(rate) * 100_000_000)) // 1000))

    def spent_on_chain(self, txid: str, index: int) -> bool:
        """True if the output is spent in a block (gettxout includes the mempool on
        Core, not on bcoin: ask without it where the node allows)."""
        try:
            return self.rpc.call("gettxout", txid, index, False) is None
        except RpcError:
            return self.rpc.call("gettxout", txid, index) is None

    def in_mempool(self, txid: str) -> bool:
        return self.transaction_status(txid).state is TxState.MEMPOOL

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

    def block_transaction(self, height: int, txid: str) -> bytes | None:
        """The raw transaction txid from the block at height, or None if that block
        has no such transaction (no transaction index needed, unlike getrawtransaction)."""
        import io

        from embit.transaction import Transaction

        stream = io.BytesIO(bytes.fromhex(self.rpc.call("getblock", self.block_hash(height), False)))
        stream.seek(80)  # the header
        first = stream.read(1)[0]
        count = first if first < 0xFD else int.from_bytes(stream.read({0xFD: 2, 0xFE: 4, 0xFF: 8}[first]), "little")
        for _ in range(count):
            tx = Transaction.read_from(stream)
            if tx.txid().hex() == txid:
                return tx.serialize()
        return None

    def transaction_status(self, txid: str) -> TxStatus:
        """MEMPOOL or UNKNOWN. Without a transaction index a node can't say which
        block holds a transaction; confirmed ones are known from the scanner."""
        try:
            self.rpc.call("getmempoolentry", txid)
        except RpcError:
            return TxStatus(TxState.UNKNOWN)
        return TxStatus(TxState.MEMPOOL)
