"""The one interface every chain plugin implements, and the values it speaks in.

The docstrings here are the contract. Rules that hold for every method:

- Amounts are Python ints of base units (satoshi, wei, token units). Never
  floats, never Decimal.
- Block and transaction hashes are lower-case hex strings in the chain's usual
  display order (for Bitcoin: byte-reversed, as RPCs and explorers show them).
- Errors: `InvalidAddress` for a bad address (its message says exactly what is
  wrong), `NodeUnavailable` when the node cannot be reached after the client's
  retries (the caller tries again later; nothing was skipped), `NodeError`
  when the node answered but refused or said something unexpected,
  `BlockNotFound` when a height or hash is not (or no longer) on the node's
  best chain. Everything a plugin raises on purpose derives from `ChainError`.
- Reorgs: a plugin never hides or repairs a reorg. `fetch_block` returns what
  the node has at that height now, with its parent hash; the caller compares
  the parent hash with the hash it stored and walks back itself.
- A plugin holds no private keys. It derives addresses from extended public
  keys and builds unsigned transactions; signing happens in the signer.
"""
from __future__ import annotations

import abc
import dataclasses
import enum
from typing import ClassVar, Container, Mapping, NamedTuple, Sequence


class ChainError(Exception):
    """Base of every error a chain plugin raises on purpose."""


class InvalidAddress(ChainError):
    """The text is not a valid address for this chain and network; the message says why."""


class InvalidKey(ChainError):
    """An extended public key that can't be used (bad encoding, wrong network, private key)."""


class NodeUnavailable(ChainError):
    """The node could not be reached (refused, timed out) even after the client's retries."""


class NodeError(ChainError):
    """The node answered with an error or with something the plugin does not understand."""


class WrongNetwork(NodeError):
    """The node serves another network than the config names (a testnet node behind a mainnet
    config): a script is the same bytes on every network, so its coins would be credited."""


class BlockNotFound(ChainError):
    """No block at that height or with that hash on the node's best chain (anymore)."""


@dataclasses.dataclass(frozen=True)
class AssetInfo:
    """An asset a chain carries. contract is "" for the native asset."""

    symbol: str
    decimals: int
    contract: str = ""


@dataclasses.dataclass(frozen=True)
class NetworkParams:
    """Which chain and network a plugin instance talks to."""

    chain: str  # plugin name, e.g. "bitcoin"
    network: str  # "mainnet", "testnet", "signet", "regtest" (or the chain's own names)
    native: AssetInfo
    # Confirmations a coinbase/block reward output needs before it may be
    # credited or spent (0 where the chain has no such rule).
    coinbase_maturity: int = 0


@dataclasses.dataclass(frozen=True)
class DerivedAddress:
    """An address derived from an extended public key.

    watch_key is the exact bytes `fetch_block` matches on: the raw
    scriptPubKey for Bitcoin, the 20-byte account for Ethereum."""

    address: str
    watch_key: bytes
    path: str  # relative to the extended key, e.g. "0/7"


@dataclasses.dataclass(frozen=True)
class BlockRef:
    height: int
    hash: str


class Receipt(NamedTuple):
    """Value arriving at a watched key in one block.

    (txid, index) is unique on the chain: the output index for UTXO chains,
    the log index (or a per-transaction index for native value) elsewhere.
    asset_contract is "" for the native asset. (A NamedTuple, not a
    dataclass: a block can hold thousands and they are made in the hot loop.)"""

    txid: str
    index: int
    watch_key: bytes
    amount: int
    asset_contract: str = ""
    coinbase: bool = False


class Spend(NamedTuple):
    """A transaction in the block spending an outpoint the caller said it owns."""

    txid: str  # the spending transaction
    spent_txid: str
    spent_index: int


@dataclasses.dataclass(frozen=True)
class Block:
    """One block as far as the watched keys are concerned."""

    height: int
    hash: str
    parent_hash: str
    receipts: tuple[Receipt, ...]
    spends: tuple[Spend, ...]
    tx_count: int = 0
    output_count: int = 0


@dataclasses.dataclass(frozen=True)
class Watch:
    """What the caller wants `fetch_block` to report.

    keys: watch keys to report receipts for (any container with fast `in`:
    a set or dict of a million keys is the expected case).
    outpoints: (txid, index) pairs the caller owns, to report spends of."""

    keys: Container[bytes]
    outpoints: Container[tuple[str, int]] = frozenset()


@dataclasses.dataclass(frozen=True)
class Payment:
    destination: str  # a validated, normalised address
    amount: int


@dataclasses.dataclass(frozen=True)
class Coin:
    """An output the service owns and may spend (UTXO chains)."""

    txid: str
    index: int
    amount: int
    watch_key: bytes
    derivation_path: str


@dataclasses.dataclass(frozen=True)
class UnsignedTransaction:
    """A transaction for the signer: payload is the chain's own unsigned form
    (a PSBT for Bitcoin, an unsigned EIP-1559 transaction for Ethereum), which
    the signer decodes and checks on its own."""

    chain: str
    payload: bytes
    fee: int
    inputs: tuple[Coin, ...] = ()
    nonce: int | None = None


class TxState(enum.Enum):
    UNKNOWN = "unknown"  # the node has never heard of it, or dropped it
    MEMPOOL = "mempool"
    CONFIRMED = "confirmed"
    FAILED = "failed"  # mined but reverted (account chains)


@dataclasses.dataclass(frozen=True)
class TxStatus:
    state: TxState
    block: BlockRef | None = None
    confirmations: int = 0


