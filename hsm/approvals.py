"""Staff approvals: Ed25519 signatures bound to one exact payload or one withdrawal.

An approval signs APPROVAL_DOMAIN || chain || 0x00 || digest, so it can't be
replayed for other content, another chain, or as a signature in any other
protocol. Two kinds of digest:
- SHA-256 of a payload in its canonical form (a binary PSBT even if it was
  sent as base64): the whole transaction is approved (treasury moves);
- SHA-256 of a withdrawal's canonical content (withdrawal_digest): staff
  approve a withdrawal when it is requested, before any batch exists; the
  signer recomputes the digest from the content the core sends and matches
  the content's destination and amount to an output of the payload.
Only keys listed in signer.toml count, each once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hsm.config import StaffKey

APPROVAL_DOMAIN = b"custody-signer/approval/v1\x00"


@dataclasses.dataclass(frozen=True)
class Approval:
    approver: str
    signature: bytes


@dataclasses.dataclass(frozen=True)
class WithdrawalApproval:
    """A withdrawal's content as staff signed it, and their approvals."""

    withdrawal_id: str
    account_id: int
    asset: str
    to_address: str
    amount: int
    fee: int
    approvals: tuple[Approval, ...] = ()


def withdrawal_digest(withdrawal_id: str, account_id: int, asset: str, chain: str, to_address: str,
                      amount: int, fee: int) -> bytes:
    """SHA-256 of the withdrawal's canonical content (the custody core computes the same)."""
    canonical = json.dumps({"withdrawal_id": withdrawal_id, "account_id": account_id, "asset": asset,
                            "chain": chain, "to_address": to_address, "amount": str(amount), "fee": str(fee)},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


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


def approved_withdrawals(items, staff: tuple[StaffKey, ...], chain: str, quorum: int
                         ) -> tuple[list[WithdrawalApproval], list[str]]:
    """(the withdrawals with a quorum of valid approvals over their own content, why each other
    one falls short). A withdrawal id counts once however often it is sent."""
    approved, short, seen = [], [], set()
    for w in items:
        if w.withdrawal_id in seen:
            short.append(f"withdrawal {w.withdrawal_id!r}: sent twice, counted once")
            continue
        seen.add(w.withdrawal_id)
        digest = withdrawal_digest(w.withdrawal_id, w.account_id, w.asset, chain, w.to_address, w.amount, w.fee)
        valid, rejected = count_valid(w.approvals, staff, chain, digest)
        if len(valid) >= quorum:
            approved.append(w)
        else:
            detail = f"; not counted: {', '.join(rejected)}" if rejected else ""
            short.append(f"withdrawal {w.withdrawal_id!r}: {len(valid)} valid of {quorum}{detail}")
    return approved, short
