"""A real bcoin regtest node for the tests, started by the same code as
`custody nodes up`, and helpers to pay, mine, reorg and scan.

One node per pytest-xdist worker (its own folder and port), so one worker's
reorgs never touch another's chain. Each test starts its scanner at the tip
the chain has when the test begins and only reorgs blocks it mined itself.
"""
from __future__ import annotations

import hashlib
import os

from embit import bip39
from embit.bip32 import HDKey
from embit.ec import PrivateKey
from embit.script import Script, Witness, p2pkh
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

from chains.bitcoin.regtest import RegtestMiner
from chains.bitcoin.rpc import BitcoinRPC
from chains.nodes import Nodes
from custody import config as config_mod
from custody.api.auth import token_digest
from tests.support.databases import VAR
from tests.support.servers import SCOPES, TOKENS
from tests.support.ports import free_port

# The BIP84 test mnemonic: its account keys are public knowledge, which is
# what a test wants (tests can sign spends from deposit addresses).
MNEMONIC = "abandon " * 11 + "about"
_ROOT = HDKey.from_seed(bip39.mnemonic_to_seed(MNEMONIC))
VPUB_VERSION = bytes.fromhex("045f1cf6")


def account_xprv(account: int) -> HDKey:
    return _ROOT.derive(f"m/84h/1h/{account}h")


def account_vpub(account: int) -> str:
    return account_xprv(account).to_public().to_base58(version=VPUB_VERSION)


DEPOSIT_XPUB = account_vpub(0)
HOT_XPUB = account_vpub(1)
COLD_XPUB = account_vpub(2)
OTHER_XPUB = account_vpub(9)  # never configured: its addresses are not ours
CONFIRMATIONS = 3



def start_node(folder, port: int | None = None) -> Nodes:
    nodes = Nodes(folder, {"bitcoin": port or free_port()})
    nodes.up(("bitcoin",), fresh=True)
    return nodes


def node_folder(name: str):
    return VAR / "nodes-test" / f"{name}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}"


def chain_config(rpc_url: str, **overrides) -> dict:
    return {"network": "regtest", "rpc_url": rpc_url, "deposit_xpub": DEPOSIT_XPUB, "hot_xpub": HOT_XPUB,
            "cold_xpub": COLD_XPUB, "wallet_addresses": 3, "poll_interval_s": 0.2, "rpc_retries": 2,
            "rpc_backoff_s": 0.05, "rpc_timeout_s": 10, **overrides}


def make_chain_config(database_url: str, rpc_url: str, confirmations: int = CONFIRMATIONS,
                      btc: dict | None = None, **chain) -> config_mod.Config:
    """btc: more [[assets]] settings for BTC (min_deposit, deposits_enabled...)."""
    return config_mod.parse({
        "database": {"url": database_url},
        "server": {"listen": "127.0.0.1:0"},
        "clients": [{"name": n, "token_sha256": token_digest(TOKENS[n]), "scopes": SCOPES[n]} for n in TOKENS],
        "assets": [{"asset": "BTC", "chain": "bitcoin", "decimals": 8, "confirmations": confirmations, **(btc or {})},
                   {"asset": "ETH", "chain": "ethereum", "decimals": 18, "confirmations": 3}],
        "chains": {"bitcoin": chain_config(rpc_url, **chain)},
    })


class Chain:
    """The test's handle on the node: mine, pay, reorg."""

    def __init__(self, rpc_url: str):
        self.rpc = BitcoinRPC(rpc_url, retries=2, backoff_s=0.05)
        self.miner = RegtestMiner(self.rpc)

    def height(self) -> int:
        return self.rpc.call("getblockcount")

    def mine(self, n: int = 1) -> list[str]:
        return self.miner.mine(n)
    def pay(self, *outputs: tuple[bytes, int]) -> tuple[str, bytes]:
        return self.miner.pay(list(outputs))

    def reorg(self, from_height: int, new_blocks: int) -> None:
        """Drops blocks from from_height up and mines new_blocks others
        (bcoin: invalidateblock is a chain reset; dropped transactions vanish)."""
        self.miner.invalidate(from_height)
        self.mine(new_blocks)


def deposit_key(index: int) -> PrivateKey:
    return account_xprv(0).derive(f"m/0/{index}").key


def spend(outpoint: tuple[str, int], amount: int, key: PrivateKey, to_script: bytes, fee: int = 1000,
          also: tuple[tuple[bytes, int], ...] = ()) -> bytes:
    """A signed transaction moving a p2wpkh output we hold the key for: to_script gets what the
    outputs in `also` (script, sats) and the fee leave."""
    rest = amount - fee - sum(sats for _, sats in also)
    tx = Transaction(version=2, vin=[TransactionInput(bytes.fromhex(outpoint[0]), outpoint[1])],
                     vout=[TransactionOutput(rest, Script(to_script))]
                     + [TransactionOutput(sats, Script(script)) for script, sats in also])
    pub = key.get_public_key()
    digest = tx.sighash_segwit(0, p2pkh(pub), amount)
    tx.vin[0].witness = Witness([key.sign(digest).serialize() + bytes([SIGHASH.ALL]), pub.sec()])
    return tx.serialize()


def random_script() -> bytes:
    return b"\x00\x14" + hashlib.sha256(os.urandom(8)).digest()[:20]
