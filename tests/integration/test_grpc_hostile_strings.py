"""Every RPC, every string field set to text the database cannot take or does not expect:
the reply is a precise status, never INTERNAL, and nothing changes."""
import grpc
from google.protobuf import descriptor

from custody.api.auth import REQUIRED_SCOPE
from custody.app import Custody
from custody.v1 import backoffice_pb2, custody_pb2, matching_pb2
from tests.support.servers import SCOPES, Clients, ServerThread, bearer
from tests.support.withdrawals import withdrawal_config

HOSTILE = ["x\x00y", "\x1b[2J", "9" * 100, "ü" * 5000, " ", "-1", "../../etc/passwd", "'; DROP TABLE accounts; --"]
CLIENT_FOR = {scope: next(c for c, scopes in SCOPES.items() if scope in scopes) for scope in set(REQUIRED_SCOPE.values())}


def methods():
    for module in (custody_pb2, backoffice_pb2, matching_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield f"/{service.full_name}/{method.name}", method


def request_with(method, text):
    cls = getattr(_module_of(method.input_type), method.input_type.name)
    fields = {f.name: text for f in method.input_type.fields
              if f.type == descriptor.FieldDescriptor.TYPE_STRING and not f.is_repeated}
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
    failures = []
    for path, method in methods():
        for text in HOSTILE:
            request = request_with(method, text)
            if not request.ListFields():
                break  # no string field to fill
            metadata = bearer(CLIENT_FOR[REQUIRED_SCOPE[path]])
            stub = clients.channel.unary_stream if method.server_streaming else clients.channel.unary_unary
            call = stub(path, request_serializer=type(request).SerializeToString, response_deserializer=bytes)
            try:
                reply = call(request, metadata=metadata, timeout=5)
                if method.server_streaming:
                    next(iter(reply), None)
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                    failures.append(f"{path} with {text[:12]!r}: {exc.code().name} {exc.details()}")
    assert not failures, "\n".join(failures)
    assert app.events_after(0, limit=10) == [], "hostile input changed something"
