"""Bitcoin addresses: validation with precise reasons, scriptPubKeys, BIP84 derivation.

The checksum arithmetic, base58 and BIP32 child derivation come from embit.
We walk the decoding steps ourselves because embit (like most libraries)
answers only "invalid address", and a user or an operator needs to know
whether the checksum, the network, the length or the case is wrong.
"""
from __future__ import annotations

import hashlib

from embit import base58, bech32
from embit.bip32 import HDKey

from chains.base import DerivedAddress, InvalidAddress, InvalidKey
from chains.bitcoin.params import KNOWN_BASE58, KNOWN_HRPS, BitcoinNetwork

BECH32_MAX_LENGTH = 90
BASE58_MAX_LENGTH = 35  # 25 bytes: 34 characters at most; one more to spare
BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def parse_address(text: str, net: BitcoinNetwork) -> tuple[str, bytes]:
    """(normalised address, scriptPubKey) or InvalidAddress with the reason."""
    if not isinstance(text, str) or not text:
        raise InvalidAddress("address is empty")
    if text != text.strip():
        raise InvalidAddress("address has leading or trailing whitespace")
    if any(not 33 <= ord(c) <= 126 for c in text):
        raise InvalidAddress("address contains a character that is not printable ASCII")
    lower = text.lower()
    if lower.startswith("bitcoin:"):
        raise InvalidAddress("a payment URI (bitcoin:...), not an address: give the address alone")
    if lower.startswith(("bitcoincash:", "bchtest:", "bchreg:")) or _cashaddr_without_prefix(lower):
        # Bitcoin Cash's CashAddr (FAILURE_MODES 35): say so instead of a puzzling length or prefix error.
        raise InvalidAddress(f"a Bitcoin Cash address (CashAddr), not a Bitcoin {net.name} address")
    sep = lower.rfind("1")
    if sep > 0 and lower[:sep] in KNOWN_HRPS:
        return _parse_segwit(text, lower, sep, net)
    if all(c in BASE58_ALPHABET for c in text):
        return _parse_base58(text, net)
    if sep > 0 and (text == lower or text == text.upper()):
        raise InvalidAddress(f"unknown bech32 prefix {lower[:sep]!r}: a {net.name} address starts with {net.hrp}1")
    raise InvalidAddress(f"not a Bitcoin address: neither bech32 ({net.hrp}1...) nor base58")


def _cashaddr_without_prefix(lower: str) -> bool:
    # 42 characters of the bech32 alphabet starting with q (p2pkh) or p (p2sh): base58 addresses
    # have 25 to 34 characters and bech32 ones a "1" separator, so no Bitcoin address looks like this.
    return len(lower) == 42 and lower[0] in "qp" and "1" not in lower and all(c in bech32.CHARSET for c in lower)


def _parse_segwit(text: str, lower: str, sep: int, net: BitcoinNetwork) -> tuple[str, bytes]:
    hrp = lower[:sep]
    if text != lower and text != text.upper():
        raise InvalidAddress("mixed upper and lower case in a bech32 address")
    if hrp != net.hrp:
        raise InvalidAddress(f"address is for {KNOWN_HRPS[hrp]} (prefix {hrp}1), not {net.name} (prefix {net.hrp}1)")
    if len(lower) > BECH32_MAX_LENGTH:
        raise InvalidAddress(f"wrong length: a bech32 address has at most {BECH32_MAX_LENGTH} characters, "
                             f"got {len(lower)}")
    tail = lower[sep + 1:]
    for position, c in enumerate(tail, start=sep + 1):
        if c not in bech32.CHARSET:
            raise InvalidAddress(f"invalid bech32 character {text[position]!r} at position {position}")
    if len(tail) < 7:
        raise InvalidAddress(f"wrong length: too short for a bech32 address ({len(lower)} characters)")
    data = [bech32.CHARSET.find(c) for c in tail]
    encoding = bech32.bech32_verify_checksum(hrp, data)
    if encoding is None:
        raise InvalidAddress("bad checksum")
    version, program5 = data[0], data[1:-6]
    if version > 16:
        raise InvalidAddress(f"invalid witness version {version}")
    program = bech32.convertbits(program5, 5, 8, False)
    if program is None:
        raise InvalidAddress("invalid bech32 padding")
    if version == 0:
        if encoding != bech32.Encoding.BECH32:
            raise InvalidAddress("a witness v0 address must use bech32, not bech32m")
        if len(program) not in (20, 32):
            raise InvalidAddress(f"wrong length: a witness v0 program is 20 or 32 bytes, got {len(program)}")
    else:
        if encoding != bech32.Encoding.BECH32M:
            raise InvalidAddress(f"a witness v{version} address must use bech32m, not bech32")
        if not 2 <= len(program) <= 40:
            raise InvalidAddress(f"wrong length: a witness program is 2 to 40 bytes, got {len(program)}")
        if version != 1 or len(program) != 32:
            # Valid by BIP350 but unspendable today (reserved for soft forks):
            # paying to one would lose the coins.
            raise InvalidAddress(f"unsupported witness version {version} with a {len(program)}-byte program "
                                 "(only v1 taproot, 32 bytes, is spendable today)")
    script = bytes([0x50 + version if version else 0, len(program)]) + bytes(program)
    return lower, script


