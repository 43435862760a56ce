"""hsm.v1.SignerService: translates messages; the work is in hsm.service.Signer."""
from __future__ import annotations

import grpc

from hsm.api.auth import TokenAuth
from hsm.approvals import Approval, WithdrawalApproval
from hsm.errors import UnknownKey
from hsm.service import Signer
from hsm.v1 import signer_pb2, signer_pb2_grpc


# The client's free text goes into the audit log verbatim (hsm/service.py's request entry), refused requests
# included, and that log is read whole at each start and can't be trimmed (hash chain). So each field has a
# limit, checked before anything is logged or decided, well above what the custody core sends
# (custody/withdrawals/sender.py, hsm/client.py; its own columns are in custody/db/schema.py).
MAX_CHAIN = 16              # "bitcoin", "ethereum"
MAX_REFERENCE = 128         # a 32-character batch id, with ":bump:<sat/vB>" or ":cancel" at most
MAX_KEY_ID = 64             # a wallet name or token key label ("hot")
MAX_PATH = 64               # "m" and five levels of the largest index, "/2147483647h", is 61 characters
MAX_KEYS = 2_000            # one per input path; a standard transaction (400,000 weight) has under 1,500 inputs
MAX_APPROVER = 64           # the core's approver column is 64 characters
MAX_APPROVALS = 100         # one per staff member, for the payload or for one withdrawal
MAX_WITHDRAWALS = 10_000    # one per output; a standard transaction has under 3,300 (the core batches 500)
MAX_WITHDRAWAL_ID = 64      # the core's ids are 32 characters
MAX_ASSET = 16              # the core's asset column is 16 characters
MAX_ADDRESS = 128           # the core's column; a bech32 address has at most 90 characters
MAX_AMOUNT = 78             # digits of 2**256 - 1, the largest ERC-20 amount


class _TooLong(Exception):
    """A field over its limit: the request is answered INVALID_ARGUMENT, naming the field and the limit."""


def _too_long(name: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise _TooLong(f"{name} is {len(text)} characters long; at most {limit} are accepted")


def _too_many(name: str, items, limit: int) -> None:
    if len(items) > limit:
        raise _TooLong(f"{name} has {len(items)} entries; at most {limit} are accepted")


def _check_key(name: str, key_id: str, path: str) -> None:
    _too_long(f"{name}key_id", key_id, MAX_KEY_ID)
    _too_long(f"{name}path", path, MAX_PATH)


def _check_approvals(name: str, approvals) -> None:
    _too_many(name, approvals, MAX_APPROVALS)
    for i, a in enumerate(approvals):
        _too_long(f"{name}[{i}].approver", a.approver, MAX_APPROVER)


def _check_sign_request(request) -> None:
    _too_long("chain", request.chain, MAX_CHAIN)
    _too_long("reference", request.reference, MAX_REFERENCE)
    _too_many("keys", request.keys, MAX_KEYS)
    for i, k in enumerate(request.keys):
        _check_key(f"keys[{i}].", k.key_id, k.path)
    _check_approvals("approvals", request.approvals)
    _too_many("withdrawals", request.withdrawals, MAX_WITHDRAWALS)
    for i, w in enumerate(request.withdrawals):
        _too_long(f"withdrawals[{i}].withdrawal_id", w.withdrawal_id, MAX_WITHDRAWAL_ID)
        _too_long(f"withdrawals[{i}].asset", w.asset, MAX_ASSET)
        _too_long(f"withdrawals[{i}].to_address", w.to_address, MAX_ADDRESS)
        _too_long(f"withdrawals[{i}].amount", w.amount, MAX_AMOUNT)
        _too_long(f"withdrawals[{i}].fee", w.fee, MAX_AMOUNT)
        _check_approvals(f"withdrawals[{i}].approvals", w.approvals)


class SignerServicer(signer_pb2_grpc.SignerServiceServicer):
    def __init__(self, signer: Signer, auth: TokenAuth):
        self.signer = signer
        self.auth = auth

    def GetPublicKey(self, request, context):
        try:
            _check_key("", request.key_id, request.path)
        except _TooLong as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
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
        try:
            _check_sign_request(request)  # before anything is logged or decided
        except _TooLong as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
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
    # ASCII only: "²".isdigit() is true and int("²") raises (the client got UNKNOWN, nothing logged).
    return int(text) if text.isascii() and text.isdigit() else -1
