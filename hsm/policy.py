"""The rules a payload must pass before the signer signs it.

Checked in this order, the first failing rule refuses (Refused.rule names it):
  inputs               - each Bitcoin input is claimed with the amount and script it was signed
                         with before, if it was (hsm/replacements.py: CVE-2020-14199)
  asset                - every asset moved has a policy entry in signer.toml
  deny_list            - no destination is on the deny list (internal or not)
  allow_list           - if an allow list is configured, every external destination is on it
  max_fee              - the fee is at most the chain's native-asset max_fee
  max_per_transaction  - external amount per asset
  rolling_fees_24h     - the fees over the last 24 hours, this one included, are at most the native
                         asset's max_fees_per_24h; a fee bump counts only what it pays above the
                         highest fee counted for its spend (one of them confirms)
  rolling_24h          - external amount per asset over the last 24 hours, this one included; a
                         replacement of a spend already counted (same inputs, same external
                         outputs: a fee bump) counts once (hsm/replacements.py)
  approvals            - each external output above approval_above is covered by a quorum of distinct
                         staff approvals: of this whole payload, or of one withdrawal whose destination,
                         amount and asset are that output's (one withdrawal covers one output); a
                         Bitcoin transaction paying a withdrawal paid before must spend every coin the
                         first one spent (a fee bump does), so at most one of them can confirm
Internal destinations (our change, configured internal wallets) are always
allowed and don't count toward the amount limits: moving coins between the
exchange's own wallets can't lose them, except in fees, which every transaction
pays and the fee rules limit.
"""
from __future__ import annotations

import collections

from hsm.approvals import approved_withdrawals, count_valid
from hsm.config import PolicyConfig, normalise_address
from hsm.decode import Explained
from hsm.errors import Refused
from hsm.limits import WINDOW_S, RollingLimits
from hsm.replacements import CountedSpends, spend_key


class Outflow(dict):
    """External amount per asset to record once signed; spend_key names the spend, and
    replaces says it was counted already (a fee bump): no more outflow is recorded, and of its
    fee only what is above the fee counted for the spend."""

    spend_key: str | None = None
    replaces: bool = False
    fee_asset: str = ""
    fee: int = 0  # this transaction's fee
    fee_counted: int = 0  # what it adds to the rolling fees: all of it, or a bump's excess
    inputs: tuple = ()  # the input claims to remember once signed
    paid_first: tuple = ()  # approved withdrawals this transaction is the first to pay


