"""Deposit rules with no database: statuses, the confirmation count, when to credit."""
from __future__ import annotations

import dataclasses

PENDING = "PENDING"  # seen in a block on the best chain; shown, not spendable
CREDITED = "CREDITED"  # reached its confirmations; the ledger credited the user
ORPHANED = "ORPHANED"  # its block left the best chain before it was credited
REVERSED = "REVERSED"  # its block left the best chain after it was credited
# Outside policy (FAILURE_MODES 25): recorded and shown, never credited; the
# coins stay on the deposit address for staff to refund or credit by hand.
BELOW_MINIMUM = "BELOW_MINIMUM"  # less than the asset's min_deposit (and always 0)
ASSET_DISABLED = "ASSET_DISABLED"  # the asset's deposits_enabled was false when it was seen
STATUSES = (PENDING, CREDITED, ORPHANED, REVERSED, BELOW_MINIMUM, ASSET_DISABLED)
# Statuses of a deposit whose block is on the scanner's chain (a reorg that drops the block orphans it).
ON_CHAIN = (PENDING, CREDITED, BELOW_MINIMUM, ASSET_DISABLED)

DEPOSIT_WALLET = "deposit"
WALLETS = ("deposit", "hot", "cold")


def confirmations(view_height: int, block_height: int | None) -> int:
    """Depth of a block as the scanner sees the chain: 1 for the block at its
    cursor. Never negative, whatever a reorg did (FAILURE_MODES 30)."""
    if block_height is None:
        return 0
    return max(0, view_height - block_height + 1)


def required_confirmations(asset_confirmations: int, coinbase: bool, coinbase_maturity: int) -> int:
    """Confirmations before a deposit is credited. A coinbase output is spendable
    only in a block at depth maturity+1 (Bitcoin: 101), so it waits at least
    that long whatever the asset says (FAILURE_MODES 17)."""
    required = max(1, asset_confirmations)
    if coinbase and coinbase_maturity:
        required = max(required, coinbase_maturity + 1)
    return required


def policy_status(amount: int, asset: str, min_deposit: int, deposits_enabled: bool) -> tuple[str, str | None]:
    """(status, reason) for a deposit first seen now: PENDING, or why it won't be credited."""
    if not deposits_enabled:
        return ASSET_DISABLED, DISABLED_REASON.format(asset=asset)
    # At least 1 whatever min_deposit says: a 0-value output is valid on chain, but the ledger
    # refuses a transfer of 0, and a deposit it refuses halts the scanner for every user.
    minimum = max(1, min_deposit)
    if amount < minimum:
        return BELOW_MINIMUM, f"{amount} is below the {asset} minimum deposit of {minimum} base units"
    return PENDING, None


DISABLED_REASON = "deposits of {asset} are disabled"


def decided_before(reason: str | None, amount: int, asset: str) -> tuple[str, str | None]:
    """The (status, reason) a deposit mined again after a reorg keeps: the one it got when first
    seen (its reason stays when it is orphaned or reversed). Today's policy applied again took a
    credit back for good when deposits were disabled or the minimum raised meanwhile."""
    if reason is None:  # accepted then; a 0-value one (orphaned before 0015 moved them) still can't be
        return policy_status(amount, asset, 0, True)
    disabled = DISABLED_REASON.split("{")[0]
    return (ASSET_DISABLED if reason.startswith(disabled) else BELOW_MINIMUM), reason


def credit_due(block_height: int, view_height: int, required: int) -> bool:
    return confirmations(view_height, block_height) >= required


@dataclasses.dataclass(frozen=True)
class Deposit:
    deposit_id: int
    account_id: int
    chain: str
    asset: str
    txid: str
    index: int
    address: str
    amount: int
    confirmations: int
    status: str
    block_height: int | None
    block_hash: str | None
    coinbase: bool
    reason: str | None = None
