from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Side(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIDE_UNSPECIFIED: _ClassVar[Side]
    SIDE_BUY: _ClassVar[Side]
    SIDE_SELL: _ClassVar[Side]

class OrderType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_TYPE_UNSPECIFIED: _ClassVar[OrderType]
    ORDER_TYPE_LIMIT: _ClassVar[OrderType]
    ORDER_TYPE_MARKET: _ClassVar[OrderType]

class TimeInForce(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIME_IN_FORCE_UNSPECIFIED: _ClassVar[TimeInForce]
    TIME_IN_FORCE_GTC: _ClassVar[TimeInForce]
    TIME_IN_FORCE_IOC: _ClassVar[TimeInForce]
    TIME_IN_FORCE_FOK: _ClassVar[TimeInForce]

class OrderStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_STATUS_UNSPECIFIED: _ClassVar[OrderStatus]
    ORDER_STATUS_OPEN: _ClassVar[OrderStatus]
    ORDER_STATUS_PARTIALLY_FILLED: _ClassVar[OrderStatus]
    ORDER_STATUS_FILLED: _ClassVar[OrderStatus]
    ORDER_STATUS_CANCELLED: _ClassVar[OrderStatus]
    ORDER_STATUS_EXPIRED: _ClassVar[OrderStatus]
SIDE_UNSPECIFIED: Side
SIDE_BUY: Side
SIDE_SELL: Side
ORDER_TYPE_UNSPECIFIED: OrderType
ORDER_TYPE_LIMIT: OrderType
ORDER_TYPE_MARKET: OrderType
TIME_IN_FORCE_UNSPECIFIED: TimeInForce
TIME_IN_FORCE_GTC: TimeInForce
TIME_IN_FORCE_IOC: TimeInForce
TIME_IN_FORCE_FOK: TimeInForce
ORDER_STATUS_UNSPECIFIED: OrderStatus
ORDER_STATUS_OPEN: OrderStatus
ORDER_STATUS_PARTIALLY_FILLED: OrderStatus
ORDER_STATUS_FILLED: OrderStatus
ORDER_STATUS_CANCELLED: OrderStatus
ORDER_STATUS_EXPIRED: OrderStatus

class Market(_message.Message):
    __slots__ = ("market", "base", "quote", "price_unit", "price_tick", "quantity_step", "min_quantity", "maker_fee_ppm", "taker_fee_ppm")
    MARKET_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    PRICE_UNIT_FIELD_NUMBER: _ClassVar[int]
    PRICE_TICK_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_STEP_FIELD_NUMBER: _ClassVar[int]
    MIN_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    MAKER_FEE_PPM_FIELD_NUMBER: _ClassVar[int]
    TAKER_FEE_PPM_FIELD_NUMBER: _ClassVar[int]
    market: str
    base: str
    quote: str
    price_unit: str
    price_tick: str
    quantity_step: str
    min_quantity: str
    maker_fee_ppm: int
    taker_fee_ppm: int
    def __init__(self, market: _Optional[str] = ..., base: _Optional[str] = ..., quote: _Optional[str] = ..., price_unit: _Optional[str] = ..., price_tick: _Optional[str] = ..., quantity_step: _Optional[str] = ..., min_quantity: _Optional[str] = ..., maker_fee_ppm: _Optional[int] = ..., taker_fee_ppm: _Optional[int] = ...) -> None: ...

class ListMarketsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMarketsResponse(_message.Message):
    __slots__ = ("markets",)
    MARKETS_FIELD_NUMBER: _ClassVar[int]
    markets: _containers.RepeatedCompositeFieldContainer[Market]
    def __init__(self, markets: _Optional[_Iterable[_Union[Market, _Mapping]]] = ...) -> None: ...

class Order(_message.Message):
    __slots__ = ("order_id", "account_id", "market", "side", "type", "time_in_force", "post_only", "price", "quantity", "filled_quantity", "status", "reason", "quote_filled", "fee", "held", "sequence", "created_at")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    MARKET_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    POST_ONLY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    FILLED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    QUOTE_FILLED_FIELD_NUMBER: _ClassVar[int]
    FEE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    account_id: str
    market: str
    side: Side
    type: OrderType
    time_in_force: TimeInForce
    post_only: bool
    price: str
    quantity: str
    filled_quantity: str
    status: OrderStatus
    reason: str
    quote_filled: str
    fee: str
    held: str
    sequence: int
    created_at: str
    def __init__(self, order_id: _Optional[str] = ..., account_id: _Optional[str] = ..., market: _Optional[str] = ..., side: _Optional[_Union[Side, str]] = ..., type: _Optional[_Union[OrderType, str]] = ..., time_in_force: _Optional[_Union[TimeInForce, str]] = ..., post_only: _Optional[bool] = ..., price: _Optional[str] = ..., quantity: _Optional[str] = ..., filled_quantity: _Optional[str] = ..., status: _Optional[_Union[OrderStatus, str]] = ..., reason: _Optional[str] = ..., quote_filled: _Optional[str] = ..., fee: _Optional[str] = ..., held: _Optional[str] = ..., sequence: _Optional[int] = ..., created_at: _Optional[str] = ...) -> None: ...

class Trade(_message.Message):
    __slots__ = ("trade_id", "market", "price", "quantity", "taker_order_id", "maker_order_id", "taker_side", "buyer_account_id", "seller_account_id", "buyer_paid", "buyer_fee", "seller_gross", "seller_fee", "rounding", "batch_id", "created_at")
    TRADE_ID_FIELD_NUMBER: _ClassVar[int]
    MARKET_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    TAKER_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    MAKER_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    TAKER_SIDE_FIELD_NUMBER: _ClassVar[int]
    BUYER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SELLER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    BUYER_PAID_FIELD_NUMBER: _ClassVar[int]
    BUYER_FEE_FIELD_NUMBER: _ClassVar[int]
    SELLER_GROSS_FIELD_NUMBER: _ClassVar[int]
    SELLER_FEE_FIELD_NUMBER: _ClassVar[int]
    ROUNDING_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    trade_id: int
    market: str
    price: str
    quantity: str
    taker_order_id: str
    maker_order_id: str
    taker_side: Side
    buyer_account_id: str
    seller_account_id: str
    buyer_paid: str
    buyer_fee: str
    seller_gross: str
    seller_fee: str
    rounding: str
    batch_id: str
    created_at: str
    def __init__(self, trade_id: _Optional[int] = ..., market: _Optional[str] = ..., price: _Optional[str] = ..., quantity: _Optional[str] = ..., taker_order_id: _Optional[str] = ..., maker_order_id: _Optional[str] = ..., taker_side: _Optional[_Union[Side, str]] = ..., buyer_account_id: _Optional[str] = ..., seller_account_id: _Optional[str] = ..., buyer_paid: _Optional[str] = ..., buyer_fee: _Optional[str] = ..., seller_gross: _Optional[str] = ..., seller_fee: _Optional[str] = ..., rounding: _Optional[str] = ..., batch_id: _Optional[str] = ..., created_at: _Optional[str] = ...) -> None: ...

class PlaceOrderRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "market", "side", "type", "price", "quantity", "time_in_force", "post_only")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    MARKET_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    TIME_IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    POST_ONLY_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    market: str
    side: Side
    type: OrderType
    price: str
    quantity: str
    time_in_force: TimeInForce
    post_only: bool
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., market: _Optional[str] = ..., side: _Optional[_Union[Side, str]] = ..., type: _Optional[_Union[OrderType, str]] = ..., price: _Optional[str] = ..., quantity: _Optional[str] = ..., time_in_force: _Optional[_Union[TimeInForce, str]] = ..., post_only: _Optional[bool] = ...) -> None: ...

