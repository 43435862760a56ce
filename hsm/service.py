"""The signer's one use case: decode -> check -> sign -> record, with an audit trail.

No gRPC here (api/ translates messages). Sign requests are decided one at a
time: the rolling limits are read, checked and recorded under one lock, so
two concurrent requests can't both fit under the same remaining allowance.
A request's audit entries (request, decision with the outflow that the
rolling limits count) are written together under that lock and made durable
after it, before the answer: one fsync per request, shared by concurrent
requests (hsm/audit.py).
"""
from __future__ import annotations

import dataclasses
import threading
import time

from chains.bitcoin.params import network
from hsm.approvals import Approval, payload_hash
from hsm.audit import AuditLog, head_path, lock_path
from hsm.config import Config
from hsm.decode import Explained, Transfer
from hsm.decode.bitcoin import BitcoinDecoder
from hsm.decode.ethereum import EthereumDecoder
from hsm.errors import AuditLogBroken, LimitsFileMissing, Refused
from hsm.keystores.base import KeyInfo, Keystore
from hsm.limits import RollingLimits, fees_of
from hsm.policy import Policy
from hsm.replacements import CountedSpends, StateMismatch


_LOST_LOG = ("if the log is lost for good, start once with --new-audit-log (the rolling 24h limits then "
             "restart from zero)")


@dataclasses.dataclass
class Outcome:
    signed: bool
    payload_hash: str
    audit_sequence: int
    refused_rule: str = ""
    refused_reason: str = ""
    signed_payload: bytes = b""
    raw_transaction: bytes = b""
    txid: str = ""
    transfers: list[Transfer] = dataclasses.field(default_factory=list)
    fee: int = 0
    fee_asset: str = ""


