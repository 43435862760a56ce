"""A call whose client stops waiting (deadline, cancel) while its command is queued: the command
is still applied, the writer goes on answering everyone else, and a retry with the key replays.

Before the fix, setting the result of the cancelled future raised in the writer's thread (thread
writer), in its answer thread (process writer) or in the matching thread, and every later call
waited for ever."""
from __future__ import annotations

import contextlib

import grpc
import pytest
from sqlalchemy import update

from custody.app import Custody
from custody.db import schema as t
from custody.db.engine import write_transaction
from custody.v1 import backoffice_pb2 as bo
from custody.v1 import custody_pb2 as pb
from custody.v1 import matching_pb2 as mpb
from tests.support.config import make_config
from tests.support.servers import Clients, ServerThread

ADMIN = Clients.md("alice-admin")


@pytest.fixture(params=["thread", "process"])
def served(request, db_url):
    app = Custody(make_config(db_url, ledger_writer=request.param))
    server = ServerThread(app.config, app)
    clients = Clients(server.address)
    yield app, clients
    clients.close()
    server.stop()
    app.close()


@contextlib.contextmanager
def writes_stalled(engine):
    """Holds the event sequence's row (PostgreSQL) or the write lock (SQLite): every commit that
    emits an event waits until the block ends."""
    with write_transaction(engine) as conn:
        conn.execute(update(t.event_sequence).values(last_cursor=t.event_sequence.c.last_cursor))
        yield


def adjust(clients, account: str, key: str, timeout: float):
    return clients.backoffice.AdjustBalance(bo.AdjustBalanceRequest(
        idempotency_key=key, account_id=account, asset="BTC", amount="1000",
        direction=bo.ADJUSTMENT_DIRECTION_CREDIT, reason="test credit"), metadata=ADMIN, timeout=timeout)


def btc(app, account: str) -> int:
    _, balances = app.get_balances(account)
    return next(b.available for b in balances if b.asset == "BTC")


def test_an_adjustment_past_its_deadline_does_not_stop_the_ledger_writer(served):
    app, clients = served
    a, b = (str(app.create_account(name).account_id) for name in ("ann", "ben"))
    adjust(clients, a, "fund", 30)
    with writes_stalled(app.engine):
        with pytest.raises(grpc.RpcError) as late:
            adjust(clients, a, "late", 2)  # what the call waits for is stalled: its deadline passes
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    clients.custody.Transfer(pb.TransferRequest(idempotency_key="t", from_account_id=a, to_account_id=b,
                                                asset="BTC", amount="300"), metadata=Clients.md(), timeout=30)
    first = adjust(clients, a, "fund-2", 30)
    assert btc(app, a) == 1000 + 1000 + 1000 - 300, "the late adjustment was applied, once"
    retried = adjust(clients, a, "late", 30)
    assert retried.adjustment_id and retried.adjustment_id != first.adjustment_id
    assert btc(app, a) == 2700, "the retry replayed"


def test_an_order_past_its_deadline_does_not_stop_the_matching_thread(served):
    app, clients = served
    a = str(app.create_account("ann").account_id)
    app.adjust_balance("alice-admin", "fund", a, "BTC", "100000000", True, "test funding")

    def place(key: str, timeout: float):
        return clients.matching.PlaceOrder(mpb.PlaceOrderRequest(
            idempotency_key=key, account_id=a, market="ETH/BTC", side=mpb.SIDE_BUY, type=mpb.ORDER_TYPE_LIMIT,
            price="1000", quantity=str(10**16)), metadata=Clients.md(), timeout=timeout)

    with writes_stalled(app.engine):
        with pytest.raises(grpc.RpcError) as late:
            place("late", 2)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    second = place("next", 30)
    retried = place("late", 30)
    assert retried.replayed and retried.order.order_id != second.order.order_id
