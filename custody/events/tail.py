"""One reader of a journal per process, shared by every stream that follows it.

Each open stream used to read the database itself, once a second and again after every commit
of this process. A few hundred open streams made that many reads per commit; they filled the
server's I/O threads, and unary calls waited behind them (Transfer p50 went from 3 ms to 45 ms
with 300 idle streams). Now one task reads what is new and keeps the latest items in memory. A
stream whose cursor is inside that window is served from memory; a stream further behind reads
the database, a page at a time, until it reaches the window.

This relies on what the journals guarantee already: cursors grow in commit order, and nothing
is deleted from a journal.
"""
from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog

log = structlog.get_logger("custody.events")

KEEP = 10_000  # items kept in memory: a few MB of payloads


class JournalTail:
    """read_after(cursor, limit) gives the items (each with .cursor) after cursor in cursor
    order; notifier wakes the reader when this process commits (others are found by polling)."""

    def __init__(self, read_after: Callable[[int, int], list], notifier, poll_s: float, page: int,
                 keep: int = KEEP):
        self._read_after = read_after
        self._notifier = notifier
        self._poll_s = poll_s
        self._page = page
        self._items: collections.deque = collections.deque(maxlen=keep)
        # Every item with a cursor above _base, up to _head, is in _items (None: not running).
        self._base: int | None = None
        self._head = 0
        self._grown = asyncio.Event()  # set, and replaced, whenever the reader has news
        self._error: Exception | None = None
        self._task: asyncio.Task | None = None
        self._followers = 0

    async def follow(self, cursor: int, head: int, wanted: Callable[[Any], bool] | None = None,
                     read_wanted: Callable[[int, int], list] | None = None) -> AsyncIterator[Any]:
        """The items after cursor, for ever. head: the journal's last cursor, read by the caller
        (the reader starts there if it is not running). A stream that wants only some items (one
        market's) gives the test, and read_wanted to read only those from the database."""
        read = read_wanted or self._read_after
        self._followers += 1
        if self._task is None:
            self._items.clear()
            self._base = self._head = head
            self._error = None
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            while True:
                grown, base = self._grown, self._base
                if self._error is not None:
                    raise self._error
                if base is not None and cursor >= base:
                    # A page at a time: a stream whose client stops reading waits at a yield holding
                    # its batch; the whole rest of the window, held by each of a client's stalled
                    # streams, outlived the window (100 streams: about a million items).
                    batch = self._after(cursor, self._page)
                    # With a short page, everything up to the head was looked at.
                    cursor = batch[-1].cursor if len(batch) == self._page else max(cursor, self._head)
                    for item in batch:
                        if wanted is None or wanted(item):
                            yield item
                    if not batch:
                        await grown.wait()
                    continue
                # Behind the window: from the database. Filtered reads may return fewer items
                # than exist, so the window's base, read before, is how far a short page proves.
                batch = await asyncio.to_thread(read, cursor, self._page)
                for item in batch:
                    yield item
                    cursor = item.cursor
                if len(batch) < self._page and base is not None:
                    cursor = max(cursor, base)
        finally:
            self._followers -= 1

    async def stop(self) -> None:
        """Ends the reader (the server is stopping; its streams are cancelled already)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def _after(self, cursor: int, limit: int) -> list:
        """The first `limit` items of the window after cursor."""
        newer = []
        for item in reversed(self._items):
            if item.cursor <= cursor:
                break
            newer.append(item)
        return newer[: -limit - 1: -1]

    async def _run(self) -> None:
        wake = self._notifier.subscribe()
        try:
            while self._followers > 0:
                wake.clear()
                items = await asyncio.to_thread(self._read_after, self._head, self._page)
                for item in items:
                    if len(self._items) == self._items.maxlen:
                        self._base = self._items[0].cursor
                    self._items.append(item)
                if items:
                    self._head = items[-1].cursor
                    self._wake_followers()
                if len(items) < self._page:
                    try:
                        await asyncio.wait_for(wake.wait(), timeout=self._poll_s)
                    except asyncio.TimeoutError:
                        pass
        except Exception as exc:  # the database went away: each stream ends with it, as before
            log.warning("journal reader stopped", error=str(exc))
            self._error = exc
            self._wake_followers()
        finally:
            self._notifier.unsubscribe(wake)
            self._task = None
            self._base = None

    def _wake_followers(self) -> None:
        grown, self._grown = self._grown, asyncio.Event()
        grown.set()
