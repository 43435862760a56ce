"""Streams through a real server: health Watch works, reflection needs a token, and no client
(nor the callers without a token, together) can hold more than max_streams_per_client streams.

Before: reflection was open and every stream shared the server's max_concurrent_rpcs slots, so
anyone who could reach the port could hold them all and every real call got RESOURCE_EXHAUSTED;
and health Watch failed with INTERNAL, so gRPC client-side health checking marked the server down."""
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from custody.config import ConfigError
from custody.v1 import backoffice_pb2 as bo
from custody.v1 import custody_pb2 as pb
from tests.support.config import make_config
from tests.support.servers import Clients, ServerThread, bearer

CAP = 3


@pytest.fixture
def capped(db_url):
    from custody.app import Custody

    app = Custody(make_config(db_url, max_streams_per_client=CAP))
    thread = ServerThread(app.config, app)
    clients = Clients(thread.address)
    yield clients
    clients.close()
    thread.stop()
    app.close()


def first_of(call):
    return next(iter(call))


def list_services(clients, metadata=None):
    stub = reflection_pb2_grpc.ServerReflectionStub(clients.channel)
    reply = first_of(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                               metadata=metadata, timeout=10))
    return {s.name for s in reply.list_services_response.service}


def test_health_watch_reports_serving(capped):
    call = health_pb2_grpc.HealthStub(capped.channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert first_of(call).status == health_pb2.HealthCheckResponse.SERVING
    call.cancel()


def test_reflection_needs_a_valid_token_of_any_scope(capped):
    with pytest.raises(grpc.RpcError) as err:
        list_services(capped)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "custody.v1.CustodyService" in list_services(capped, bearer("nobody"))  # a client with no scope


def test_one_clients_streams_are_capped_and_others_still_get_theirs(capped):
    def events(client):
        return capped.custody.StreamEvents(pb.StreamEventsRequest(after_cursor=0), metadata=bearer(client),
                                           timeout=30)

    account = capped.custody.CreateAccount(pb.CreateAccountRequest(external_id="a"), metadata=bearer("exchange"))
    capped.backoffice.AdjustBalance(bo.AdjustBalanceRequest(
        idempotency_key="k", account_id=account.account_id, asset="BTC", amount="5",
        direction=bo.ADJUSTMENT_DIRECTION_CREDIT, reason="an event for the streams"), metadata=bearer("alice-admin"))
    open_calls = [events("exchange") for _ in range(CAP)]
    for call in open_calls:  # each is open on the server once it has sent the event
        next(call)
    extra = events("exchange")
    with pytest.raises(grpc.RpcError) as err:
        first_of(extra)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_streams_per_client" in err.value.details()

    other = events("wallet-service")  # another client is not affected
    next(other)
    assert capped.custody.ListAssets(pb.ListAssetsRequest(), metadata=bearer("exchange"), timeout=10).assets

    open_calls.pop().cancel()  # a closed stream gives its slot back, once the server has seen it go
    deadline = time.monotonic() + 10
    while True:
        again = events("exchange")
        try:
            next(again)
            break
        except grpc.RpcError as refused:
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() < deadline, "the slot of a cancelled stream was not given back"
        time.sleep(0.1)
    for call in (*open_calls, other, again):
        call.cancel()

def test_callers_without_a_token_share_one_clients_slots(capped):
    health = health_pb2_grpc.HealthStub(capped.channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30) for _ in range(CAP)]
    for watch in watches:
        assert first_of(watch).status == health_pb2.HealthCheckResponse.SERVING
    extra = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        first_of(extra)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Authenticated calls and streams are untouched.
    assert capped.custody.ListAssets(pb.ListAssetsRequest(), metadata=bearer("exchange"), timeout=10).assets
    assert "custody.v1.CustodyService" in list_services(capped, bearer("exchange"))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    for watch in watches:
        watch.cancel()


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "10.1.2.3:50051", "[::]:50051"])
def test_a_listener_off_loopback_without_tls_is_refused_unless_allowed(listen):
    with pytest.raises(ConfigError, match="cleartext"):
        make_config("sqlite:///x.db", listen=listen)
    assert make_config("sqlite:///x.db", listen=listen, allow_plaintext=True).server.allow_plaintext
    for loopback in ("127.0.0.1:0", "localhost:50051", "[::1]:50051", "unix:/tmp/custody.sock"):
        assert make_config("sqlite:///x.db", listen=loopback).server.listen == loopback


def test_open_streams_share_one_reader_of_the_journal(app, clients, monkeypatch):
    """Each stream read the journal itself after every commit: 300 idle streams took the server's
    I/O threads and Transfer's p50 went from 3 to 45 ms. Now one reader serves them all."""
    import custody.app

    reads = []
    real = custody.app.read_after
    monkeypatch.setattr(custody.app, "read_after", lambda *args: reads.append(args) or real(*args))
    accounts = [app.create_account(f"s-{i}").account_id for i in range(2)]
    app.adjust_balance("admin", "fund", str(accounts[0]), "BTC", "1000", True, "streams")
    head = app.last_event_cursor()
    streams = [clients.custody.StreamEvents(pb.StreamEventsRequest(after_cursor=head), metadata=bearer("exchange"),
                                            timeout=60) for _ in range(40)]
    time.sleep(1)  # every stream open and waiting
    reads.clear()
    for k in range(10):
        app.transfer("exchange", f"t-{k}", str(accounts[0]), str(accounts[1]), "BTC", "1", "")
    for stream in streams:  # every stream gets the ten transfers' events, once, in order
        got = [next(stream).cursor for _ in range(10)]
        assert got == list(range(head + 1, head + 11))
        stream.cancel()
    # One reader: about one read per commit (and its polls), where 40 streams made 40 each.
    assert len(reads) <= 20, len(reads)
