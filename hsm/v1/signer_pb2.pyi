from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_SIGNED: _ClassVar[Decision]
    DECISION_REFUSED: _ClassVar[Decision]
DECISION_UNSPECIFIED: Decision
DECISION_SIGNED: Decision
DECISION_REFUSED: Decision

class GetPublicKeyRequest(_message.Message):
    __slots__ = ("key_id", "path")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    path: str
    def __init__(self, key_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class GetPublicKeyResponse(_message.Message):
    __slots__ = ("key_id", "path", "public_key", "extended_public_key")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    EXTENDED_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    path: str
    public_key: bytes
    extended_public_key: str
    def __init__(self, key_id: _Optional[str] = ..., path: _Optional[str] = ..., public_key: _Optional[bytes] = ..., extended_public_key: _Optional[str] = ...) -> None: ...

class KeyPath(_message.Message):
    __slots__ = ("key_id", "path")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    path: str
    def __init__(self, key_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("approver", "signature")
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    approver: str
    signature: bytes
    def __init__(self, approver: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SignRequest(_message.Message):
    __slots__ = ("chain", "payload", "keys", "approvals", "reference", "withdrawals")
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWALS_FIELD_NUMBER: _ClassVar[int]
    chain: str
    payload: bytes
    keys: _containers.RepeatedCompositeFieldContainer[KeyPath]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    reference: str
    withdrawals: _containers.RepeatedCompositeFieldContainer[ApprovedWithdrawal]
    def __init__(self, chain: _Optional[str] = ..., payload: _Optional[bytes] = ..., keys: _Optional[_Iterable[_Union[KeyPath, _Mapping]]] = ..., approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ..., reference: _Optional[str] = ..., withdrawals: _Optional[_Iterable[_Union[ApprovedWithdrawal, _Mapping]]] = ...) -> None: ...

class ApprovedWithdrawal(_message.Message):
    __slots__ = ("withdrawal_id", "account_id", "asset", "to_address", "amount", "fee", "approvals")
    WITHDRAWAL_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    TO_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    FEE_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    withdrawal_id: str
    account_id: int
    asset: str
    to_address: str
    amount: str
    fee: str
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    def __init__(self, withdrawal_id: _Optional[str] = ..., account_id: _Optional[int] = ..., asset: _Optional[str] = ..., to_address: _Optional[str] = ..., amount: _Optional[str] = ..., fee: _Optional[str] = ..., approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ...) -> None: ...

class Destination(_message.Message):
    __slots__ = ("address", "asset", "amount", "internal")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    address: str
    asset: str
    amount: str
    internal: bool
    def __init__(self, address: _Optional[str] = ..., asset: _Optional[str] = ..., amount: _Optional[str] = ..., internal: _Optional[bool] = ...) -> None: ...

class SignResponse(_message.Message):
    __slots__ = ("decision", "refused_rule", "refused_reason", "signed_payload", "raw_transaction", "txid", "destinations", "fee", "fee_asset", "payload_hash", "audit_sequence")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REFUSED_RULE_FIELD_NUMBER: _ClassVar[int]
    REFUSED_REASON_FIELD_NUMBER: _ClassVar[int]
    SIGNED_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RAW_TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    FEE_FIELD_NUMBER: _ClassVar[int]
    FEE_ASSET_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_HASH_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    refused_rule: str
    refused_reason: str
    signed_payload: bytes
    raw_transaction: bytes
    txid: str
    destinations: _containers.RepeatedCompositeFieldContainer[Destination]
    fee: str
    fee_asset: str
    payload_hash: str
    audit_sequence: int
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., refused_rule: _Optional[str] = ..., refused_reason: _Optional[str] = ..., signed_payload: _Optional[bytes] = ..., raw_transaction: _Optional[bytes] = ..., txid: _Optional[str] = ..., destinations: _Optional[_Iterable[_Union[Destination, _Mapping]]] = ..., fee: _Optional[str] = ..., fee_asset: _Optional[str] = ..., payload_hash: _Optional[str] = ..., audit_sequence: _Optional[int] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KeyInfo(_message.Message):
    __slots__ = ("key_id", "kind", "fingerprint", "public_key")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    kind: str
    fingerprint: str
    public_key: bytes
    def __init__(self, key_id: _Optional[str] = ..., kind: _Optional[str] = ..., fingerprint: _Optional[str] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyInfo, _Mapping]]] = ...) -> None: ...
