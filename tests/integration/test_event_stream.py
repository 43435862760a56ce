"""StreamEvents: resumable by cursor, nothing missed, nothing twice."""
import threading

import grpc

from custody.v1 import custody_pb2 as pb
from tests.support.servers import bearer


def setup_accounts(app, n=5):
    ids = [app.create_account(f"user-{i}").account_id for i in range(n)]
    for i in ids:
        app.adjust_balance("admin", f"fund-{i}", str(i), "BTC", "1000000", True, "test funding")
    return ids


def transfers(app, ids, count, prefix):
    for k in range(count):
        a, b = ids[k % len(ids)], ids[(k + 1) % len(ids)]
        app.transfer("exchange", f"{prefix}-{k}", str(a), str(b), "BTC", str(k + 1), "")


def read(clients, after, want):
    """Reads `want` events starting after `after`, then disconnects."""
    call = clients.custody.StreamEvents(pb.StreamEventsRequest(after_cursor=after), metadata=bearer("exchange"),
                                        timeout=30)
    got = []
    for event in call:
        got.append(event)
        if len(got) == want:
            break
    call.cancel()
    return got


def test_reconnect_with_the_cursor_misses_nothing_and_repeats_nothing(app, clients):
    ids = setup_accounts(app)
    transfers(app, ids, 40, "before")
    first = read(clients, 0, 20)  # disconnect mid-stream
    writer = threading.Thread(target=transfers, args=(app, ids, 60, "while-away"))
    writer.start()  # the journal grows while the client is away and after it is back
    second = read(clients, first[-1].cursor, 5 + 40 + 60 - 20)
    writer.join()
    received = first + second
    journal = app.events_after(0, limit=10_000)
    assert [e.cursor for e in received] == [e.cursor for e in journal] == list(range(1, len(journal) + 1))
    assert [(e.type, e.payload) for e in received] == [(e.type, e.payload) for e in journal]


def test_a_live_stream_follows_new_events(app, clients):
    ids = setup_accounts(app, 2)
    call = clients.custody.StreamEvents(pb.StreamEventsRequest(after_cursor=2), metadata=bearer("exchange"), timeout=30)
    threading.Timer(0.3, transfers, args=(app, ids, 3, "live")).start()
    got = [next(call) for _ in range(3)]
    call.cancel()
    assert [e.cursor for e in got] == [3, 4, 5]
    assert all(e.type == "ledger.transfer" for e in got)


def test_stream_needs_a_token(clients):
    call = clients.custody.StreamEvents(pb.StreamEventsRequest(after_cursor=0), timeout=5)
    try:
        next(call)
        raise AssertionError("stream without a token was served")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_cursor_beyond_the_journal_is_refused_not_waited_on(app, clients):
    """A cursor from another database or from before a restore: waiting on it would skip every
    event that commits below it. The head itself is fine (a reader that has seen everything)."""
    ids = setup_accounts(app, 2)
    head = app.last_event_cursor()
    assert head == 2
    call = clients.custody.StreamEvents(pb.StreamEventsRequest(after_cursor=head + 1), metadata=bearer("exchange"),
                                        timeout=10)
    try:
        next(call)
        raise AssertionError("a cursor beyond the head was served")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "beyond the last event cursor, 2" in err.details()
    at_head = clients.custody.StreamEvents(pb.StreamEventsRequest(after_cursor=head), metadata=bearer("exchange"),
                                           timeout=30)
    transfers(app, ids, 1, "after")
    assert next(at_head).cursor == head + 1
    at_head.cancel()
