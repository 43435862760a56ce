"""The signer process under hostile requests: garbage payloads, paths and approvals give a
refusal or a precise status, never INTERNAL, and the signer keeps serving."""
import collections
import itertools
import os

import grpc

from hsm.v1 import signer_pb2
from tests.support.withdrawals import start_signer

TEXT = ["", "bitcoin", "ethereum", "x\x00y", "\x1b[2J", "ü" * 5000]
PATHS = ["", "m/84'/1'/0'/0/0", "m/84'/1'/0'/0/99999999999", "m/" + "0/" * 300 + "0", "m/-1", "x\x00"]
PAYLOADS = [b"", b"\x00" * 10, os.urandom(1000), b"psbt\xff" + os.urandom(200), b"cHNidP8BAA==",
            b"\x02" + os.urandom(60), b"\x02\xc0", b"psbt\xff\x01\x00" * 1000]


def test_hostile_requests_are_refused_and_the_signer_keeps_serving(tmp_path):
    signer = start_signer(tmp_path)
    stub, md = signer.client.stub, signer.client.metadata
    failures = []

    outcomes = collections.Counter()

    def call(method, request):
        try:
            reply = method(request, metadata=md, timeout=10)
            outcomes[signer_pb2.Decision.Name(reply.decision) if hasattr(reply, "decision") else "OK"] += 1
        except grpc.RpcError as exc:
            outcomes[exc.code().name] += 1
            # RESOURCE_EXHAUSTED: error details echoing the input past gRPC's metadata limit.
            if exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED):
                failures.append(f"{type(request).__name__} {str(request)[:120]!r}: {exc.code().name} {exc.details()}")

    try:
        key_id = next(iter(signer.client.list_keys())).key_id
        for text, path in itertools.product(TEXT, PATHS):
            call(stub.GetPublicKey, signer_pb2.GetPublicKeyRequest(key_id=text or key_id, path=path))
        # Digits str.isdigit() takes and int() refuses ("²"), and other scripts' digits: INTERNAL before.
        amounts = itertools.cycle(["-1", "\u00b2", "\u0661\u0660\u0660\u0660", "1000"])
        for chain, payload, path in itertools.product(TEXT, PAYLOADS, PATHS[:4]):
            call(stub.Sign, signer_pb2.SignRequest(
                chain=chain, payload=payload, reference=chain,
                keys=[signer_pb2.KeyPath(key_id=key_id, path=path), signer_pb2.KeyPath(key_id=chain, path=chain)],
                approvals=[signer_pb2.Approval(approver=chain, signature=os.urandom(64))],
                withdrawals=[signer_pb2.ApprovedWithdrawal(
                    withdrawal_id=chain, account_id=-(2**63), asset=chain, to_address=chain, amount=next(amounts), fee="1e9",
                    approvals=[signer_pb2.Approval(approver="alice", signature=b"")])]))
        assert not failures, "\n".join(failures[:10])
        assert "DECISION_SIGNED" not in outcomes, outcomes
        assert outcomes["INVALID_ARGUMENT"] + outcomes["DECISION_REFUSED"] + outcomes["NOT_FOUND"] > 0, outcomes
        assert signer.process.poll() is None
        assert signer.client.list_keys()  # still serving
    finally:
        signer.stop()


def test_oversized_text_fields_are_refused_before_they_reach_the_audit_log(tmp_path):
    """Free text goes into the audit log verbatim: a field over its limit is INVALID_ARGUMENT naming the
    field and its limit, and nothing is logged; a request shaped like the core's biggest is still decided."""
    from hsm.approvals import Approval, WithdrawalApproval

    signer = start_signer(tmp_path)
    log = signer.config_path.parent / "audit.log"
    stub, md = signer.client.stub, signer.client.metadata
    try:
        key = signer_pb2.KeyPath(key_id="hot", path="m/84h/1h/1h/0/0")
        oversized = [
            ("reference is 129 characters long; at most 128", dict(reference="x" * 129)),
            ("reference is 3900000 characters", dict(reference="x" * 3_900_000)),
            ("keys[1].path is 603 characters long; at most 64",
             dict(keys=[key, signer_pb2.KeyPath(key_id="hot", path="m/" + "0/" * 300 + "0")])),
            ("keys[0].key_id", dict(keys=[signer_pb2.KeyPath(key_id="k" * 65)])),
            ("keys has 2001 entries; at most 2000", dict(keys=[key] * 2001)),
            ("approvals[0].approver", dict(approvals=[signer_pb2.Approval(approver="a" * 65)])),
            ("withdrawals[0].withdrawal_id", dict(withdrawals=[signer_pb2.ApprovedWithdrawal(withdrawal_id="w" * 65)])),
            ("withdrawals[0].approvals has 101 entries; at most 100", dict(withdrawals=[signer_pb2.ApprovedWithdrawal(
                withdrawal_id="w", approvals=[signer_pb2.Approval(approver="alice")] * 101)])),
        ]
        size = log.stat().st_size if log.exists() else 0
        for expected, fields in oversized:
            try:
                stub.Sign(signer_pb2.SignRequest(chain="bitcoin", payload=b"junk", **fields), metadata=md, timeout=30)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and expected in exc.details(), exc.details()
            else:
                raise AssertionError(f"{expected}: not refused")
        assert (log.stat().st_size if log.exists() else 0) == size

        # The core's largest: a 500-withdrawal batch (32-character ids, two approvals each) with its inputs.
        batch = [WithdrawalApproval("%032x" % i, i, "BTC", "bcrt1q" + "q" * 58, 10**8, 1_000,
                                    (Approval("alice", bytes(64)), Approval("bob", bytes(64)))) for i in range(500)]
        keys = [("hot", f"m/84h/1h/1h/{i % 2}/{i}") for i in range(1_000)]
        result = signer.client.sign("bitcoin", b"junk", keys, [Approval("alice", bytes(64))],
                                    reference="%032x:bump:1000" % 7, withdrawals=batch)
        assert (result.signed, result.refused_rule) == (False, "decode")
        assert log.stat().st_size > size
    finally:
        signer.stop()
