from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AdjustmentDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADJUSTMENT_DIRECTION_UNSPECIFIED: _ClassVar[AdjustmentDirection]
    ADJUSTMENT_DIRECTION_CREDIT: _ClassVar[AdjustmentDirection]
    ADJUSTMENT_DIRECTION_DEBIT: _ClassVar[AdjustmentDirection]
ADJUSTMENT_DIRECTION_UNSPECIFIED: AdjustmentDirection
ADJUSTMENT_DIRECTION_CREDIT: AdjustmentDirection
ADJUSTMENT_DIRECTION_DEBIT: AdjustmentDirection

class AdjustBalanceRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "asset", "amount", "direction", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    asset: str
    amount: str
    direction: AdjustmentDirection
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., asset: _Optional[str] = ..., amount: _Optional[str] = ..., direction: _Optional[_Union[AdjustmentDirection, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class AdjustBalanceResponse(_message.Message):
    __slots__ = ("adjustment_id", "event_cursor")
    ADJUSTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    adjustment_id: str
    event_cursor: int
    def __init__(self, adjustment_id: _Optional[str] = ..., event_cursor: _Optional[int] = ...) -> None: ...
