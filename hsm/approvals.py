"""Staff approvals: Ed25519 signatures bound to one exact payload.

An approval signs APPROVAL_DOMAIN || chain || 0x00 || SHA-256(payload), so it
can't be replayed for another payload, another chain, or as a signature in
any other protocol. The payload is in its canonical form (a binary PSBT even
if it was sent as base64). Only keys listed in signer.toml count, each once.
"""
from __future__ import annotations

import dataclasses
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hsm.config import StaffKey

APPROVAL_DOMAIN = b"custody-signer/approval/v1\x00"


@dataclasses.dataclass(frozen=True)
class Approval:
    approver: str
    signature: bytes


def canonical_payload(chain: str, payload: bytes) -> bytes:
    if chain == "bitcoin":
        from hsm.decode.bitcoin import psbt_bytes

        return psbt_bytes(payload)
    return payload


def payload_hash(chain: str, payload: bytes) -> bytes:
    return hashlib.sha256(canonical_payload(chain, payload)).digest()


def approval_message(chain: str, digest: bytes) -> bytes:
    return APPROVAL_DOMAIN + chain.encode() + b"\x00" + digest


def sign_approval(private_key: Ed25519PrivateKey, approver: str, chain: str, payload: bytes) -> Approval:
    """What a staff member's tool does (`custody signer approve`)."""
    return Approval(approver, private_key.sign(approval_message(chain, payload_hash(chain, payload))))


def count_valid(approvals, staff: tuple[StaffKey, ...], chain: str, digest: bytes) -> tuple[set[str], list[str]]:
    """(names of distinct staff whose approval verifies, why each other one did not count)."""
    keys = {s.name: s.public_key for s in staff}
    message = approval_message(chain, digest)
    valid: set[str] = set()
    rejected: list[str] = []
    for a in approvals:
        key = keys.get(a.approver)
        if key is None:
            rejected.append(f"{a.approver!r}: not a staff key in the signer's config")
            continue
        if a.approver in valid:
            rejected.append(f"{a.approver!r}: a second approval by the same person")
            continue
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(bytes(a.signature), message)
        except (InvalidSignature, ValueError):
            rejected.append(f"{a.approver!r}: signature does not verify for this payload")
            continue
        valid.add(a.approver)
    return valid, rejected