class ChainPlugin(abc.ABC):
    """One chain, one network, one node. Instances are made by the registry from
    the `[chains.<name>]` config section: `Plugin(settings)`.

    Implementations must be safe to call from one thread at a time; the
    scanner for a chain is the only caller of the block methods."""

    name: ClassVar[str]
    # The keys of its own a plugin reads from its [chains.<name>] section, beyond the core's
    # (custody/config.py, ChainConfig). Declared: any other key stops the service at start, so a
    # misspelt setting is not silently left at its default. None: not declared, not checked.
    settings_keys: ClassVar[tuple[str, ...] | None] = None
    # True for a UTXO chain: the outputs the scanner records (table utxos) are what the chain holds
    # for the service's wallets, which invariant 4 compares with the ledger's wallet accounts
    # (custody/reconciliation/wallets.py). An account chain needs balances read from its node.
    reconciled_by_outputs: ClassVar[bool] = False

    @abc.abstractmethod
    def __init__(self, settings: Mapping[str, object]):
        """settings: the config section (rpc_url, network, ...). Raises ValueError
        naming the bad field."""

    def close(self) -> None:
        """Releases connections and threads; the instance is not used after."""

    def check_network(self) -> None:
        """Raises WrongNetwork if the node serves another network than the config names. The
        scanner calls it before each run (a failover may land on another node). A plugin whose
        node cannot say leaves it as is."""

    # -- parameters and addresses ---------------------------------------------
    @property
    @abc.abstractmethod
    def params(self) -> NetworkParams: ...

    def assets(self) -> Sequence[AssetInfo]:
        """Assets this plugin can detect; the native one first. Token plugins
        add the contracts named in config."""
        return (self.params.native,)

    @abc.abstractmethod
    def derive_address(self, extended_public_key: str, index: int, change: bool = False) -> DerivedAddress:
        """The receive (or change) address at index under an account-level
        extended public key. Deterministic; raises InvalidKey for a key of the
        wrong network or kind."""

    @abc.abstractmethod
    def validate_address(self, text: str) -> str:
        """The normalised form of an address a user typed (for Bitcoin: bech32
        lower-cased, base58 as is). Raises InvalidAddress with a precise reason:
        bad checksum, wrong network, wrong length, mixed case, unknown format."""

    @abc.abstractmethod
    def watch_key(self, address: str) -> bytes:
        """The bytes `fetch_block` matches for a (validated) address."""

    def smallest_payment(self, address: str) -> int:
        """The least amount a transaction may pay a (validated) address and still be relayed
        (Bitcoin: the dust limit of its script); 0 where the chain has none."""
        return 0

    # -- the chain ----------------------------------------------------------------
    @abc.abstractmethod
    def tip(self) -> BlockRef:
        """The node's best block now."""

    @abc.abstractmethod
    def block_hash(self, height: int) -> str:
        """Hash of the block at height on the node's best chain. BlockNotFound above the tip."""

    @abc.abstractmethod
    def fetch_block(self, height: int, watch: Watch) -> Block:
        """The block at height on the node's best chain, with every receipt to a
        watched key and every spend of a watched outpoint, in block order.
        Matching is on raw bytes (scriptPubKey, log topics), never on
        addresses as the node renders them. BlockNotFound above the tip."""

    def fetch_blocks(self, start: int, count: int, watch: Watch) -> list[Block]:
        """Blocks start..start+count-1, for catching up; may stop early at the
        tip. The blocks may come from one moment of the node's chain or
        straddle a reorg: callers check parent hashes as for fetch_block."""
        return [self.fetch_block(h, watch) for h in range(start, start + count)]

    # -- reconciliation -------------------------------------------------------------
    @abc.abstractmethod
    def balances(self, addresses: Sequence[str]) -> dict[str, dict[str, int]]:
        """address -> {asset contract ("" for native): amount} as the node sees it
        now. UTXO chains may raise NotImplementedError: the service
        reconciles from its own UTXO set checked against the node instead."""

    def spent_on_chain(self, txid: str, index: int) -> bool:
        """UTXO chains (reconciled_by_outputs): True if the output is spent in a block of the node's
        best chain, or is not in it at all."""
        raise NotImplementedError(f"{self.name} is not a UTXO chain")

    # -- transactions (built here, signed by the signer) ---------------------------------
    @abc.abstractmethod
    def build_transaction(self, payments: Sequence[Payment], coins: Sequence[Coin], change: DerivedAddress,
                          fee_rate: int) -> UnsignedTransaction:
        """An unsigned transaction paying every payment. UTXO chains spend
        exactly `coins` (the caller selected and reserved them) and send the
        rest minus the fee to change; fee_rate is in the chain's unit (sat/vB,
        wei/gas)."""

    @abc.abstractmethod
    def combine(self, unsigned: UnsignedTransaction, signatures: Sequence[bytes]) -> bytes:
        """The raw signed transaction from the signer's signatures (or signed payload)."""

    @abc.abstractmethod
    def txid(self, raw: bytes) -> str:
        """The id a raw transaction will have on chain."""

    @abc.abstractmethod
    def broadcast(self, raw: bytes) -> str:
        """Sends a raw transaction; returns its txid once the node accepted it
        into its mempool. Raises NodeError with the node's reason if it did not
        (also for nodes whose send RPC reports success for refused ones)."""

    @abc.abstractmethod
    def transaction_status(self, txid: str) -> TxStatus:
        """Where a transaction is now, by the node's best chain and mempool."""
