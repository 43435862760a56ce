"""The server's limit on calls at once: past it a call is refused straight away and changes nothing."""
import time

import grpc
import pytest

from custody.v1 import custody_pb2 as pb
from tests.support.config import make_config
from tests.support.servers import bearer


@pytest.fixture
def config(db_url):
    return make_config(db_url, max_concurrent_rpcs=2)


def list_assets(clients):
    return clients.custody.ListAssets(pb.ListAssetsRequest(), metadata=bearer("exchange"), timeout=5)


def transfer(clients, key, source, target):
    return clients.custody.Transfer(pb.TransferRequest(
        idempotency_key=key, from_account_id=str(source), to_account_id=str(target), asset="BTC", amount="7"),
        metadata=bearer("exchange"), timeout=5)


def btc_available(app, account):
    return {x.asset: x.available for x in app.get_balances(str(account))[1]}["BTC"]


def test_calls_past_the_limit_get_resource_exhausted_and_change_nothing(app, clients):
    a = app.create_account("alice").account_id
    b = app.create_account("bob").account_id
    app.adjust_balance("admin", "fund-a", str(a), "BTC", "100", True, "test funding")
    streams = [clients.custody.StreamEvents(pb.StreamEventsRequest(after_cursor=0), metadata=bearer("exchange"),
                                            timeout=30) for _ in range(2)]
    for stream in streams:
        assert next(stream).cursor == 1  # both streams are running on the server: the limit is reached

    for call in (lambda: list_assets(clients), lambda: transfer(clients, "t-1", a, b)):
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(app.events_after(0, limit=100)) == 1
    assert btc_available(app, b) == 0

    streams[0].cancel()
    deadline = time.monotonic() + 10
    while True:  # the server frees the stream's slot once it sees the cancellation
        try:
            result = transfer(clients, "t-1", a, b)  # the refused call retried with its key
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            time.sleep(0.05)
    streams[1].cancel()
    assert result.event_cursor == 2
    assert [e.cursor for e in app.events_after(0, limit=100)] == [1, 2]
    assert btc_available(app, b) == 7
