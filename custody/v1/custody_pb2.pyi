from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WithdrawalStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WITHDRAWAL_STATUS_UNSPECIFIED: _ClassVar[WithdrawalStatus]
    WITHDRAWAL_STATUS_PENDING_REVIEW: _ClassVar[WithdrawalStatus]
    WITHDRAWAL_STATUS_APPROVED: _ClassVar[WithdrawalStatus]
    WITHDRAWAL_STATUS_QUEUED: _ClassVar[WithdrawalStatus]
    WITHDRAWAL_STATUS_SIGNING: _ClassVar[WithdrawalStatus]
    WITHDRAWAL_STATUS_SIGNED: _ClassVar[WithdrawalStatus]
    WITHDRAWAL_STATUS_BROADCAST: _ClassVar[WithdrawalStatus]
    WITHDRAWAL_STATUS_CONFIRMING: _ClassVar[WithdrawalStatus]
    WITHDRAWAL_STATUS_COMPLETED: _ClassVar[WithdrawalStatus]
    WITHDRAWAL_STATUS_REJECTED: _ClassVar[WithdrawalStatus]
    WITHDRAWAL_STATUS_CANCELLED: _ClassVar[WithdrawalStatus]
    WITHDRAWAL_STATUS_FAILED: _ClassVar[WithdrawalStatus]

class DepositStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPOSIT_STATUS_UNSPECIFIED: _ClassVar[DepositStatus]
    DEPOSIT_STATUS_PENDING: _ClassVar[DepositStatus]
    DEPOSIT_STATUS_CREDITED: _ClassVar[DepositStatus]
    DEPOSIT_STATUS_ORPHANED: _ClassVar[DepositStatus]
    DEPOSIT_STATUS_REVERSED: _ClassVar[DepositStatus]
    DEPOSIT_STATUS_BELOW_MINIMUM: _ClassVar[DepositStatus]
    DEPOSIT_STATUS_ASSET_DISABLED: _ClassVar[DepositStatus]
WITHDRAWAL_STATUS_UNSPECIFIED: WithdrawalStatus
WITHDRAWAL_STATUS_PENDING_REVIEW: WithdrawalStatus
WITHDRAWAL_STATUS_APPROVED: WithdrawalStatus
WITHDRAWAL_STATUS_QUEUED: WithdrawalStatus
WITHDRAWAL_STATUS_SIGNING: WithdrawalStatus
WITHDRAWAL_STATUS_SIGNED: WithdrawalStatus
WITHDRAWAL_STATUS_BROADCAST: WithdrawalStatus
WITHDRAWAL_STATUS_CONFIRMING: WithdrawalStatus
WITHDRAWAL_STATUS_COMPLETED: WithdrawalStatus
WITHDRAWAL_STATUS_REJECTED: WithdrawalStatus
WITHDRAWAL_STATUS_CANCELLED: WithdrawalStatus
WITHDRAWAL_STATUS_FAILED: WithdrawalStatus
DEPOSIT_STATUS_UNSPECIFIED: DepositStatus
DEPOSIT_STATUS_PENDING: DepositStatus
DEPOSIT_STATUS_CREDITED: DepositStatus
DEPOSIT_STATUS_ORPHANED: DepositStatus
DEPOSIT_STATUS_REVERSED: DepositStatus
DEPOSIT_STATUS_BELOW_MINIMUM: DepositStatus
DEPOSIT_STATUS_ASSET_DISABLED: DepositStatus

class WithdrawalHistoryEntry(_message.Message):
    __slots__ = ("from_status", "to_status", "actor", "reason", "at")
    FROM_STATUS_FIELD_NUMBER: _ClassVar[int]
    TO_STATUS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    from_status: WithdrawalStatus
    to_status: WithdrawalStatus
    actor: str
    reason: str
    at: str
    def __init__(self, from_status: _Optional[_Union[WithdrawalStatus, str]] = ..., to_status: _Optional[_Union[WithdrawalStatus, str]] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., at: _Optional[str] = ...) -> None: ...

class Withdrawal(_message.Message):
    __slots__ = ("withdrawal_id", "account_id", "asset", "to_address", "amount", "fee", "status", "txid", "reason", "network_fee", "created_at", "history")
    WITHDRAWAL_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    TO_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    FEE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FEE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    withdrawal_id: str
    account_id: str
    asset: str
    to_address: str
    amount: str
    fee: str
    status: WithdrawalStatus
    txid: str
    reason: str
    network_fee: str
    created_at: str
    history: _containers.RepeatedCompositeFieldContainer[WithdrawalHistoryEntry]
    def __init__(self, withdrawal_id: _Optional[str] = ..., account_id: _Optional[str] = ..., asset: _Optional[str] = ..., to_address: _Optional[str] = ..., amount: _Optional[str] = ..., fee: _Optional[str] = ..., status: _Optional[_Union[WithdrawalStatus, str]] = ..., txid: _Optional[str] = ..., reason: _Optional[str] = ..., network_fee: _Optional[str] = ..., created_at: _Optional[str] = ..., history: _Optional[_Iterable[_Union[WithdrawalHistoryEntry, _Mapping]]] = ...) -> None: ...

class RequestWithdrawalRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "asset", "to_address", "amount")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    TO_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    asset: str
    to_address: str
    amount: str
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., asset: _Optional[str] = ..., to_address: _Optional[str] = ..., amount: _Optional[str] = ...) -> None: ...

class RequestWithdrawalResponse(_message.Message):
    __slots__ = ("withdrawal", "created")
    WITHDRAWAL_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    withdrawal: Withdrawal
    created: bool
    def __init__(self, withdrawal: _Optional[_Union[Withdrawal, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetWithdrawalRequest(_message.Message):
    __slots__ = ("withdrawal_id",)
    WITHDRAWAL_ID_FIELD_NUMBER: _ClassVar[int]
    withdrawal_id: str
    def __init__(self, withdrawal_id: _Optional[str] = ...) -> None: ...

class GetWithdrawalResponse(_message.Message):
    __slots__ = ("withdrawal",)
    WITHDRAWAL_FIELD_NUMBER: _ClassVar[int]
    withdrawal: Withdrawal
    def __init__(self, withdrawal: _Optional[_Union[Withdrawal, _Mapping]] = ...) -> None: ...

class ListWithdrawalsRequest(_message.Message):
    __slots__ = ("account_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWithdrawalsResponse(_message.Message):
    __slots__ = ("withdrawals", "next_page_token")
    WITHDRAWALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    withdrawals: _containers.RepeatedCompositeFieldContainer[Withdrawal]
    next_page_token: str
    def __init__(self, withdrawals: _Optional[_Iterable[_Union[Withdrawal, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelWithdrawalRequest(_message.Message):
    __slots__ = ("withdrawal_id",)
    WITHDRAWAL_ID_FIELD_NUMBER: _ClassVar[int]
    withdrawal_id: str
    def __init__(self, withdrawal_id: _Optional[str] = ...) -> None: ...

class CancelWithdrawalResponse(_message.Message):
    __slots__ = ("withdrawal",)
    WITHDRAWAL_FIELD_NUMBER: _ClassVar[int]
    withdrawal: Withdrawal
    def __init__(self, withdrawal: _Optional[_Union[Withdrawal, _Mapping]] = ...) -> None: ...

class CreateAccountRequest(_message.Message):
    __slots__ = ("external_id",)
    EXTERNAL_ID_FIELD_NUMBER: _ClassVar[int]
    external_id: str
    def __init__(self, external_id: _Optional[str] = ...) -> None: ...

class CreateAccountResponse(_message.Message):
    __slots__ = ("account_id", "external_id", "created", "frozen")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    external_id: str
    created: bool
    frozen: bool
    def __init__(self, account_id: _Optional[str] = ..., external_id: _Optional[str] = ..., created: _Optional[bool] = ..., frozen: _Optional[bool] = ...) -> None: ...

class GetBalancesRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class Balance(_message.Message):
    __slots__ = ("asset", "available", "held", "pending")
    ASSET_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    asset: str
    available: str
    held: str
    pending: str
    def __init__(self, asset: _Optional[str] = ..., available: _Optional[str] = ..., held: _Optional[str] = ..., pending: _Optional[str] = ...) -> None: ...

class GetBalancesResponse(_message.Message):
    __slots__ = ("account_id", "balances")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCES_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    balances: _containers.RepeatedCompositeFieldContainer[Balance]
    def __init__(self, account_id: _Optional[str] = ..., balances: _Optional[_Iterable[_Union[Balance, _Mapping]]] = ...) -> None: ...

class TransferRequest(_message.Message):
    __slots__ = ("idempotency_key", "from_account_id", "to_account_id", "asset", "amount", "memo")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    FROM_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TO_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    from_account_id: str
    to_account_id: str
    asset: str
    amount: str
    memo: str
    def __init__(self, idempotency_key: _Optional[str] = ..., from_account_id: _Optional[str] = ..., to_account_id: _Optional[str] = ..., asset: _Optional[str] = ..., amount: _Optional[str] = ..., memo: _Optional[str] = ...) -> None: ...

class TransferResponse(_message.Message):
    __slots__ = ("transfer_id", "event_cursor")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    event_cursor: int
    def __init__(self, transfer_id: _Optional[str] = ..., event_cursor: _Optional[int] = ...) -> None: ...

class ListAssetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Asset(_message.Message):
    __slots__ = ("asset", "chain", "decimals", "contract", "confirmations", "withdrawal_fee", "min_withdrawal", "max_withdrawal", "daily_withdrawal_limit", "min_deposit", "deposits_enabled")
    ASSET_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    DECIMALS_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWAL_FEE_FIELD_NUMBER: _ClassVar[int]
    MIN_WITHDRAWAL_FIELD_NUMBER: _ClassVar[int]
    MAX_WITHDRAWAL_FIELD_NUMBER: _ClassVar[int]
    DAILY_WITHDRAWAL_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MIN_DEPOSIT_FIELD_NUMBER: _ClassVar[int]
    DEPOSITS_ENABLED_FIELD_NUMBER: _ClassVar[int]
    asset: str
    chain: str
    decimals: int
    contract: str
    confirmations: int
    withdrawal_fee: str
    min_withdrawal: str
    max_withdrawal: str
    daily_withdrawal_limit: str
    min_deposit: str
    deposits_enabled: bool
    def __init__(self, asset: _Optional[str] = ..., chain: _Optional[str] = ..., decimals: _Optional[int] = ..., contract: _Optional[str] = ..., confirmations: _Optional[int] = ..., withdrawal_fee: _Optional[str] = ..., min_withdrawal: _Optional[str] = ..., max_withdrawal: _Optional[str] = ..., daily_withdrawal_limit: _Optional[str] = ..., min_deposit: _Optional[str] = ..., deposits_enabled: _Optional[bool] = ...) -> None: ...

class ListAssetsResponse(_message.Message):
    __slots__ = ("assets",)
    ASSETS_FIELD_NUMBER: _ClassVar[int]
    assets: _containers.RepeatedCompositeFieldContainer[Asset]
    def __init__(self, assets: _Optional[_Iterable[_Union[Asset, _Mapping]]] = ...) -> None: ...

class StreamEventsRequest(_message.Message):
    __slots__ = ("after_cursor", "after_digest")
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    AFTER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    after_cursor: int
    after_digest: str
    def __init__(self, after_cursor: _Optional[int] = ..., after_digest: _Optional[str] = ...) -> None: ...

class StreamEventsResponse(_message.Message):
    __slots__ = ("cursor", "type", "payload", "created_at", "digest")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    type: str
    payload: str
    created_at: str
    digest: str
    def __init__(self, cursor: _Optional[int] = ..., type: _Optional[str] = ..., payload: _Optional[str] = ..., created_at: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class GetDepositAddressRequest(_message.Message):
    __slots__ = ("account_id", "chain", "new_address", "idempotency_key")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    NEW_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    chain: str
    new_address: bool
    idempotency_key: str
    def __init__(self, account_id: _Optional[str] = ..., chain: _Optional[str] = ..., new_address: _Optional[bool] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GetDepositAddressResponse(_message.Message):
    __slots__ = ("account_id", "chain", "address")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    chain: str
    address: str
    def __init__(self, account_id: _Optional[str] = ..., chain: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class ListDepositsRequest(_message.Message):
    __slots__ = ("account_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class Deposit(_message.Message):
    __slots__ = ("deposit_id", "chain", "asset", "txid", "index", "address", "amount", "confirmations", "status", "block_height", "block_hash", "coinbase", "reason")
    DEPOSIT_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    COINBASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    deposit_id: str
    chain: str
    asset: str
    txid: str
    index: int
    address: str
    amount: str
    confirmations: int
    status: DepositStatus
    block_height: int
    block_hash: str
    coinbase: bool
    reason: str
    def __init__(self, deposit_id: _Optional[str] = ..., chain: _Optional[str] = ..., asset: _Optional[str] = ..., txid: _Optional[str] = ..., index: _Optional[int] = ..., address: _Optional[str] = ..., amount: _Optional[str] = ..., confirmations: _Optional[int] = ..., status: _Optional[_Union[DepositStatus, str]] = ..., block_height: _Optional[int] = ..., block_hash: _Optional[str] = ..., coinbase: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ListDepositsResponse(_message.Message):
    __slots__ = ("account_id", "deposits", "next_page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    DEPOSITS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    deposits: _containers.RepeatedCompositeFieldContainer[Deposit]
    next_page_token: str
    def __init__(self, account_id: _Optional[str] = ..., deposits: _Optional[_Iterable[_Union[Deposit, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