class Signer:
    def __init__(self, config: Config, keystore: Keystore, clock=time.time, new_limits_db: bool = False,
                 new_audit_log: bool = False):
        """new_limits_db: the operator knows limits_db is lost and starts with an empty one (on record).
        new_audit_log: the operator knows the audit log is lost and starts a new one; the rolling limits
        restart from zero (on record: the new log's first entry)."""
        self.config = config
        self.keystore = keystore
        self.clock = clock
        # The rolling limits are rebuilt from the log's "signed" entries; what they can't be rebuilt
        # from (input claims, counted fee bumps, the coins that paid approved withdrawals) is kept in
        # limits_db (hsm/replacements.py).
        self.limits = RollingLimits(now_s=clock())
        self.fees = RollingLimits(now_s=clock(), counted=fees_of)
        # Signed decisions that wrote limits_db: every Bitcoin one, and an Ethereum one that paid an
        # approved withdrawal first (its nonce is remembered there).
        self._signed_recorded, self._last_recorded_signed, self._last_request_chain = 0, 0, ""
        limits_db_existed = config.limits_db.exists() and config.limits_db.stat().st_size > 0
        # The log's head and lock files are made with it and never removed: beside a missing log they
        # say it was deleted (limits_db may not know a log was started: a file from before that was noted).
        head = head_path(config.audit_log)
        missing = not config.audit_log.exists()
        emptied = not missing and config.audit_log.stat().st_size == 0  # or a first start: the head tells
        leftovers = [p for p in (head, lock_path(config.audit_log)) if p.exists()] if missing else []
        old_head = ""
        if (missing or emptied) and new_audit_log and head.exists():
            # It describes the lost log (the new one would fail against it): kept in the new log's first entry.
            old_head = head.read_text(errors="replace").strip()
            head.unlink()
        try:
            self.audit = AuditLog(config.audit_log, durable=config.durable, visit=self._replay)
        except AuditLogBroken as exc:
            if not (leftovers or emptied):
                raise
            raise AuditLogBroken(f"{exc}. Restore the log from a backup or correct state.audit_log; "
                                 f"{_LOST_LOG}") from None
        if self._signed_recorded and not limits_db_existed:
            if not new_limits_db:
                self.audit.close()
                raise LimitsFileMissing(
                    f"limits_db {config.limits_db} is missing, but the audit log holds {self._signed_recorded} "
                    "signatures it remembers (every Bitcoin one, and Ethereum first payments of approved "
                    "withdrawals): the amounts inputs were signed with (CVE-2020-14199) and the coins or nonces "
                    "that paid approved withdrawals, which an empty file would forget. Restore it from a backup; "
                    "if it is lost for good, start once with --new-limits-db")
            self.audit.append("limits_db_recreated", {"path": str(config.limits_db),
                                                      "signed_bitcoin_before": self._signed_recorded})
        try:
            counted = CountedSpends(config.limits_db, durable=config.durable, logged_up_to=self.audit.count,
                                    last_recorded_signed=self._last_recorded_signed, log_lost=new_audit_log)
        except StateMismatch as exc:
            self.audit.close()
            raise LimitsFileMissing(f"limits_db {config.limits_db} and audit log {config.audit_log} do not match: "
                                    f"{exc}. Restore the two together from one backup"
                                    + (f" or correct state.audit_log; {_LOST_LOG}" if self.audit.count == 0 else "")
                                    ) from None
        except BaseException:  # limits_db unreadable: the log's lock goes with it
            self.audit.close()
            raise
        if leftovers and not new_audit_log:
            # This start has made a new empty log: limits_db keeps the evidence for the next one.
            counted.note_log_started()
            self.audit.close()
            counted.close()
            raise AuditLogBroken(
                f"audit log {config.audit_log} is missing, but {' and '.join(p.name for p in leftovers)} beside it "
                "were made with it: it was deleted or moved, and the rolling 24h limits it holds with it. Restore it "
                f"from a backup or correct state.audit_log; {_LOST_LOG}")
        if self.audit.count == 0 and (leftovers or old_head or counted.forgot_log):
            counted.note_log_started()  # before the log's first entry, as in sign
            self.audit.append("audit_log_recreated", {"path": str(config.audit_log), "lost_head": old_head,
                                                      "limits_db": str(config.limits_db)})
        self._counted = counted
        self.policy = Policy(config.policy, self.limits, counted, self.fees)
        pc = config.policy
        btc = pc.asset("bitcoin", "")
        self.decoders = {
            "bitcoin": BitcoinDecoder(network(config.bitcoin_network), keystore, btc.asset if btc else "BTC",
                                      pc.internal, pc.internal_xpubs),
            "ethereum": EthereumDecoder(config.ethereum_chain_id, keystore,
                                        {a.contract: a.asset for a in pc.assets if a.chain == "ethereum" and a.contract},
                                        pc.internal),
        }
        self._lock = threading.Lock()

    def _replay(self, entry: dict) -> None:
        try:
            self.limits.replay(entry)
            self.fees.replay(entry)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # The chain is unkeyed: an entry appended by hand can verify and still not be as this
            # signer writes them (an outflow that is no table of amounts, ...).
            raise AuditLogBroken(f"audit log {self.config.audit_log}: entry {entry['seq']} ({entry['kind']}) is "
                                 f"not as this signer writes it: {type(exc).__name__}: {exc}") from None
        if entry.get("kind") == "request":
            self._last_request_chain = entry["data"].get("chain", "")
        elif entry.get("kind") == "signed" and (self._last_request_chain == "bitcoin"
                                                or entry["data"].get("paid_first")):
            self._signed_recorded += 1
            self._last_recorded_signed = entry["seq"]

    def list_keys(self) -> list[KeyInfo]:
        return self.keystore.list_keys()

    def public_key(self, key_id: str, path: str) -> tuple[bytes, str]:
        pub = self.keystore.public_key(key_id, path)
        return pub, self.keystore.extended_public_key(key_id, path) if path else ""

    def sign(self, chain: str, payload: bytes, keys: list[tuple[str, str]], approvals: list[Approval],
             client: str = "", reference: str = "", withdrawals=()) -> Outcome:
        with self._lock:
            if self.audit.count == 0:
                # limits_db first: from now on an empty or missing log is refused at start.
                self._counted.note_log_started()
            outcome, entries = self._decide(chain, payload, keys, approvals, client, reference, withdrawals)
            outcome.audit_sequence = self.audit.write(entries)
        self.audit.sync(outcome.audit_sequence)  # outside the lock: concurrent requests share the fsync
        return outcome

    def _decide(self, chain, payload, keys, approvals, client, reference, withdrawals) -> tuple[Outcome, list]:
        try:
            digest = payload_hash(chain, payload) if chain in self.decoders else b""
        except Refused as exc:
            digest, early = b"", exc
        else:
            early = None
        digest_hex = digest.hex()
        request = ("request", {
            "client": client, "reference": reference, "chain": chain, "payload_sha256": digest_hex,
            "payload_bytes": len(payload), "keys": [list(k) for k in keys],
            "approvers": [a.approver for a in approvals],
            "withdrawals": {w.withdrawal_id: [a.approver for a in w.approvals] for w in withdrawals}})
        explained: Explained | None = None
        try:
            if early:
                raise early
            decoder = self.decoders.get(chain)
            if decoder is None:
                raise Refused("chain", f"unknown chain {chain!r}; the signer signs bitcoin and ethereum")
            explained = decoder.explain(payload, keys)
            now = self.clock()
            external = self.policy.check(explained, approvals, digest, now, withdrawals, payload)
            signed = decoder.sign(explained)
            # The decision's sequence in the log: request, then decision (hsm/replacements.py).
            self.policy.record(external, now, digest_hex, audit_seq=self.audit.next_seq + 1)
        except Refused as exc:
            decision = ("refused", {"payload_sha256": digest_hex, "rule": exc.rule, "reason": exc.reason,
                                    **_summary(explained)})
            return Outcome(False, digest_hex, 0, exc.rule, exc.reason,
                           transfers=explained.transfers if explained else [],
                           fee=explained.fee if explained else 0,
                           fee_asset=explained.fee_asset if explained else ""), [request, decision]
        except Exception as exc:
            # A bug or a keystore failure: the request is still on record, then the error goes up.
            self.audit.sync(self.audit.write([request, ("error", {"payload_sha256": digest_hex,
                                                                  "error": f"{type(exc).__name__}: {exc}"})]))
            raise
        decision = ("signed", {"payload_sha256": digest_hex, "txid": signed.txid,
                               "raw_sha256": _sha256(signed.raw_transaction),
                               # What the rolling limits count, at the policy's clock (replayed at start).
                               # A fee bump of a spend already counted adds nothing (Policy.record).
                               "outflow": {} if getattr(external, "replaces", False)
                               else {asset: str(amount) for asset, amount in external.items()},
                               # What the rolling fees count: the fee, or a bump's excess over its spend's.
                               "fees": {explained.fee_asset: str(external.fee_counted)} if external.fee_counted
                               else {},
                               "at_s": now, **_summary(explained),
                               # Withdrawals this one paid first (limits_db remembers by what).
                               **({"paid_first": list(external.paid_first)}
                                  if getattr(external, "paid_first", ()) else {})})
        return Outcome(True, digest_hex, 0, signed_payload=signed.signed_payload,
                       raw_transaction=signed.raw_transaction, txid=signed.txid,
                       transfers=explained.transfers, fee=explained.fee,
                       fee_asset=explained.fee_asset), [request, decision]

    def close(self) -> None:
        self.audit.close()
        self.limits.close()
        self.fees.close()
        self.policy.close()
        self.keystore.close()


def _summary(explained: Explained | None) -> dict:
    if explained is None:
        return {}
    return {"destinations": [{"address": t.destination, "asset": t.asset, "amount": str(t.amount),
                              "internal": t.internal, **({"path": t.path} if t.path else {})}
                             for t in explained.transfers],
            "fee": str(explained.fee), "fee_asset": explained.fee_asset}


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
