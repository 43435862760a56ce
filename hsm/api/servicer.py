"""hsm.v1.SignerService: translates messages; the work is in hsm.service.Signer."""
from __future__ import annotations

import grpc

from hsm.api.auth import TokenAuth
from hsm.approvals import Approval, WithdrawalApproval
from hsm.errors import UnknownKey
from hsm.service import Signer
from hsm.v1 import signer_pb2, signer_pb2_grpc


class SignerServicer(signer_pb2_grpc.SignerServiceServicer):
    def __init__(self, signer: Signer, auth: TokenAuth):
        self.signer = signer
        self.auth = auth

    def GetPublicKey(self, request, context):
        try:
            pub, xpub = self.signer.public_key(request.key_id, request.path)
        except UnknownKey as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return signer_pb2.GetPublicKeyResponse(key_id=request.key_id, path=request.path, public_key=pub,
                                               extended_public_key=xpub)

    def ListKeys(self, request, context):
        return signer_pb2.ListKeysResponse(keys=[
            signer_pb2.KeyInfo(key_id=k.key_id, kind=k.kind, fingerprint=k.fingerprint, public_key=k.public_key)
            for k in self.signer.list_keys()])

    def Sign(self, request, context):
        client = self.auth.client_for(context.invocation_metadata()) or ""
        outcome = self.signer.sign(
            request.chain, request.payload, [(k.key_id, k.path) for k in request.keys],
            [Approval(a.approver, a.signature) for a in request.approvals], client=client,
            reference=request.reference, withdrawals=[
                WithdrawalApproval(w.withdrawal_id, w.account_id, w.asset, w.to_address, _amount(w.amount),
                                   _amount(w.fee), tuple(Approval(a.approver, a.signature) for a in w.approvals))
                for w in request.withdrawals])
        return signer_pb2.SignResponse(
            decision=signer_pb2.DECISION_SIGNED if outcome.signed else signer_pb2.DECISION_REFUSED,
            refused_rule=outcome.refused_rule, refused_reason=outcome.refused_reason,
            signed_payload=outcome.signed_payload, raw_transaction=outcome.raw_transaction, txid=outcome.txid,
            destinations=[signer_pb2.Destination(address=t.destination, asset=t.asset, amount=str(t.amount),
                                                 internal=t.internal) for t in outcome.transfers],
            fee=str(outcome.fee), fee_asset=outcome.fee_asset, payload_hash=outcome.payload_hash,
            audit_sequence=outcome.audit_sequence)


def _amount(text: str) -> int:
    """Base units; anything else is -1, which matches no output and no signed content."""
    return int(text) if text.isdigit() else -1
