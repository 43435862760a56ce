"""What callers ask of the ledger. One command becomes one atomic batch (or nothing)."""
from __future__ import annotations

import hashlib
import json
import re
from typing import NamedTuple

import orjson

from custody.errors import InvalidArgument
from custody.ledger.model import Posting

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")
# The idempotency scope of the ledger commands the service issues itself (a withdrawal's release,
# completion, fee, foreign spend). A client's scope is its name, which may not be this one
# (custody.config); these keys are never pruned (custody.ledger.key_retention).
SERVICE_SCOPE = "withdrawals"


def parse_idempotency_key(key: str) -> str:
    if not key:
        raise InvalidArgument("idempotency_key is required")
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidArgument("idempotency_key must be 1-128 printable ASCII characters without spaces")
    return key


# Commands and their parts are NamedTuples, not frozen dataclasses: a frozen
# dataclass's constructor sets each field through object.__setattr__ (3.4 us
# for a transfer's command against 1.2 us), and pickling one goes through
# Python-level __getstate__/__setstate__ (4.2 us to pickle and 7.0 us to
# unpickle a transfer's command, against 1.7 and 1.5 us as tuples). Every
# command crosses a process boundary on its way to the ledger writer. Each
# class pickles as (class, fields): namedtuple's own __getnewargs__ path is
# slower than that.


class Idempotency(NamedTuple):
    """A client-chosen key, scoped to the client, and a digest of the request it names."""

    scope: str
    key: str
    request_hash: str

    @staticmethod
    def for_request(scope: str, key: str, method: str, fields: dict) -> "Idempotency":
        return Idempotency(scope, key, hashlib.sha256(canonical_json({"method": method, **fields})).hexdigest())

    def __reduce__(self):
        return Idempotency, tuple(self)


def canonical_json(value: dict) -> bytes:
    """value as compact JSON with sorted keys and non-ASCII escaped: the bytes
    json.dumps(sort_keys=True, separators=(",", ":")) writes, so request
    digests stay what earlier versions stored. orjson writes the same bytes,
    ten times faster, for ints up to 64 bits and ASCII text without DEL (json
    escapes DEL and every non-ASCII character, orjson neither; checked for
    every ASCII character in tests/unit/test_ledger_commands.py); anything
    else takes json's path."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an int beyond 64 bits
        text = None
    if text is None or not text.isascii() or b"\x7f" in text:
        text = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return text


class HoldCreate(NamedTuple):
    """Moves amount from the user's available to held and opens a hold for it.

    hold_id may be chosen by the caller (make it with model.new_id()): then later
    commands in the same group can post to or void the hold before it is
    committed, and the caller can record the id in its own rows beforehand."""

    account_id: int
    asset: str
    amount: int
    reference: str | None = None
    hold_id: str | None = None

    def __reduce__(self):
        return HoldCreate, tuple(self)


class HoldPost(NamedTuple):
    """Spends part or all of an open hold: each leg moves held funds to an account.

    With close=True (or when nothing remains) the hold ends and what is left
    returns to the user's available balance."""

    hold_id: str
    legs: tuple[tuple[str, int], ...]  # (credit account code, amount)
    close: bool = False

    def __reduce__(self):
        return HoldPost, tuple(self)


class HoldVoid(NamedTuple):
    """Ends a hold and returns everything it still holds to available."""

    hold_id: str

    def __reduce__(self):
        return HoldVoid, tuple(self)


class Command(NamedTuple):
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

    def __reduce__(self):
        return Command, tuple(self)


class BatchResult(NamedTuple):
    batch_id: str
    event_cursor: int
    hold_ids: tuple[str, ...] = ()
    replayed: bool = False

    def __reduce__(self):
        return BatchResult, tuple(self)

    def to_json(self) -> str:
        return orjson.dumps(
            {"batch_id": self.batch_id, "event_cursor": self.event_cursor, "hold_ids": list(self.hold_ids)}
        ).decode()

    @staticmethod
    def from_json(text: str) -> "BatchResult":
        raw = json.loads(text)
        return BatchResult(raw["batch_id"], raw["event_cursor"], tuple(raw["hold_ids"]), replayed=True)
