"""Every RPC, every string field set to text the database cannot take or does not expect, and
every number at its extreme: the reply is a precise status, never INTERNAL, and nothing changes."""
import grpc
import pytest
from google.protobuf import descriptor

from custody.api.auth import REQUIRED_SCOPE
from custody.app import Custody
from custody.v1 import backoffice_pb2, custody_pb2, matching_pb2
from tests.support.servers import SCOPES, Clients, ServerThread, bearer
from tests.support.withdrawals import withdrawal_config

HOSTILE = ["x\x00y", "\x1b[2J", "9" * 100, "ü" * 5000, " ", "-1", "../../etc/passwd", "'; DROP TABLE accounts; --"]
# RESOURCE_EXHAUSTED here would be error details echoing the input past gRPC's metadata limit.
UNEXPECTED = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED)
CLIENT_FOR = {scope: next(c for c, scopes in SCOPES.items() if scope in scopes) for scope in set(REQUIRED_SCOPE.values())}


def methods():
    for module in (custody_pb2, backoffice_pb2, matching_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield f"/{service.full_name}/{method.name}", method


_LARGEST = {descriptor.FieldDescriptor.TYPE_UINT64: 2**64 - 1, descriptor.FieldDescriptor.TYPE_UINT32: 2**32 - 1,
            descriptor.FieldDescriptor.TYPE_INT64: -(2**63), descriptor.FieldDescriptor.TYPE_INT32: -(2**31),
            descriptor.FieldDescriptor.TYPE_ENUM: 99}


# Plausible strings, so that the extreme numbers get past the first checks.
PLAUSIBLE = {"market": "ETH/BTC", "asset": "BTC", "chain": "bitcoin", "amount": "1000", "price": "100000",
             "quantity": str(10**16), "idempotency_key": "hostile-1", "reason": "a plausible reason",
             "external_id": "hostile-user", "to_address": "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"}


def request_with(method, text, account_id="1"):
    """Every string field set to text; or, when text is None, every number to its extreme, every
    enum to a value it does not define, and the strings to plausible values."""
    cls = getattr(_module_of(method.input_type), method.input_type.name)
    fields = {}
    for f in method.input_type.fields:
        if f.is_repeated:
            continue
        if text is not None and f.type == descriptor.FieldDescriptor.TYPE_STRING:
            fields[f.name] = text
        elif text is None and f.type in _LARGEST:
            fields[f.name] = _LARGEST[f.type]
        elif text is None and f.type == descriptor.FieldDescriptor.TYPE_STRING:
            fields[f.name] = account_id if f.name.endswith("account_id") else PLAUSIBLE.get(f.name, "")
    return cls(**fields)


def _module_of(message_type):
    return {m.DESCRIPTOR.name: m for m in (custody_pb2, backoffice_pb2, matching_pb2)}[message_type.file.name]


def test_hostile_strings_in_every_field_of_every_rpc(app, clients):
    check_every_rpc(app, clients)


def test_hostile_strings_with_a_chain_and_withdrawals_configured(db_url):
    """The same with the Bitcoin chain configured (addresses, withdrawal rules): other code runs."""
    app = Custody(withdrawal_config(db_url))
    server = ServerThread(app.config, app)
    clients = Clients(server.address)
    try:
        check_every_rpc(app, clients)
    finally:
        clients.close()
        server.stop()
        app.close()


def check_every_rpc(app, clients):
    account = str(app.create_account("hostile-owner").account_id)
    failures = []
    for path, method in methods():
        for text in (*HOSTILE, None):
            request = request_with(method, text, account)
            if not request.ListFields():
                continue  # no field of that kind to fill
            metadata = bearer(CLIENT_FOR[REQUIRED_SCOPE[path]])
            stub = clients.channel.unary_stream if method.server_streaming else clients.channel.unary_unary
            call = stub(path, request_serializer=type(request).SerializeToString, response_deserializer=bytes)
            try:
                reply = call(request, metadata=metadata, timeout=5)
                if method.server_streaming:
                    next(iter(reply), None)
            except grpc.RpcError as exc:
                if exc.code() in UNEXPECTED:
                    what = f"{text[:12]!r}" if text is not None else "extreme numbers"
                    failures.append(f"{path} with {what}: {exc.code().name} {exc.details()}")
    assert not failures, "\n".join(failures)
    assert app.events_after(0, limit=10) == [], "hostile input changed something"


def test_a_body_that_is_not_a_message_is_refused_after_the_caller_is_checked(clients):
    """gRPC parsed the body before the interceptor ran: a malformed one (a client's own encoder,
    or anyone reaching the port) was UNKNOWN with the decoder's words, whatever the token (found
    by the gRPC review). Now the caller is checked first, then the body: INVALID_ARGUMENT."""
    truncated, bad_utf8 = b"\x0a\x05ab", b"\x0a\x02\xff\xfe"  # field 1: 5 bytes promised, 2 sent; not UTF-8

    def outcome(name, streaming, body, metadata):
        call = (clients.channel.unary_stream if streaming else clients.channel.unary_unary)(
            name, request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
        try:
            for _ in (call(body, metadata=metadata, timeout=10) if streaming else [call(body, metadata=metadata,
                                                                                        timeout=10)]):
                pass
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return grpc.StatusCode.OK, ""

    refused = (grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid message of this method")
    for name, method in methods():
        streaming, caller = method.server_streaming, bearer(CLIENT_FOR[REQUIRED_SCOPE[name]])
        assert outcome(name, streaming, truncated, None)[0] == grpc.StatusCode.UNAUTHENTICATED, name
        assert outcome(name, streaming, truncated, bearer("nobody"))[0] == grpc.StatusCode.PERMISSION_DENIED, name
        assert outcome(name, streaming, truncated, caller) == refused, name
    assert outcome("/custody.v1.CustodyService/CreateAccount", False, bad_utf8, bearer("exchange")) == refused


def test_cursors_and_ids_beyond_64_bit_signed_are_invalid_arguments(clients):
    """Proto cursors are uint64; rows never pass 2^63-1, and neither database takes a larger integer."""
    huge, md = 2**64 - 1, bearer("exchange")
    calls = [
        lambda: next(iter(clients.custody.StreamEvents(custody_pb2.StreamEventsRequest(after_cursor=huge),
                                                       metadata=md, timeout=5))),
        lambda: clients.matching.ListTrades(matching_pb2.ListTradesRequest(market="ETH/BTC", after_trade_id=huge),
                                            metadata=md, timeout=5),
        lambda: next(iter(clients.matching.StreamMarketData(
            matching_pb2.StreamMarketDataRequest(market="ETH/BTC", after_cursor=huge), metadata=md, timeout=5))),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "2^63-1" in refused.value.details()
    assert clients.matching.ListTrades(matching_pb2.ListTradesRequest(
        market="ETH/BTC", after_trade_id=2**63 - 1), metadata=md, timeout=5).trades == []
