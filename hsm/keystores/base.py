"""The one interface every keystore implements, and the ECDSA details they share.

A keystore signs 32-byte digests that the signer computed itself from a
payload it decoded; it is never reachable with a caller's digest.
"""
from __future__ import annotations

import abc
import dataclasses

import coincurve

# secp256k1 group order; a signature with s > N/2 is "high-S": valid ECDSA,
# but refused by Bitcoin's standardness rules and by Ethereum (EIP-2).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N = SECP256K1_N // 2


@dataclasses.dataclass(frozen=True)
class Signature:
    r: int
    s: int
    recovery_id: int  # 0 or 1: Ethereum's y parity

    def der(self) -> bytes:
        """Strict DER (BIP66): SEQUENCE of two minimal INTEGERs. Written out because coincurve's
        round trip through libsecp256k1 objects costs twice as much; tested against it."""
        return _der_sequence(_der_integer(self.r) + _der_integer(self.s))

    def compact(self) -> bytes:
        return self.r.to_bytes(32, "big") + self.s.to_bytes(32, "big")

    @property
    def low_s(self) -> bool:
        return 0 < self.s <= HALF_N


def _der_integer(value: int) -> bytes:
    # Minimal big-endian bytes with room for a 0 sign bit: a leading 0x00 only if the top bit is set.
    body = value.to_bytes((value.bit_length() + 8) // 8, "big")
    return b"\x02" + bytes([len(body)]) + body


def _der_sequence(body: bytes) -> bytes:
    return b"\x30" + bytes([len(body)]) + body


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    key_id: str
    kind: str  # "software-hd" or "pkcs11"
    fingerprint: str  # hex: HD master fingerprint, or hash160(pubkey)[:4] for a token key
    public_key: bytes = b""  # token keys only: HD wallets have one per path


class Keystore(abc.ABC):
    kind: str

    @abc.abstractmethod
    def list_keys(self) -> list[KeyInfo]:
        """Every key (HD wallet or token key) this keystore holds."""

    @abc.abstractmethod
    def public_key(self, key_id: str, path: str) -> bytes:
        """33-byte compressed public key; UnknownKey if there is none."""

    @abc.abstractmethod
    def sign_digest(self, key_id: str, path: str, digest: bytes) -> Signature:
        """A low-S signature with its recovery id, over a digest the signer computed."""

    def sign_digest_der(self, key_id: str, path: str, digest: bytes) -> bytes:
        """The same low-S signature in strict DER (what Bitcoin puts in a witness)."""
        return self.sign_digest(key_id, path, digest).der()

    def extended_public_key(self, key_id: str, path: str, version: bytes | None = None) -> str:
        """Base58 xpub at path; only HD keystores have one."""
        return ""

    def close(self) -> None:
        pass


def normalise(r: int, s: int, digest: bytes, public_key: bytes) -> Signature:
    """Low-S form of (r, s) and the recovery id that gives back public_key, found by trial.

    For backends (PKCS#11 tokens) that return raw r||s: half their signatures
    are high-S, and none tells which of the two candidate keys is ours.
    """
    if s > HALF_N:
        s = SECP256K1_N - s
    compact = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    for recovery_id in (0, 1):
        try:
            candidate = coincurve.PublicKey.from_signature_and_message(
                compact + bytes([recovery_id]), digest, hasher=None)
        except Exception:
            continue
        if candidate.format(compressed=True) == public_key:
            return Signature(r, s, recovery_id)
    raise ValueError("signature does not verify against the key's public key")
