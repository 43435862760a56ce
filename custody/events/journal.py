"""Reading the event journal and waking up readers when new events commit."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import json
import re
import threading
from typing import Callable

from sqlalchemy import Engine, select

from custody.db import schema as t
from custody.db.engine import read_transaction
from custody.db.types import as_utc
from custody.errors import FailedPrecondition, InvalidArgument, OutOfRange


@dataclasses.dataclass(frozen=True)
class Event:
    cursor: int
    type: str
    payload: str
    created_at: str
    digest: str


MAX_CURSOR = 2**63 - 1  # cursors and ids are 64-bit signed integers in both databases


def check_cursor(value: int, field: str) -> int:
    """A cursor or id a client sent (proto uint64): beyond MAX_CURSOR no row can be, and
    neither database takes such a number as an integer parameter."""
    if not 0 <= value <= MAX_CURSOR:
        raise InvalidArgument(f"{field} must be from 0 to 2^63-1, got {value}")
    return value


def read_after(engine: Engine, after_cursor: int, limit: int = 500) -> list[Event]:
    check_cursor(after_cursor, "after_cursor")
    with read_transaction(engine) as conn:
        rows = conn.execute(
            select(t.events).where(t.events.c.cursor > after_cursor).order_by(t.events.c.cursor).limit(limit)
        ).all()
    return [_event(r) for r in rows]


def digest_at(engine: Engine, cursor: int) -> str | None:
    """The digest of the event at cursor; None if there is none."""
    with read_transaction(engine) as conn:
        row = conn.execute(select(t.events).where(t.events.c.cursor == cursor)).first()
    return None if row is None else _event(row).digest


def _event(row) -> Event:
    created_at = utc_iso(row.created_at)
    return Event(row.cursor, row.type, row.payload, created_at,
                 item_digest(row.cursor, row.type, row.payload, created_at))


def item_digest(cursor: int, *fields: str) -> str:
    """Names one journal item: another database's or a restored database's item at the same
    cursor differs (its time, and the ids in its payload), so a resume can be checked."""
    return hashlib.sha256(json.dumps([cursor, *fields]).encode()).hexdigest()[:32]


_DIGEST = re.compile(r"[0-9a-f]{32}")


async def checked_resume(after_cursor: int, after_digest: str, last: Callable[[], int],
                         digest_at_cursor: Callable[[int], str | None], journal: str, item: str) -> tuple[int, int]:
    """A stream's starting point, checked: (its cursor, the journal's head) or the refusal of a
    cursor out of range, a malformed digest, or a digest of another item (another or a restored
    database). last and digest_at_cursor read the database, off the event loop."""
    cursor = check_cursor(after_cursor, "after_cursor")
    check_digest(cursor, after_digest)
    head = await asyncio.to_thread(last)
    check_not_beyond(cursor, head, journal)
    if after_digest:
        check_same_item(cursor, after_digest, await asyncio.to_thread(digest_at_cursor, cursor), item)
    return cursor, head


def check_digest(after_cursor: int, after_digest: str) -> str:
    """A resume's after_digest: empty (not checked), or the 32 hex digits a stream gave."""
    if after_digest and not _DIGEST.fullmatch(after_digest):
        raise InvalidArgument("after_digest must be the 32 lowercase hex digits a stream gave, or empty")
    if after_digest and after_cursor == 0:
        raise InvalidArgument("after_digest names the item at after_cursor; with after_cursor 0 leave it empty")
    return after_digest


def check_same_item(after_cursor: int, after_digest: str, found: str | None, journal: str) -> None:
    """The cursor is within the journal (check_not_beyond), but is it the item the client saw?
    After a restore the journal grows again under the same cursors with other items, and once it
    passes the client's cursor only this tells the two apart."""
    if after_digest and found != after_digest:
        raise FailedPrecondition(
            f"the {journal} at cursor {after_cursor} is not the one you saw (after_digest {after_digest}): "
            "this database is another one or was restored from a backup; resume from your own records")


def check_not_beyond(after_cursor: int, last_cursor: int, journal: str) -> None:
    """A reader that starts past the end would wait for ever and miss what commits below its
    cursor (the database was restored from a backup, or it is another database)."""
    if after_cursor > last_cursor:
        raise OutOfRange(f"after_cursor {after_cursor} is beyond the last {journal} cursor, {last_cursor}: "
                         "it comes from another database or from before a restore; resume from a cursor "
                         "you received from this one")


def last_cursor(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(t.event_sequence.c.last_cursor)).scalar_one()


def utc_iso(value: datetime.datetime) -> str:
    """RFC 3339 in UTC ("...Z"), whatever the database session's time zone: PostgreSQL hands
    back times in it, and a session set to another zone changed the text, and so the digests."""
    return as_utc(value).astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


class EventNotifier:
    """Wakes asyncio readers when this process commits events.

    Events committed by other instances are found by the readers' periodic
    poll; this only makes the common case immediate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.last_cursor = 0

    def notify(self, cursor: int) -> None:
        with self._lock:
            self.last_cursor = max(self.last_cursor, cursor)
            waiters = list(self._waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # its loop was closed without ending its readers: nobody waits there
                self.unsubscribe(event)

    def subscribe(self) -> asyncio.Event:
        event = asyncio.Event()
        with self._lock:
            self._waiters.add((asyncio.get_running_loop(), event))
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        with self._lock:
            self._waiters = {w for w in self._waiters if w[1] is not event}
