"""What callers ask of the ledger. One command becomes one atomic batch (or nothing)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import orjson

from custody.errors import InvalidArgument
from custody.ledger.model import Posting

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")


def parse_idempotency_key(key: str) -> str:
    if not key:
        raise InvalidArgument("idempotency_key is required")
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidArgument("idempotency_key must be 1-128 printable ASCII characters without spaces")
    return key


@dataclasses.dataclass(frozen=True, slots=True)
class Idempotency:
    """A client-chosen key, scoped to the client, and a digest of the request it names."""

    scope: str
    key: str
    request_hash: str

    @staticmethod
    def for_request(scope: str, key: str, method: str, fields: dict) -> "Idempotency":
        canonical = json.dumps({"method": method, **fields}, sort_keys=True, separators=(",", ":"))
        return Idempotency(scope, key, hashlib.sha256(canonical.encode()).hexdigest())


@dataclasses.dataclass(frozen=True, slots=True)
class HoldCreate:
    """Moves amount from the user's available to held and opens a hold for it.

    hold_id may be chosen by the caller (make it with model.new_id()): then later
    commands in the same group can post to or void the hold before it is
    committed, and the caller can record the id in its own rows beforehand."""

    account_id: int
    asset: str
    amount: int
    reference: str | None = None
    hold_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class HoldPost:
    """Spends part or all of an open hold: each leg moves held funds to an account.

    With close=True (or when nothing remains) the hold ends and what is left
    returns to the user's available balance."""

    hold_id: str
    legs: tuple[tuple[str, int], ...]  # (credit account code, amount)
    close: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class HoldVoid:
    """Ends a hold and returns everything it still holds to available."""

    hold_id: str


@dataclasses.dataclass(frozen=True)
class Command:
    kind: str
    actor: str
    postings: tuple[Posting, ...] = ()
    hold_creates: tuple[HoldCreate, ...] = ()
    hold_posts: tuple[HoldPost, ...] = ()
    hold_voids: tuple[HoldVoid, ...] = ()
    idempotency: Idempotency | None = None
    reference: str | None = None
    memo: str | None = None
    # Custody accounts that must exist and not be frozen (the paying side).
    not_frozen: tuple[int, ...] = ()
    # Custody accounts that must exist (the receiving side).
    must_exist: tuple[int, ...] = ()
    # A flagged correction may leave a user balance negative; the check reports it.
    flagged: bool = False


@dataclasses.dataclass(frozen=True)
class BatchResult:
    batch_id: str
    event_cursor: int
    hold_ids: tuple[str, ...] = ()
    replayed: bool = False

    def to_json(self) -> str:
        return orjson.dumps(
            {"batch_id": self.batch_id, "event_cursor": self.event_cursor, "hold_ids": list(self.hold_ids)}
        ).decode()

    @staticmethod
    def from_json(text: str) -> "BatchResult":
        raw = json.loads(text)
        return BatchResult(raw["batch_id"], raw["event_cursor"], tuple(raw["hold_ids"]), replayed=True)