def _parse_base58(text: str, net: BitcoinNetwork) -> tuple[str, bytes]:
    # Checked before decoding: base58 decoding takes time growing with the square of the length,
    # and a request's one address of a million characters kept a server thread busy for minutes.
    if len(text) > BASE58_MAX_LENGTH:
        raise InvalidAddress(f"wrong length: a base58 address has at most {BASE58_MAX_LENGTH} characters, "
                             f"got {len(text)}")
    raw = base58.decode(text)
    if len(raw) != 25:
        raise InvalidAddress(f"wrong length: a base58 address holds 25 bytes, got {len(raw)}")
    payload, checksum = raw[:-4], raw[-4:]
    if hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != checksum:
        raise InvalidAddress("bad checksum")
    version, h160 = payload[0], payload[1:]
    if version == net.p2pkh:
        return text, b"\x76\xa9\x14" + h160 + b"\x88\xac"
    if version == net.p2sh:
        return text, b"\xa9\x14" + h160 + b"\x87"
    if version in KNOWN_BASE58:
        raise InvalidAddress(f"address is for {KNOWN_BASE58[version]}, not {net.name}")
    raise InvalidAddress(f"unknown base58 address version 0x{version:02x}")


def p2wpkh_address(pubkey: bytes, net: BitcoinNetwork) -> tuple[str, bytes]:
    h160 = _hash160(pubkey)
    return bech32.encode(net.hrp, 0, h160), b"\x00\x14" + h160


def script_to_address(script: bytes, net: BitcoinNetwork) -> str | None:
    """The address a scriptPubKey pays to, or None for scripts without one."""
    n = len(script)
    if n == 22 and script[:2] == b"\x00\x14" or n == 34 and script[:2] == b"\x00\x20":
        return bech32.encode(net.hrp, 0, script[2:])
    if n == 34 and script[:2] == b"\x51\x20":
        return bech32.encode(net.hrp, 1, script[2:])
    if n == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return base58.encode_check(bytes([net.p2pkh]) + script[3:23])
    if n == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        return base58.encode_check(bytes([net.p2sh]) + script[2:22])
    return None


def parse_account_key(text: str, net: BitcoinNetwork) -> HDKey:
    """An account-level extended public key (xpub/zpub on mainnet, tpub/vpub elsewhere)."""
    try:
        raw = base58.decode_check(text.strip())
    except Exception:
        raise InvalidKey("extended public key: not valid base58check") from None
    if len(raw) != 78:
        raise InvalidKey(f"extended public key: 78 bytes expected, got {len(raw)}")
    version = raw[:4]
    if version not in net.xpub_versions:
        raise InvalidKey(f"extended public key: version {version.hex()} is not one of "
                         f"{'/'.join(net.xpub_versions.values())} for {net.name}")
    if raw[45] not in (2, 3):
        raise InvalidKey("extended public key: holds a private key or an invalid public key; give the public key")
    # embit checks the version against its own table; hand it the plain
    # xpub/tpub version so zpub/vpub parse the same way.
    plain = bytes.fromhex("0488b21e") if version in (bytes.fromhex("0488b21e"), bytes.fromhex("04b24746")) \
        else bytes.fromhex("043587cf")
    try:
        return HDKey.from_base58(base58.encode_check(plain + raw[4:]))
    except Exception as exc:
        raise InvalidKey(f"extended public key: {exc}") from None


def derive(account_key: HDKey, index: int, change: bool, net: BitcoinNetwork) -> DerivedAddress:
    """BIP84: <account>/<0 receive | 1 change>/<index>, paid to p2wpkh."""
    if not 0 <= index < 2**31:
        raise InvalidKey(f"address index must be from 0 to 2^31-1, got {index}")
    child = account_key.child(1 if change else 0).child(index)
    address, script = p2wpkh_address(child.sec(), net)
    return DerivedAddress(address, script, f"{1 if change else 0}/{index}")


def _hash160(data: bytes) -> bytes:
    from embit.hashes import hash160

    return hash160(data)
