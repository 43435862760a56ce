"""The signer's one use case: decode -> check -> sign -> record, with an audit trail.

No gRPC here (api/ translates messages). Sign requests are handled one at a
time: the rolling limits are read, checked and recorded under one lock, so
two concurrent requests can't both fit under the same remaining allowance.
"""
from __future__ import annotations

import dataclasses
import threading
import time

from chains.bitcoin.params import network
from hsm.approvals import Approval, payload_hash
from hsm.audit import AuditLog
from hsm.config import Config
from hsm.decode import Explained, Transfer
from hsm.decode.bitcoin import BitcoinDecoder
from hsm.decode.ethereum import EthereumDecoder
from hsm.errors import Refused
from hsm.keystores.base import KeyInfo, Keystore
from hsm.limits import RollingLimits
from hsm.policy import Policy
from hsm.replacements import CountedSpends


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
    def __init__(self, config: Config, keystore: Keystore, clock=time.time):
        self.config = config
        self.keystore = keystore
        self.clock = clock
        self.audit = AuditLog(config.audit_log, durable=config.durable)
        self.limits = RollingLimits(config.limits_db, durable=config.durable, now_s=clock())
        self.policy = Policy(config.policy, self.limits, CountedSpends(config.limits_db, durable=config.durable))
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

    def list_keys(self) -> list[KeyInfo]:
        return self.keystore.list_keys()

    def public_key(self, key_id: str, path: str) -> tuple[bytes, str]:
        pub = self.keystore.public_key(key_id, path)
        return pub, self.keystore.extended_public_key(key_id, path) if path else ""

    def sign(self, chain: str, payload: bytes, keys: list[tuple[str, str]], approvals: list[Approval],
             client: str = "", reference: str = "", withdrawals=()) -> Outcome:
        with self._lock:
            try:
                digest = payload_hash(chain, payload) if chain in self.decoders else b""
            except Refused as exc:
                digest, early = b"", exc
            else:
                early = None
            digest_hex = digest.hex()
            self.audit.append("request", {
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
                self.policy.record(external, now, digest_hex)
            except Refused as exc:
                seq = self.audit.append("refused", {"payload_sha256": digest_hex, "rule": exc.rule,
                                                    "reason": exc.reason, **_summary(explained)})
                return Outcome(False, digest_hex, seq, exc.rule, exc.reason,
                               transfers=explained.transfers if explained else [],
                               fee=explained.fee if explained else 0,
                               fee_asset=explained.fee_asset if explained else "")
            seq = self.audit.append("signed", {"payload_sha256": digest_hex, "txid": signed.txid,
                                               "raw_sha256": _sha256(signed.raw_transaction),
                                               **_summary(explained)})
            return Outcome(True, digest_hex, seq, signed_payload=signed.signed_payload,
                           raw_transaction=signed.raw_transaction, txid=signed.txid,
                           transfers=explained.transfers, fee=explained.fee, fee_asset=explained.fee_asset)

    def close(self) -> None:
        self.audit.close()
        self.limits.close()
        self.policy.close()
        self.keystore.close()


def _summary(explained: Explained | None) -> dict:
    if explained is None:
        return {}
    return {"destinations": [{"address": t.destination, "asset": t.asset, "amount": str(t.amount),
                              "internal": t.internal} for t in explained.transfers],
            "fee": str(explained.fee), "fee_asset": explained.fee_asset}


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