class Policy:
    def __init__(self, config: PolicyConfig, limits: RollingLimits, counted: CountedSpends | None = None,
                 fees: RollingLimits | None = None):
        self.config = config
        self.limits = limits
        self.counted = counted
        self.fees = fees if fees is not None else RollingLimits(0.0)

    def check(self, tx: Explained, approvals, digest: bytes, now_s: float, withdrawals=(),
              payload: bytes = b"") -> Outflow:
        """Raises Refused, or returns the external amount per asset (to record once signed)."""
        cfg = self.config
        if self.counted is not None:
            for outpoint, amount, script, before, script_before in self.counted.claimed_otherwise(tx.inputs):
                raise Refused("inputs", f"input {outpoint} was signed before as {before} sats to script "
                                        f"{script_before.hex()}; this request says {amount} sats to {script.hex()}: "
                                        "signatures made under two amounts for one input combine into a "
                                        "transaction paying a fee neither request showed")
        external: dict[str, int] = collections.defaultdict(int)
        policies = {}
        for t in tx.transfers:
            policy = cfg.asset(tx.chain, t.contract)
            if policy is None:
                raise Refused("asset", f"no policy for {t.asset} on {tx.chain}: the signer moves only assets "
                                       "its config lists")
            policies[t.asset] = policy
            if t.destination in cfg.deny:
                raise Refused("deny_list", f"destination {t.destination} is on the deny list")
            if t.internal:
                continue
            if cfg.allow is not None and t.destination not in cfg.allow:
                raise Refused("allow_list", f"destination {t.destination} is not on the allow list")
            external[t.asset] += t.amount
        fee_policy = cfg.asset(tx.chain, "")
        if fee_policy is None:
            raise Refused("asset", f"no policy for {tx.fee_asset} on {tx.chain}, which pays the fee")
        if tx.fee > fee_policy.max_fee:
            raise Refused("max_fee", f"fee {tx.fee} is above the maximum {fee_policy.max_fee} {tx.fee_asset}")
        for asset, amount in external.items():
            if amount > policies[asset].max_per_transaction:
                raise Refused("max_per_transaction", f"{amount} {asset} is above the maximum "
                                                     f"{policies[asset].max_per_transaction} per transaction")
        outflow = Outflow(external)
        outflow.inputs = tx.inputs
        outflow.spends = tx.spends
        fee_before = None
        if self.counted is not None and payload:
            outflow.spend_key = spend_key(tx)
            if outflow.spend_key is not None:
                fee_before = self.counted.counted_since(outflow.spend_key, now_s - WINDOW_S)
            outflow.replaces = fee_before is not None
        outflow.fee_asset, outflow.fee = tx.fee_asset, tx.fee
        outflow.fee_counted = max(0, tx.fee - (fee_before or 0))
        fees = self.fees.spent_since(tx.fee_asset, now_s - WINDOW_S)
        if fees + outflow.fee_counted > fee_policy.max_fees_per_24h:
            raise Refused("rolling_fees_24h", f"fee {outflow.fee_counted} {tx.fee_asset} on top of {fees} in the last "
                                              f"24 hours is above the maximum {fee_policy.max_fees_per_24h}")
        for asset, amount in ({} if outflow.replaces else external).items():
            spent = self.limits.spent_since(asset, now_s - WINDOW_S)
            if spent + amount > policies[asset].max_per_24h:
                raise Refused("rolling_24h", f"{amount} {asset} on top of {spent} in the last 24 hours is above "
                                             f"the maximum {policies[asset].max_per_24h}")
        needs = [t for t in tx.transfers if not t.internal and t.amount > policies[t.asset].approval_above]
        if needs:
            used = self._check_approvals(tx, needs, approvals, withdrawals, digest)
            outflow.paid_first = self._paid_once(tx, used)
        return outflow

    def _paid_once(self, tx: Explained, withdrawal_ids: list[str]) -> tuple[str, ...]:
        """Refuses a payment of a withdrawal paid before by coins this one does not all spend: both
        could confirm. Returns the withdrawals paid here for the first time."""
        if self.counted is None or not tx.spends:
            return ()
        spending = set(tx.spends)
        before = self.counted.first_spends(withdrawal_ids)
        for withdrawal_id, coins in before.items():
            # Bitcoin: a bump spends the same coins. Ethereum: a replacement has the same sender and
            # nonce; one with another nonce could confirm beside the first.
            if not coins <= spending:
                raise Refused("approvals", f"withdrawal {withdrawal_id} was paid before by a transaction spending "
                                           f"{', '.join(sorted(coins - spending))}, which this one does not spend: "
                                           "both could confirm and pay it twice; a new payment needs a new withdrawal")
        return tuple(w for w in withdrawal_ids if w not in before)

    def _check_approvals(self, tx: Explained, needs, approvals, withdrawals, digest: bytes) -> list[str]:
        cfg = self.config
        """Returns the ids of the withdrawals whose approvals cover the outputs; when the whole
        payload is approved, one id standing for that approval, so that _paid_once pins it to the
        first payment: an Ethereum payload does not name its sender (the key the core names at
        signing does), and one approval of it signed by each of our keys paid its payee once per
        key (found by the signer review)."""
        valid, rejected = count_valid(approvals, cfg.staff, tx.chain, digest)
        if len(valid) >= cfg.approval_quorum:
            return [f"payload:{digest.hex()}"]
        pool, short = approved_withdrawals(withdrawals, cfg.staff, tx.chain, cfg.approval_quorum)
        used = []
        for t in needs:
            match = next((w for w in pool if w.asset == t.asset and w.amount == t.amount
                          and normalise_address(tx.chain, w.to_address) == t.destination), None)
            if match is None:
                detail = "; ".join(short + ([f"payload: not counted: {', '.join(rejected)}"] if rejected else []))
                raise Refused("approvals", f"{t.amount} {t.asset} to {t.destination} is above the approval "
                                           f"threshold: it needs {cfg.approval_quorum} staff approvals of this "
                                           f"payload ({len(valid)} valid) or of a withdrawal of exactly this "
                                           f"destination and amount" + (f"; {detail}" if detail else ""))
            pool.remove(match)  # one approved withdrawal pays one output, never two
            used.append(match.withdrawal_id)
        return used

    def record(self, external: dict[str, int], now_s: float, payload_sha256: str, audit_seq: int | None = None) -> None:
        # A replacement of a spend counted within the window is the same money: counted once.
        replaces = getattr(external, "replaces", False)
        if not replaces:
            for asset, amount in external.items():
                self.limits.record(asset, amount, now_s, payload_sha256)
        fee_counted = getattr(external, "fee_counted", 0)
        if fee_counted:
            self.fees.record(external.fee_asset, fee_counted, now_s, payload_sha256)
        key = getattr(external, "spend_key", None)
        inputs = getattr(external, "inputs", ())
        paid_first = getattr(external, "paid_first", ())
        if self.counted is not None and (key is not None or inputs or paid_first):
            self.counted.add(key, now_s, inputs, paid_first, fee=getattr(external, "fee", 0), replaces=replaces,
                             audit_seq=audit_seq, spends=getattr(external, "spends", ()))

    def close(self) -> None:
        if self.counted is not None:
            self.counted.close()