class PlaceOrderResponse(_message.Message):
    __slots__ = ("order", "trades", "replayed")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    TRADES_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    order: Order
    trades: _containers.RepeatedCompositeFieldContainer[Trade]
    replayed: bool
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ..., trades: _Optional[_Iterable[_Union[Trade, _Mapping]]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class CancelOrderRequest(_message.Message):
    __slots__ = ("order_id", "idempotency_key")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    idempotency_key: str
    def __init__(self, order_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class CancelOrderResponse(_message.Message):
    __slots__ = ("order", "replayed")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    order: Order
    replayed: bool
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class GetOrderRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class GetOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: Order
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ...) -> None: ...

class GetOrderBookRequest(_message.Message):
    __slots__ = ("market", "depth")
    MARKET_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    market: str
    depth: int
    def __init__(self, market: _Optional[str] = ..., depth: _Optional[int] = ...) -> None: ...

class PriceLevel(_message.Message):
    __slots__ = ("price", "quantity")
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    price: str
    quantity: str
    def __init__(self, price: _Optional[str] = ..., quantity: _Optional[str] = ...) -> None: ...

class GetOrderBookResponse(_message.Message):
    __slots__ = ("market", "bids", "asks", "cursor")
    MARKET_FIELD_NUMBER: _ClassVar[int]
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    market: str
    bids: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    asks: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    cursor: int
    def __init__(self, market: _Optional[str] = ..., bids: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ..., cursor: _Optional[int] = ...) -> None: ...

class ListTradesRequest(_message.Message):
    __slots__ = ("market", "after_trade_id", "limit")
    MARKET_FIELD_NUMBER: _ClassVar[int]
    AFTER_TRADE_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    market: str
    after_trade_id: int
    limit: int
    def __init__(self, market: _Optional[str] = ..., after_trade_id: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListTradesResponse(_message.Message):
    __slots__ = ("trades",)
    TRADES_FIELD_NUMBER: _ClassVar[int]
    trades: _containers.RepeatedCompositeFieldContainer[Trade]
    def __init__(self, trades: _Optional[_Iterable[_Union[Trade, _Mapping]]] = ...) -> None: ...

class StreamMarketDataRequest(_message.Message):
    __slots__ = ("market", "after_cursor", "after_digest")
    MARKET_FIELD_NUMBER: _ClassVar[int]
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    AFTER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    market: str
    after_cursor: int
    after_digest: str
    def __init__(self, market: _Optional[str] = ..., after_cursor: _Optional[int] = ..., after_digest: _Optional[str] = ...) -> None: ...

class BookUpdate(_message.Message):
    __slots__ = ("bids", "asks")
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    bids: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    asks: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    def __init__(self, bids: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ...) -> None: ...

class StreamMarketDataResponse(_message.Message):
    __slots__ = ("cursor", "market", "created_at", "trade", "book", "digest")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    MARKET_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TRADE_FIELD_NUMBER: _ClassVar[int]
    BOOK_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    market: str
    created_at: str
    trade: Trade
    book: BookUpdate
    digest: str
    def __init__(self, cursor: _Optional[int] = ..., market: _Optional[str] = ..., created_at: _Optional[str] = ..., trade: _Optional[_Union[Trade, _Mapping]] = ..., book: _Optional[_Union[BookUpdate, _Mapping]] = ..., digest: _Optional[str] = ...) -> None: ...
