"""Bitcoin networks: address prefixes and extended-key versions, as Bitcoin Core has them."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BitcoinNetwork:
    name: str  # our name: mainnet, testnet, signet, regtest
    core_name: str  # getblockchaininfo "chain": main, test, signet, regtest
    hrp: str  # bech32 human-readable part
    p2pkh: int  # base58 version bytes
    p2sh: int
    # Extended public key versions accepted for an account key: xpub/tpub
    # (BIP32) and zpub/vpub (BIP84's own, which says "native segwit").
    xpub_versions: dict[bytes, str]


_MAIN_XPUBS = {bytes.fromhex("0488b21e"): "xpub", bytes.fromhex("04b24746"): "zpub"}
_TEST_XPUBS = {bytes.fromhex("043587cf"): "tpub", bytes.fromhex("045f1cf6"): "vpub"}

NETWORKS = {
    n.name: n
    for n in (
        BitcoinNetwork("mainnet", "main", "bc", 0x00, 0x05, _MAIN_XPUBS),
        BitcoinNetwork("testnet", "test", "tb", 0x6F, 0xC4, _TEST_XPUBS),
        BitcoinNetwork("signet", "signet", "tb", 0x6F, 0xC4, _TEST_XPUBS),
        BitcoinNetwork("regtest", "regtest", "bcrt", 0x6F, 0xC4, _TEST_XPUBS),
    )
}
KNOWN_HRPS = {"bc": "mainnet", "tb": "testnet/signet", "bcrt": "regtest"}
# Base58 version byte -> networks that use it (testnet, signet and regtest share theirs).
KNOWN_BASE58 = {0x00: "mainnet", 0x05: "mainnet", 0x6F: "testnet/signet/regtest", 0xC4: "testnet/signet/regtest"}
COINBASE_MATURITY = 100  # a coinbase output can be spent at 100 confirmations, in a block at depth 101


def network(name: str) -> BitcoinNetwork:
    try:
        return NETWORKS[name]
    except KeyError:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}, got {name!r}") from None
