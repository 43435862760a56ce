"""MatchingService over gRPC: translate messages, call matching_stub's service, build replies."""
from __future__ import annotations

import asyncio
import json

from custody.api.auth import current_client
from custody.app import Custody
from custody.errors import InvalidArgument
from custody.events.journal import checked_resume, utc_iso
from custody.events.tail import JournalTail
from custody.v1 import matching_pb2 as pb
from custody.v1 import matching_pb2_grpc

MARKET_DATA_PAGE = 500
# Items committed by another instance are seen within this many seconds.
MARKET_DATA_POLL_S = 1.0

SIDE = {pb.SIDE_BUY: "BUY", pb.SIDE_SELL: "SELL"}
SIDE_PB = {v: k for k, v in SIDE.items()}
TYPE = {pb.ORDER_TYPE_LIMIT: "LIMIT", pb.ORDER_TYPE_MARKET: "MARKET"}
TYPE_PB = {v: k for k, v in TYPE.items()}
TIF = {pb.TIME_IN_FORCE_UNSPECIFIED: "", pb.TIME_IN_FORCE_GTC: "GTC", pb.TIME_IN_FORCE_IOC: "IOC",
       pb.TIME_IN_FORCE_FOK: "FOK"}
TIF_PB = {v: k for k, v in TIF.items() if v}
STATUS_PB = {"OPEN": pb.ORDER_STATUS_OPEN, "PARTIALLY_FILLED": pb.ORDER_STATUS_PARTIALLY_FILLED,
             "FILLED": pb.ORDER_STATUS_FILLED, "CANCELLED": pb.ORDER_STATUS_CANCELLED,
             "EXPIRED": pb.ORDER_STATUS_EXPIRED}


def _enum(table: dict, value: int, field: str, names: str) -> str:
    if value not in table:
        raise InvalidArgument(f"{field} must be one of {names}")
    return table[value]


def order_message(o) -> pb.Order:
    return pb.Order(
        order_id=o.order_id, account_id=str(o.account_id), market=o.market, side=SIDE_PB[o.side],
        type=TYPE_PB[o.type], time_in_force=TIF_PB[o.time_in_force], post_only=o.post_only, price=str(o.price),
        quantity=str(o.quantity), filled_quantity=str(o.filled_quantity), status=STATUS_PB[o.status],
        reason=o.reason or "", quote_filled=str(o.quote_filled), fee=str(o.fee), held=str(o.held),
        sequence=o.sequence, created_at=utc_iso(o.created_at))


def trade_message(tr) -> pb.Trade:
    return pb.Trade(
        trade_id=tr.trade_id, market=tr.market, price=str(tr.price), quantity=str(tr.quantity),
        taker_order_id=tr.taker_order_id, maker_order_id=tr.maker_order_id, taker_side=SIDE_PB[tr.taker_side],
        buyer_account_id=str(tr.buyer_account_id), seller_account_id=str(tr.seller_account_id),
        buyer_paid=str(tr.buyer_paid), buyer_fee=str(tr.buyer_fee), seller_gross=str(tr.seller_gross),
        seller_fee=str(tr.seller_fee), rounding=str(tr.rounding), batch_id=tr.batch_id, created_at=utc_iso(tr.created_at))


def market_data_message(item) -> pb.StreamMarketDataResponse:
    payload = json.loads(item.payload)
    reply = pb.StreamMarketDataResponse(cursor=item.cursor, market=item.market, created_at=utc_iso(item.created_at),
                                        digest=item.digest)
    if item.type == "trade":
        reply.trade.CopyFrom(pb.Trade(
            trade_id=payload["trade_id"], market=item.market, price=payload["price"], quantity=payload["quantity"],
            taker_order_id=payload["taker_order_id"], maker_order_id=payload["maker_order_id"],
            taker_side=SIDE_PB[payload["taker_side"]], created_at=utc_iso(item.created_at)))
    else:
        reply.book.CopyFrom(pb.BookUpdate(
            bids=[pb.PriceLevel(price=p, quantity=q) for p, q in payload["bids"]],
            asks=[pb.PriceLevel(price=p, quantity=q) for p, q in payload["asks"]]))
    return reply


class MatchingServicer(matching_pb2_grpc.MatchingServiceServicer):
    def __init__(self, app: Custody):
        self.matching = app.matching
        self.market_data = JournalTail(lambda after, limit: self.matching.market_data_after(None, after, limit),
                                       self.matching.market_data_notifier, MARKET_DATA_POLL_S, MARKET_DATA_PAGE)

    async def ListMarkets(self, request, context):
        return pb.ListMarketsResponse(markets=[
            pb.Market(market=m.name, base=m.base, quote=m.quote, price_unit=str(m.price_unit),
                      price_tick=str(m.price_tick), quantity_step=str(m.quantity_step),
                      min_quantity=str(m.min_quantity), maker_fee_ppm=m.maker_fee_ppm, taker_fee_ppm=m.taker_fee_ppm)
            for m in self.matching.markets()])

    async def PlaceOrder(self, request, context):
        future = self.matching.submit_place(
            current_client(), request.idempotency_key, request.account_id, request.market,
            _enum(SIDE, request.side, "side", "SIDE_BUY, SIDE_SELL"),
            _enum(TYPE, request.type, "type", "ORDER_TYPE_LIMIT, ORDER_TYPE_MARKET"),
            _enum(TIF, request.time_in_force, "time_in_force", "TIME_IN_FORCE_GTC, _IOC, _FOK"),
            request.post_only, request.price, request.quantity)
        placed = await asyncio.wrap_future(future)
        return pb.PlaceOrderResponse(order=order_message(placed.order),
                                     trades=[trade_message(tr) for tr in placed.trades], replayed=placed.replayed)

    async def CancelOrder(self, request, context):
        cancelled = await asyncio.wrap_future(
            self.matching.submit_cancel(current_client(), request.idempotency_key, request.order_id))
        return pb.CancelOrderResponse(order=order_message(cancelled.order), replayed=cancelled.replayed)

    async def GetOrder(self, request, context):
        order = await asyncio.to_thread(self.matching.get_order, request.order_id)
        return pb.GetOrderResponse(order=order_message(order))

    async def GetOrderBook(self, request, context):
        # It reads the database (is this instance's book current?): off the event loop.
        bids, asks, cursor = await asyncio.to_thread(self.matching.order_book, request.market, request.depth)
        return pb.GetOrderBookResponse(
            market=request.market, cursor=cursor,
            bids=[pb.PriceLevel(price=str(p), quantity=str(q)) for p, q in bids],
            asks=[pb.PriceLevel(price=str(p), quantity=str(q)) for p, q in asks])

    async def ListTrades(self, request, context):
        trades = await asyncio.to_thread(self.matching.list_trades, request.market, request.after_trade_id,
                                         request.limit)
        return pb.ListTradesResponse(trades=[trade_message(tr) for tr in trades])

    async def StreamMarketData(self, request, context):
        market = self.matching.config.market(request.market).name  # unknown: INVALID_ARGUMENT before streaming
        cursor, head = await checked_resume(request.after_cursor, request.after_digest,
                                            self.matching.last_market_data_cursor,
                                            self.matching.market_data_digest_at, "market data",
                                            "market data item")
        async for item in self.market_data.follow(
                cursor, head, wanted=lambda item: item.market == market,
                read_wanted=lambda after, limit: self.matching.market_data_after(market, after, limit)):
            yield market_data_message(item)
