from custody.v1 import custody_pb2 as _custody_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
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

class SetAccountFrozenRequest(_message.Message):
    __slots__ = ("account_id", "frozen", "reason")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    frozen: bool
    reason: str
    def __init__(self, account_id: _Optional[str] = ..., frozen: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class SetAccountFrozenResponse(_message.Message):
    __slots__ = ("account_id", "frozen", "changed", "event_cursor")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    EVENT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    frozen: bool
    changed: bool
    event_cursor: int
    def __init__(self, account_id: _Optional[str] = ..., frozen: _Optional[bool] = ..., changed: _Optional[bool] = ..., event_cursor: _Optional[int] = ...) -> None: ...

class WithdrawalBatch(_message.Message):
    __slots__ = ("batch_id", "chain", "status", "kind", "reason", "txid", "withdrawal_ids", "spent_by")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWAL_IDS_FIELD_NUMBER: _ClassVar[int]
    SPENT_BY_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    chain: str
    status: str
    kind: str
    reason: str
    txid: str
    withdrawal_ids: _containers.RepeatedScalarFieldContainer[str]
    spent_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, batch_id: _Optional[str] = ..., chain: _Optional[str] = ..., status: _Optional[str] = ..., kind: _Optional[str] = ..., reason: _Optional[str] = ..., txid: _Optional[str] = ..., withdrawal_ids: _Optional[_Iterable[str]] = ..., spent_by: _Optional[_Iterable[str]] = ...) -> None: ...

class ListWithdrawalBatchesRequest(_message.Message):
    __slots__ = ("status", "page_size", "page_token")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    status: str
    page_size: int
    page_token: str
    def __init__(self, status: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWithdrawalBatchesResponse(_message.Message):
    __slots__ = ("batches", "next_page_token")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[WithdrawalBatch]
    next_page_token: str
    def __init__(self, batches: _Optional[_Iterable[_Union[WithdrawalBatch, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ResolveWithdrawalBatchRequest(_message.Message):
    __slots__ = ("batch_id", "txid", "reason")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    txid: str
    reason: str
    def __init__(self, batch_id: _Optional[str] = ..., txid: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ResolveWithdrawalBatchResponse(_message.Message):
    __slots__ = ("batch", "withdrawals")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWALS_FIELD_NUMBER: _ClassVar[int]
    batch: WithdrawalBatch
    withdrawals: _containers.RepeatedCompositeFieldContainer[_custody_pb2.Withdrawal]
    def __init__(self, batch: _Optional[_Union[WithdrawalBatch, _Mapping]] = ..., withdrawals: _Optional[_Iterable[_Union[_custody_pb2.Withdrawal, _Mapping]]] = ...) -> None: ...

class BackofficeServiceListWithdrawalsRequest(_message.Message):
    __slots__ = ("status", "page_size", "page_token")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    status: _custody_pb2.WithdrawalStatus
    page_size: int
    page_token: str
    def __init__(self, status: _Optional[_Union[_custody_pb2.WithdrawalStatus, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ReviewFacts(_message.Message):
    __slots__ = ("account_age_days", "credited_deposits", "deposited_amount", "destination_seen_before", "withdrawn_24h", "daily_limit", "max_withdrawal", "approvals_needed", "approvers", "requested_by", "account_frozen", "asset_decimals")
    ACCOUNT_AGE_DAYS_FIELD_NUMBER: _ClassVar[int]
    CREDITED_DEPOSITS_FIELD_NUMBER: _ClassVar[int]
    DEPOSITED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_SEEN_BEFORE_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWN_24H_FIELD_NUMBER: _ClassVar[int]
    DAILY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_WITHDRAWAL_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_NEEDED_FIELD_NUMBER: _ClassVar[int]
    APPROVERS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FROZEN_FIELD_NUMBER: _ClassVar[int]
    ASSET_DECIMALS_FIELD_NUMBER: _ClassVar[int]
    account_age_days: int
    credited_deposits: int
    deposited_amount: str
    destination_seen_before: int
    withdrawn_24h: str
    daily_limit: str
    max_withdrawal: str
    approvals_needed: int
    approvers: _containers.RepeatedScalarFieldContainer[str]
    requested_by: str
    account_frozen: bool
    asset_decimals: int
    def __init__(self, account_age_days: _Optional[int] = ..., credited_deposits: _Optional[int] = ..., deposited_amount: _Optional[str] = ..., destination_seen_before: _Optional[int] = ..., withdrawn_24h: _Optional[str] = ..., daily_limit: _Optional[str] = ..., max_withdrawal: _Optional[str] = ..., approvals_needed: _Optional[int] = ..., approvers: _Optional[_Iterable[str]] = ..., requested_by: _Optional[str] = ..., account_frozen: _Optional[bool] = ..., asset_decimals: _Optional[int] = ...) -> None: ...

class ReviewItem(_message.Message):
    __slots__ = ("withdrawal", "facts")
    WITHDRAWAL_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    withdrawal: _custody_pb2.Withdrawal
    facts: ReviewFacts
    def __init__(self, withdrawal: _Optional[_Union[_custody_pb2.Withdrawal, _Mapping]] = ..., facts: _Optional[_Union[ReviewFacts, _Mapping]] = ...) -> None: ...

class BackofficeServiceListWithdrawalsResponse(_message.Message):
    __slots__ = ("items", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ReviewItem]
    next_page_token: str
    def __init__(self, items: _Optional[_Iterable[_Union[ReviewItem, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ApproveWithdrawalRequest(_message.Message):
    __slots__ = ("withdrawal_id", "signature")
    WITHDRAWAL_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    withdrawal_id: str
    signature: bytes
    def __init__(self, withdrawal_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ApproveWithdrawalResponse(_message.Message):
    __slots__ = ("withdrawal",)
    WITHDRAWAL_FIELD_NUMBER: _ClassVar[int]
    withdrawal: _custody_pb2.Withdrawal
    def __init__(self, withdrawal: _Optional[_Union[_custody_pb2.Withdrawal, _Mapping]] = ...) -> None: ...

class RejectWithdrawalRequest(_message.Message):
    __slots__ = ("withdrawal_id", "reason")
    WITHDRAWAL_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    withdrawal_id: str
    reason: str
    def __init__(self, withdrawal_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RejectWithdrawalResponse(_message.Message):
    __slots__ = ("withdrawal",)
    WITHDRAWAL_FIELD_NUMBER: _ClassVar[int]
    withdrawal: _custody_pb2.Withdrawal
    def __init__(self, withdrawal: _Optional[_Union[_custody_pb2.Withdrawal, _Mapping]] = ...) -> None: ...

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
