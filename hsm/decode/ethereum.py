"""Unsigned EIP-1559 transactions: explain (destination, amount, asset, fee) and sign.

Payload: 0x02 || rlp([chain_id, nonce, max_priority_fee_per_gas, max_fee_per_gas,
gas_limit, to, value, data, access_list]). Only type-2 transactions with the
configured chain id are signed (FAILURE_MODES 10: a legacy transaction without
a chain id, or one for another chain, could be replayed elsewhere). The only
calldata the signer explains is an ERC-20 transfer(to, amount) to a contract
its policy lists; any other call is refused, because the signer would not
know what it pays.
"""
from __future__ import annotations

import rlp
from eth_utils import keccak

from hsm.decode import Explained, Signed, Transfer
from hsm.errors import Refused, UnknownKey
from hsm.keystores.base import Keystore

TX_TYPE = 2
ERC20_TRANSFER = bytes.fromhex("a9059cbb")
_FIELDS = ("chain_id", "nonce", "max_priority_fee_per_gas", "max_fee_per_gas", "gas", "to", "value", "data",
           "access_list")


def address_of(public_key: bytes) -> str:
    """Ethereum address (lower case) of a compressed secp256k1 public key."""
    import coincurve

    point = coincurve.PublicKey(public_key).format(compressed=False)
    return "0x" + keccak(point[1:])[-20:].hex()


def unsigned_transaction(chain_id: int, nonce: int, max_priority_fee_per_gas: int, max_fee_per_gas: int,
                         gas: int, to: str, value: int, data: bytes = b"", access_list=()) -> bytes:
    """Builds the payload the core sends (and tests use)."""
    return bytes([TX_TYPE]) + rlp.encode([chain_id, nonce, max_priority_fee_per_gas, max_fee_per_gas, gas,
                                          bytes.fromhex(to.removeprefix("0x")), value, data, list(access_list)])


def _int(item, name: str) -> int:
    if not isinstance(item, bytes) or (item[:1] == b"\x00"):
        raise Refused("decode", f"{name} is not a canonical RLP integer")
    return int.from_bytes(item, "big")


def _check_access_list(access_list) -> None:
    """EIP-2930's shape, [[20-byte address, [32-byte storage key, ...]], ...]: nodes reject anything else, and
    a signed transaction they reject would leave its nonce stuck until another is signed in its place."""
    if not isinstance(access_list, list):
        raise Refused("decode", "access_list is not a list")
    for n, entry in enumerate(access_list):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], bytes) and len(entry[0]) == 20
                and isinstance(entry[1], list)
                and all(isinstance(key, bytes) and len(key) == 32 for key in entry[1])):
            raise Refused("decode", f"access_list entry {n} is not [20-byte address, [32-byte storage keys]]")


class EthereumDecoder:
    def __init__(self, chain_id: int, keystore: Keystore, tokens: dict[str, str],
                 internal_addresses: frozenset[str] = frozenset()):
        """tokens: contract address (lower case) -> asset name, for ERC-20 transfers."""
        self.chain_id = chain_id
        self.keystore = keystore
        self.tokens = tokens
        self.internal_addresses = internal_addresses

    def explain(self, payload: bytes, keys: list[tuple[str, str]]) -> Explained:
        if not payload:
            raise Refused("decode", "empty payload")
        if payload[0] >= 0xC0:
            raise Refused("chain_id", "a legacy transaction (no EIP-1559 chain id); only type-2 transactions "
                                      "for the configured chain are signed")
        if payload[0] != TX_TYPE:
            raise Refused("decode", f"transaction type {payload[0]} is not signed; only EIP-1559 (type 2)")
        try:
            items = rlp.decode(payload[1:])
        except Exception as exc:
            raise Refused("decode", f"not valid RLP: {exc}") from None
        if not isinstance(items, list) or len(items) != len(_FIELDS):
            raise Refused("decode", f"an unsigned EIP-1559 transaction has {len(_FIELDS)} fields, "
                                    f"got {len(items) if isinstance(items, list) else 'no list'}"
                                    + (" (is it signed already?)" if isinstance(items, list) and len(items) == 12 else ""))
        fields = dict(zip(_FIELDS, items))
        chain_id = _int(fields["chain_id"], "chain_id")
        if chain_id != self.chain_id:
            raise Refused("chain_id", f"transaction is for chain id {chain_id}, this signer signs for "
                                      f"chain id {self.chain_id} only")
        numbers = {n: _int(fields[n], n) for n in ("nonce", "max_priority_fee_per_gas", "max_fee_per_gas", "gas",
                                                    "value")}
        if numbers["max_priority_fee_per_gas"] > numbers["max_fee_per_gas"]:
            raise Refused("decode", "max_priority_fee_per_gas is above max_fee_per_gas")
        to, data = fields["to"], fields["data"]
        if not isinstance(to, bytes) or len(to) != 20:
            raise Refused("decode", "no 20-byte destination (contract creation is not signed)")
        if not isinstance(data, bytes):
            raise Refused("decode", "data must be bytes")
        _check_access_list(fields["access_list"])
        to_address = "0x" + to.hex()
        if not data:
            transfers = [self._transfer(to_address, "ETH", "", numbers["value"])]
        else:
            transfers = [self._token_transfer(to_address, data, numbers["value"])]
        if len(keys) != 1:
            raise Refused("keys", f"an Ethereum transaction is signed by exactly one key, {len(keys)} given")
        key_id, path = keys[0]
        try:
            public_key = self.keystore.public_key(key_id, path)
        except UnknownKey as exc:
            raise Refused("keys", str(exc)) from None
        fee = numbers["gas"] * numbers["max_fee_per_gas"]  # the most it can cost
        return Explained("ethereum", transfers, fee, "ETH", (items, key_id, path, public_key),
                         spends=(f"{address_of(public_key)}/{numbers['nonce']}",))

    def sign(self, explained: Explained) -> Signed:
        items, key_id, path, _ = explained.detail
        digest = keccak(bytes([TX_TYPE]) + rlp.encode(items))
        sig = self.keystore.sign_digest(key_id, path, digest)
        signed = bytes([TX_TYPE]) + rlp.encode(items + [sig.recovery_id, sig.r, sig.s])
        return Signed(signed, signed, "0x" + keccak(signed).hex())

    def _transfer(self, destination: str, asset: str, contract: str, amount: int) -> Transfer:
        return Transfer(destination, asset, contract, amount, destination in self.internal_addresses)

    def _token_transfer(self, contract: str, data: bytes, value: int) -> Transfer:
        asset = self.tokens.get(contract)
        if asset is None:
            raise Refused("decode", f"a contract call to {contract}, which is not a token in the signer's policy; "
                                    "the signer signs only payments it can explain")
        if data[:4] != ERC20_TRANSFER or len(data) != 68 or data[4:16] != bytes(12):
            raise Refused("decode", f"a call to token {asset} that is not transfer(address, uint256)")
        if value:
            raise Refused("decode", "a token transfer that also sends ETH")
        return self._transfer("0x" + data[16:36].hex(), asset, contract, int.from_bytes(data[36:68], "big"))
