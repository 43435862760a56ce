"""The database goes away under a running server: calls get UNAVAILABLE, then work again, nothing applied twice."""
import grpc
import pytest
from sqlalchemy.engine import make_url

from custody import errors
from custody.app import Custody
from custody.v1 import custody_pb2 as pb
from tests.support.config import make_config
from tests.support.databases import refuse_connections
from tests.support.servers import Clients, ServerThread, bearer


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_calls_get_unavailable_while_the_database_is_away_and_a_retry_applies_once(pg_url, writer):
    config = make_config(pg_url, ledger_writer=writer)
    app = Custody(config)
    server = ServerThread(config, app)
    clients = Clients(server.address)

    def transfer(key):
        return clients.custody.Transfer(pb.TransferRequest(
            idempotency_key=key, from_account_id=str(a), to_account_id=str(b), asset="BTC", amount="10"),
            metadata=bearer("exchange"), timeout=30)

    def balances():
        reply = clients.custody.GetBalances(pb.GetBalancesRequest(account_id=str(b)), metadata=bearer("exchange"),
                                            timeout=30)
        return {x.asset: x.available for x in reply.balances}

    try:
        a = app.create_account("alice").account_id
        b = app.create_account("bob").account_id
        app.adjust_balance("admin", "fund-a", str(a), "BTC", "100", True, "test funding")
        assert transfer("before").event_cursor == 2  # the writer now holds an open connection

        refuse_connections(pg_url)  # ends that connection and refuses new ones
        try:
            # The writer finds its connection gone, retries the commands one by one, cannot
            # connect for the first, and fails the rest with it rather than trying each.
            queued = [app.submit_transfer("exchange", f"queued-{i}", str(a), str(b), "BTC", "1") for i in range(20)]
            for future in queued:
                with pytest.raises(errors.Unavailable, match="the database is not answering"):
                    future.result(timeout=30)
            for call in (lambda: transfer("while-away"), balances):
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "the database is not answering" in refused.value.details()
                assert make_url(pg_url).database not in refused.value.details()  # the reason goes to the log only
        finally:
            refuse_connections(pg_url, refused=False)

        retried = transfer("while-away")  # the client retries with the same key
        assert retried.event_cursor == 3
        assert transfer("while-away").event_cursor == 3  # and again: a replay, not a second transfer
        assert balances()["BTC"] == "20"
        for i in range(20):  # each queued transfer retried with its key: applied once
            app.transfer("exchange", f"queued-{i}", str(a), str(b), "BTC", "1")
            app.transfer("exchange", f"queued-{i}", str(a), str(b), "BTC", "1")
        assert balances()["BTC"] == "40"
        assert [e.cursor for e in app.events_after(0, limit=100)] == list(range(1, 24))
    finally:
        clients.close()
        server.stop()
        app.close()
