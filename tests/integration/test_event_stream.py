"""StreamEvents: resumable by cursor, nothing missed, nothing twice."""
import contextlib
import re
import threading

import grpc
import pytest

from custody.app import Custody
from custody.v1 import custody_pb2 as pb
from tests.conftest import assert_invariants
from tests.support import databases
from tests.support.config import make_config
from tests.support.servers import Clients, ServerThread, bearer


def setup_accounts(app, n=5):
    ids = [app.create_account(f"user-{i}").account_id for i in range(n)]
    for i in ids:
        app.adjust_balance("admin", f"fund-{i}", str(i), "BTC", "1000000", True, "test funding")
    return ids


def transfers(app, ids, count, prefix):
    for k in range(count):
        a, b = ids[k % len(ids)], ids[(k + 1) % len(ids)]
        app.transfer("exchange", f"{prefix}-{k}", str(a), str(b), "BTC", str(k + 1), "")


def read(clients, after, want, digest=""):
    """Reads `want` events starting after `after`, then disconnects."""
    call = clients.custody.StreamEvents(pb.StreamEventsRequest(after_cursor=after, after_digest=digest),
                                        metadata=bearer("exchange"), timeout=30)
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


def refused(clients, after, digest) -> grpc.RpcError:
    call = clients.custody.StreamEvents(pb.StreamEventsRequest(after_cursor=after, after_digest=digest),
                                        metadata=bearer("exchange"), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        next(call)
    return err.value


@contextlib.contextmanager
def serving(url):
    app = Custody(make_config(url))
    server = ServerThread(app.config, app)
    clients = Clients(server.address)
    try:
        yield app, clients
    finally:
        clients.close()
        server.stop()
        app.close()


def test_a_resume_with_the_events_digest_continues_where_it_left(app, clients):
    ids = setup_accounts(app, 3)
    transfers(app, ids, 4, "t")
    first = read(clients, 0, 7)
    assert all(re.fullmatch(r"[0-9a-f]{32}", e.digest) for e in first)
    assert len({e.digest for e in first}) == 7
    again = read(clients, 0, 7)  # the same on every read of the database
    assert [e.digest for e in again] == [e.digest for e in first]
    rest = read(clients, first[2].cursor, 4, digest=first[2].digest)
    assert [(e.cursor, e.digest) for e in rest] == [(e.cursor, e.digest) for e in first[3:]]


def test_a_resume_against_a_restored_database_that_grew_past_the_cursor_is_refused(db_url, tmp_path):
    """The database is restored from a backup taken at cursor 2, after the client saw cursor 5;
    it then commits other events under cursors 3 to 6. By cursor alone the resume looks fine and
    cursors 3 to 5 of the restored journal would never reach the client."""
    with serving(db_url) as (app, clients):
        ids = setup_accounts(app, 2)
    restored = databases.back_up(db_url, tmp_path / "backup")  # nobody connected: PostgreSQL copies by template
    try:
        with serving(db_url) as (app, clients):
            transfers(app, ids, 3, "before-the-restore")
            seen = read(clients, 0, 5)
        with serving(restored) as (app, clients):
            transfers(app, ids, 4, "after-the-restore")
            assert app.last_event_cursor() == 6
            err = refused(clients, seen[-1].cursor, seen[-1].digest)
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "event at cursor 5 is not the one you saw" in err.details()
            # Without the digest the gap goes unnoticed: served from cursor 6.
            assert read(clients, seen[-1].cursor, 1)[0].cursor == 6
            # Before the restore point the events are the same ones: accepted.
            assert [e.cursor for e in read(clients, seen[1].cursor, 4, digest=seen[1].digest)] == [3, 4, 5, 6]
        assert_invariants(restored)
    finally:
        databases.drop_database(restored)


def test_a_resume_against_another_database_is_refused(db_url, tmp_path, app, clients):
    ids = setup_accounts(app, 2)
    transfers(app, ids, 2, "here")
    mine = read(clients, 0, 4)
    (tmp_path / "other").mkdir()
    other = databases.new_database(databases.kind_of(db_url), tmp_path / "other")
    try:
        with serving(other) as (other_app, other_clients):
            transfers(other_app, setup_accounts(other_app, 2), 3, "there")
            err = refused(other_clients, mine[-1].cursor, mine[-1].digest)
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert_invariants(other)
    finally:
        databases.drop_database(other)


@pytest.mark.parametrize("after, digest, message", [
    (3, "A" * 32, "32 lowercase hex digits"),
    (3, "0" * 31, "32 lowercase hex digits"),
    (3, "0" * 10_000, "32 lowercase hex digits"),
    (0, "0" * 32, "with after_cursor 0 leave it empty"),
])
def test_a_malformed_digest_is_invalid(app, clients, after, digest, message):
    setup_accounts(app, 2)
    transfers(app, [1, 2], 1, "t")
    err = refused(clients, after, digest)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.details()


def test_an_instance_whose_database_session_is_in_another_time_zone_gives_the_same_events(pg_url):
    """PostgreSQL hands back times in the session's zone: an instance set to another one sent
    created_at as "+09:00" (the API says UTC) and other digests, so a resume moving between
    instances was refused as if the database had been restored."""
    tokyo_url = pg_url + ("&" if "?" in pg_url else "?") + "options=-c%20TimeZone%3DAsia/Tokyo"
    with serving(pg_url) as (app, clients):
        setup_accounts(app, 2)
        seen = read(clients, 0, 2)
    with serving(tokyo_url) as (app, clients):
        again = read(clients, 0, 2)
        assert [(e.created_at, e.digest) for e in again] == [(e.created_at, e.digest) for e in seen]
        assert all(e.created_at.endswith("Z") for e in again)
        transfers(app, [1, 2], 1, "t")
        assert [e.cursor for e in read(clients, seen[-1].cursor, 1, digest=seen[-1].digest)] == [3]
