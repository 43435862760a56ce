"""Reading the event journal and waking up readers when new events commit."""
from __future__ import annotations

import asyncio
import dataclasses
import threading

from sqlalchemy import Engine, select

from custody.db import schema as t
from custody.db.engine import read_transaction
from custody.errors import InvalidArgument, OutOfRange


@dataclasses.dataclass(frozen=True)
class Event:
    cursor: int
    type: str
    payload: str
    created_at: str


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
    return [Event(r.cursor, r.type, r.payload, _iso(r.created_at)) for r in rows]


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


def _iso(value) -> str:
    if value.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        return value.isoformat() + "Z"
    return value.isoformat().replace("+00:00", "Z")


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
            loop.call_soon_threadsafe(event.set)

    def subscribe(self) -> asyncio.Event:
        event = asyncio.Event()
        with self._lock:
            self._waiters.add((asyncio.get_running_loop(), event))
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        with self._lock:
            self._waiters = {w for w in self._waiters if w[1] is not event}
