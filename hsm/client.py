"""What the custody core uses to reach the signer: the only way to it."""
from __future__ import annotations

import dataclasses

import grpc

from hsm.v1 import signer_pb2, signer_pb2_grpc


@dataclasses.dataclass(frozen=True)
class SignResult:
    signed: bool
    refused_rule: str
    refused_reason: str
    signed_payload: bytes
    raw_transaction: bytes
    txid: str
    destinations: list[tuple[str, str, int, bool]]  # (address, asset, amount, internal)
    fee: int
    payload_hash: str
    audit_sequence: int


class SignerClient:
    """target: "unix:/path/signer.sock" or "127.0.0.1:PORT" (then TLS: give root_cert,
    and client_cert/client_key for mutual TLS)."""

    def __init__(self, target: str, token: str, *, root_cert: bytes | None = None,
                 client_cert: bytes | None = None, client_key: bytes | None = None, timeout_s: float = 30.0):
        if target.startswith("unix:"):
            self.channel = grpc.insecure_channel(target)
        else:
            creds = grpc.ssl_channel_credentials(root_cert, client_key, client_cert)
            self.channel = grpc.secure_channel(target, creds)
        self.stub = signer_pb2_grpc.SignerServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")]
        self.timeout_s = timeout_s

    def list_keys(self) -> list[signer_pb2.KeyInfo]:
        return list(self.stub.ListKeys(signer_pb2.ListKeysRequest(), metadata=self.metadata,
                                       timeout=self.timeout_s).keys)

    def public_key(self, key_id: str, path: str = "") -> signer_pb2.GetPublicKeyResponse:
        return self.stub.GetPublicKey(signer_pb2.GetPublicKeyRequest(key_id=key_id, path=path),
                                      metadata=self.metadata, timeout=self.timeout_s)

    def sign(self, chain: str, payload: bytes, keys: list[tuple[str, str]], approvals=(),
             reference: str = "", withdrawals=()) -> SignResult:
        """withdrawals: hsm.approvals.WithdrawalApproval of the withdrawals the payload pays."""
        request = signer_pb2.SignRequest(
            chain=chain, payload=payload, reference=reference,
            keys=[signer_pb2.KeyPath(key_id=k, path=p) for k, p in keys],
            approvals=[signer_pb2.Approval(approver=a.approver, signature=a.signature) for a in approvals],
            withdrawals=[signer_pb2.ApprovedWithdrawal(
                withdrawal_id=w.withdrawal_id, account_id=w.account_id, asset=w.asset, to_address=w.to_address,
                amount=str(w.amount), fee=str(w.fee),
                approvals=[signer_pb2.Approval(approver=a.approver, signature=a.signature) for a in w.approvals])
                for w in withdrawals])
        r = self.stub.Sign(request, metadata=self.metadata, timeout=self.timeout_s)
        return SignResult(r.decision == signer_pb2.DECISION_SIGNED, r.refused_rule, r.refused_reason,
                          r.signed_payload, r.raw_transaction, r.txid,
                          [(d.address, d.asset, int(d.amount), d.internal) for d in r.destinations],
                          int(r.fee or 0), r.payload_hash, r.audit_sequence)

    def close(self) -> None:
        self.channel.close()
