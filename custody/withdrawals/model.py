"""The withdrawal state machine (DESIGN section 4). Pure: no database, no gRPC."""
from __future__ import annotations

import datetime

from custody.errors import FailedPrecondition

PENDING_REVIEW = "PENDING_REVIEW"
APPROVED = "APPROVED"
QUEUED = "QUEUED"
SIGNING = "SIGNING"
SIGNED = "SIGNED"
BROADCAST = "BROADCAST"
CONFIRMING = "CONFIRMING"
COMPLETED = "COMPLETED"
REJECTED = "REJECTED"
CANCELLED = "CANCELLED"
FAILED = "FAILED"

STATUSES = (PENDING_REVIEW, APPROVED, QUEUED, SIGNING, SIGNED, BROADCAST, CONFIRMING, COMPLETED,
            REJECTED, CANCELLED, FAILED)
TERMINAL = frozenset({COMPLETED, REJECTED, CANCELLED, FAILED})
# Terminal states that release the hold; COMPLETED posts it instead.
VOIDING = frozenset({REJECTED, CANCELLED, FAILED})
# The window of the daily withdrawal limit: what was requested and not voided in the last DAY counts.
DAY = datetime.timedelta(days=1)
# The user may cancel until signing starts: after that a signed transaction
# may exist and only the chain can say whether it paid.
CANCELLABLE = frozenset({PENDING_REVIEW, APPROVED, QUEUED})

ALLOWED = {
    None: {PENDING_REVIEW, APPROVED},
    PENDING_REVIEW: {APPROVED, REJECTED, CANCELLED},
    # QUEUED -> APPROVED: taken out of a batch that could not be built or sent (requeue).
    # APPROVED -> FAILED: it can never be signed (above the signer's per-transaction maximum).
    APPROVED: {QUEUED, CANCELLED, FAILED},
    QUEUED: {SIGNING, APPROVED, CANCELLED},
    # SIGNING -> FAILED: the signer refused. SIGNING -> APPROVED: refused for another withdrawal of the batch.
    SIGNING: {SIGNED, FAILED, APPROVED},
    SIGNED: {BROADCAST, FAILED, APPROVED},
    # BROADCAST -> FAILED/APPROVED only when the node refused it and its inputs are provably unspent.
    BROADCAST: {CONFIRMING, FAILED, APPROVED},
    # CONFIRMING -> BROADCAST: a reorg dropped the block that held it.
    CONFIRMING: {COMPLETED, BROADCAST},
}


def check_transition(current: str | None, new: str) -> None:
    if new not in ALLOWED.get(current, set()):
        raise FailedPrecondition(f"a withdrawal can't go from {current} to {new}")


def approvals_needed(amount: int, auto_approve_max: int, two_approvals_above: int) -> int:
    """0 (auto-approved), 1 or 2 distinct staff approvals."""
    if amount <= auto_approve_max:
        return 0
    if amount > two_approvals_above:
        return 2
    return 1


def content_digest(withdrawal_id: str, account_id: int, asset: str, chain: str, to_address: str,
                   amount: int, fee: int) -> bytes:
    """SHA-256 of the withdrawal's canonical content: what a staff approval signs. The format
    is the signer's (hsm.approvals.withdrawal_digest), which verifies the approvals itself."""
    from hsm.approvals import withdrawal_digest

    return withdrawal_digest(withdrawal_id, account_id, asset, chain, to_address, amount, fee)


def split_fee(fee: int, amounts: list[int]) -> list[int]:
    """The network fee shared by outputs in proportion to their amounts; the
    rounding rest goes to the first so that the shares add up exactly."""
    total = sum(amounts)
    shares = [fee * a // total for a in amounts]
    shares[0] += fee - sum(shares)
    return shares
