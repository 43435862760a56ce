"""MatchingService through a real gRPC server: statuses, scopes, replies and the resumable market-data stream."""
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import update

from custody.db import schema as t
from custody.v1 import matching_pb2 as pb
from tests.support.matching import ETH, MARKET, accounts, balances, open_holds, order_count, place
from tests.support.servers import bearer

BTC = 10**8


def request(account, **change):
    fields = dict(idempotency_key="k-1", account_id=str(account), market=MARKET, side=pb.SIDE_BUY,
                  type=pb.ORDER_TYPE_LIMIT, price="100000", quantity=str(ETH), time_in_force=pb.TIME_IN_FORCE_GTC)
    fields.update(change)
    return pb.PlaceOrderRequest(**fields)


@pytest.mark.parametrize("change, code, detail", [
    ({"market": "DOGE/BTC"}, grpc.StatusCode.INVALID_ARGUMENT, "unknown market"),
    ({"price": "100005"}, grpc.StatusCode.INVALID_ARGUMENT, "not a multiple of the tick 10"),
    ({"quantity": str(ETH + 1)}, grpc.StatusCode.INVALID_ARGUMENT, "not a multiple of the step"),
    ({"quantity": str(10**15)}, grpc.StatusCode.INVALID_ARGUMENT, "below the minimum"),
    ({"price": "0"}, grpc.StatusCode.INVALID_ARGUMENT, "price must be greater than zero"),
    ({"price": "1.5"}, grpc.StatusCode.INVALID_ARGUMENT, "fraction"),
    ({"quantity": "-1"}, grpc.StatusCode.INVALID_ARGUMENT, "negative"),
    ({"side": pb.SIDE_UNSPECIFIED}, grpc.StatusCode.INVALID_ARGUMENT, "side"),
    ({"type": pb.ORDER_TYPE_UNSPECIFIED}, grpc.StatusCode.INVALID_ARGUMENT, "type"),
    ({"type": pb.ORDER_TYPE_MARKET, "time_in_force": pb.TIME_IN_FORCE_GTC}, grpc.StatusCode.INVALID_ARGUMENT,
     "market order cannot rest"),
    ({"post_only": True, "time_in_force": pb.TIME_IN_FORCE_IOC}, grpc.StatusCode.INVALID_ARGUMENT, "post_only"),
    ({"idempotency_key": ""}, grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key"),
    ({"account_id": "abc"}, grpc.StatusCode.INVALID_ARGUMENT, "account_id"),
    ({"account_id": "999999"}, grpc.StatusCode.NOT_FOUND, "does not exist"),
    ({"quantity": str(1000 * ETH)}, grpc.StatusCode.FAILED_PRECONDITION, "insufficient BTC"),
    ({"side": pb.SIDE_SELL, "quantity": str(20 * ETH)}, grpc.StatusCode.FAILED_PRECONDITION, "insufficient ETH"),
])
def test_bad_orders_are_refused_with_a_precise_status_and_nothing_held(app, clients, change, code, detail):
    (a,) = accounts(app, 1, btc=BTC, eth=10 * ETH)
    with pytest.raises(grpc.RpcError) as err:
        clients.matching.PlaceOrder(request(a, **change), metadata=bearer("exchange"))
    assert err.value.code() == code
    assert detail in err.value.details()
    assert balances(app, a) == {"BTC": (BTC, 0), "ETH": (10 * ETH, 0), "USDT": (0, 0)}
    assert (open_holds(app), order_count(app)) == (0, 0)
    # The key was not used up: the same key places a good order afterwards.
    assert clients.matching.PlaceOrder(request(a), metadata=bearer("exchange")).order.status == pb.ORDER_STATUS_OPEN


def test_a_frozen_account_cannot_place(app, clients):
    (a,) = accounts(app, 1, btc=BTC)
    with app.engine.begin() as conn:
        conn.execute(update(t.accounts).where(t.accounts.c.id == a).values(frozen=True))
    with pytest.raises(grpc.RpcError) as err:
        clients.matching.PlaceOrder(request(a), metadata=bearer("exchange"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "frozen" in err.value.details()
    assert (open_holds(app), order_count(app)) == (0, 0)


def test_post_only_that_would_match(app, clients):
    seller, buyer = accounts(app, 2, btc=BTC, eth=10 * ETH)
    place(app, seller, "SELL", 100_000, ETH)
    with pytest.raises(grpc.RpcError) as err:
        clients.matching.PlaceOrder(request(buyer, post_only=True), metadata=bearer("exchange"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "post-only" in err.value.details()
    assert balances(app, buyer)["BTC"] == (BTC, 0)


def test_scopes(clients):
    for who, code in (("reviewer", grpc.StatusCode.PERMISSION_DENIED), ("nobody", grpc.StatusCode.PERMISSION_DENIED)):
        with pytest.raises(grpc.RpcError) as err:
            clients.matching.ListMarkets(pb.ListMarketsRequest(), metadata=bearer(who))
        assert err.value.code() == code
    with pytest.raises(grpc.RpcError) as err:
        clients.matching.GetOrderBook(pb.GetOrderBookRequest(market=MARKET))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_markets_health_and_reflection(clients):
    (market,) = clients.matching.ListMarkets(pb.ListMarketsRequest(), metadata=bearer("exchange")).markets
    assert (market.market, market.base, market.quote, market.price_unit, market.price_tick, market.quantity_step,
            market.min_quantity, market.maker_fee_ppm, market.taker_fee_ppm) == (
        "ETH/BTC", "ETH", "BTC", str(ETH), "10", str(10**15), str(10**16), 1000, 2000)
    health = health_pb2_grpc.HealthStub(clients.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="custody.v1.MatchingService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(clients.channel)
    listed = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                         metadata=bearer("exchange")))
    assert "custody.v1.MatchingService" in {s.name for s in listed.list_services_response.service}


def test_place_get_cancel_and_list_trades(app, clients):
    seller, buyer = accounts(app, 2, btc=BTC, eth=10 * ETH)
    md = bearer("exchange")
    ask = clients.matching.PlaceOrder(request(seller, side=pb.SIDE_SELL, quantity=str(2 * ETH)), metadata=md)
    bid = clients.matching.PlaceOrder(request(buyer, idempotency_key="k-2"), metadata=md)
    assert ask.order.status == pb.ORDER_STATUS_OPEN and ask.order.held == str(2 * ETH)
    assert bid.order.status == pb.ORDER_STATUS_FILLED and bid.order.fee == "200" and bid.order.quote_filled == "100000"
    (trade,) = bid.trades
    assert (trade.price, trade.quantity, trade.taker_side, trade.buyer_account_id, trade.buyer_paid, trade.buyer_fee,
            trade.seller_gross, trade.seller_fee, trade.rounding) == (
        "100000", str(ETH), pb.SIDE_BUY, str(buyer), "100000", "200", "100000", "100", "0")
    replay = clients.matching.PlaceOrder(request(buyer, idempotency_key="k-2"), metadata=md)
    assert replay.replayed and replay.order.order_id == bid.order.order_id and list(replay.trades) == list(bid.trades)

    got = clients.matching.GetOrder(pb.GetOrderRequest(order_id=ask.order.order_id), metadata=md).order
    assert (got.status, got.filled_quantity, got.held) == (pb.ORDER_STATUS_PARTIALLY_FILLED, str(ETH), str(ETH))
    cancel = pb.CancelOrderRequest(order_id=ask.order.order_id, idempotency_key="c-1")
    first = clients.matching.CancelOrder(cancel, metadata=md)
    cancelled = first.order
    assert (cancelled.status, cancelled.held, cancelled.reason) == (pb.ORDER_STATUS_CANCELLED, "0", "cancelled")
    again = clients.matching.CancelOrder(cancel, metadata=md)
    assert again.replayed and not first.replayed and again.order == cancelled
    assert balances(app, seller)["ETH"] == (9 * ETH, 0)

    listed = clients.matching.ListTrades(pb.ListTradesRequest(market=MARKET), metadata=md).trades
    assert list(listed) == [trade]
    assert not clients.matching.ListTrades(pb.ListTradesRequest(market=MARKET, after_trade_id=trade.trade_id),
                                           metadata=md).trades
    for method, req, code in (
        (clients.matching.GetOrder, pb.GetOrderRequest(order_id="f" * 32), grpc.StatusCode.NOT_FOUND),
        (clients.matching.GetOrder, pb.GetOrderRequest(order_id="nope"), grpc.StatusCode.INVALID_ARGUMENT),
        (clients.matching.CancelOrder, pb.CancelOrderRequest(order_id=bid.order.order_id, idempotency_key="c-2"),
         grpc.StatusCode.FAILED_PRECONDITION),
        (clients.matching.CancelOrder, pb.CancelOrderRequest(order_id=bid.order.order_id, idempotency_key="c-1"),
         grpc.StatusCode.ALREADY_EXISTS),
        (clients.matching.CancelOrder, pb.CancelOrderRequest(order_id=bid.order.order_id),
         grpc.StatusCode.INVALID_ARGUMENT),
        (clients.matching.GetOrderBook, pb.GetOrderBookRequest(market=MARKET, depth=5000),
         grpc.StatusCode.INVALID_ARGUMENT),
        (clients.matching.ListTrades, pb.ListTradesRequest(market="X/Y"), grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as err:
            method(req, metadata=md)
        assert err.value.code() == code


def read(clients, after, want, market=MARKET, digest=""):
    call = clients.matching.StreamMarketData(
        pb.StreamMarketDataRequest(market=market, after_cursor=after, after_digest=digest),
        metadata=bearer("exchange"), timeout=30)
    got = []
    for item in call:
        got.append(item)
        if len(got) == want:
            break
    call.cancel()
    return got


def trade_some(app, makers, takers, n, prefix):
    for k in range(n):
        place(app, makers[k % len(makers)], "SELL", 100_000 + 10 * (k % 3), ETH // 10, key=f"{prefix}-s{k}")
        if k % 2:
            place(app, takers[k % len(takers)], "BUY", 100_020, ETH // 10, key=f"{prefix}-b{k}")


def test_market_data_stream_resumes_without_gaps_or_repeats(app, clients):
    makers = accounts(app, 3, eth=10 * ETH, prefix="maker")
    takers = accounts(app, 3, btc=BTC, prefix="taker")
    trade_some(app, makers, takers, 20, "before")
    journal_before = app.matching.market_data_after(MARKET, 0, 10_000)
    first = read(clients, 0, 15)  # disconnect mid-stream
    writer = threading.Thread(target=trade_some, args=(app, makers, takers, 30, "while-away"))
    writer.start()
    writer.join()
    journal = app.matching.market_data_after(MARKET, 0, 10_000)
    assert len(journal) > len(journal_before) > 15
    second = read(clients, first[-1].cursor, len(journal) - 15)
    received = first + second
    assert [m.cursor for m in received] == [m.cursor for m in journal]
    assert len({m.cursor for m in received}) == len(received)
    assert {m.WhichOneof("update") for m in received} == {"trade", "book"}
    trades = [m.trade for m in received if m.WhichOneof("update") == "trade"]
    listed = clients.matching.ListTrades(pb.ListTradesRequest(market=MARKET, limit=1000), metadata=bearer("exchange"))
    assert [tr.trade_id for tr in trades] == [tr.trade_id for tr in listed.trades]
    assert not trades[0].buyer_account_id  # public market data carries no accounts


def test_a_market_data_cursor_beyond_the_journal_is_refused(app, clients):
    makers = accounts(app, 1, eth=10 * ETH, prefix="maker")
    place(app, makers[0], "SELL", 100_000, ETH // 10, key="s")
    head = app.matching.last_market_data_cursor()
    assert head > 0
    with pytest.raises(grpc.RpcError) as err:
        read(clients, head + 1, 1)
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert f"beyond the last market data cursor, {head}" in err.value.details()
    place(app, makers[0], "SELL", 100_010, ETH // 10, key="s2")
    assert read(clients, head, 1)[0].cursor == head + 1


def test_a_market_data_resume_is_checked_against_the_items_digest(app, clients):
    """The digest names the item at the cursor: the right one resumes; another item's (as from a
    restored or another database, where the cursor holds something else) is refused."""
    makers = accounts(app, 1, eth=10 * ETH, prefix="maker")
    for k in range(4):
        place(app, makers[0], "SELL", 100_000 + 10 * k, ETH // 10, key=f"s{k}")
    items = read(clients, 0, 4)
    assert [m.digest for m in read(clients, 0, 4)] == [m.digest for m in items]  # stable across reads
    assert len({m.digest for m in items}) == 4
    rest = read(clients, items[1].cursor, 2, digest=items[1].digest)
    assert [m.cursor for m in rest] == [m.cursor for m in items[2:]]
    with pytest.raises(grpc.RpcError) as err:
        read(clients, items[1].cursor, 1, digest=items[2].digest)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"market data item at cursor {items[1].cursor} is not the one you saw" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        read(clients, items[1].cursor, 1, digest="not a digest")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_book_snapshot_plus_the_updates_after_its_cursor_is_the_book(app, clients):
    makers = accounts(app, 3, eth=10 * ETH, prefix="maker")
    takers = accounts(app, 3, btc=BTC, prefix="taker")
    trade_some(app, makers, takers, 10, "one")
    md = bearer("exchange")
    snapshot = clients.matching.GetOrderBook(pb.GetOrderBookRequest(market=MARKET, depth=100), metadata=md)
    trade_some(app, makers, takers, 15, "two")
    levels = {("bid", lv.price): lv.quantity for lv in snapshot.bids}
    levels.update({("ask", lv.price): lv.quantity for lv in snapshot.asks})
    final = clients.matching.GetOrderBook(pb.GetOrderBookRequest(market=MARKET, depth=100), metadata=md)
    updates = read(clients, snapshot.cursor, final.cursor - snapshot.cursor)
    for item in updates:
        if item.WhichOneof("update") == "book":
            levels.update({("bid", lv.price): lv.quantity for lv in item.book.bids})
            levels.update({("ask", lv.price): lv.quantity for lv in item.book.asks})
    rebuilt = {k: v for k, v in levels.items() if v != "0"}
    expected = {("bid", lv.price): lv.quantity for lv in final.bids}
    expected.update({("ask", lv.price): lv.quantity for lv in final.asks})
    assert rebuilt == expected and expected
    assert updates[-1].cursor == final.cursor
