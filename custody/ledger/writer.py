"""Group commit: queued ledger commands applied in groups, one durable transaction per group.

A group is whatever queued up while the previous group was committing (up to
`max_group` commands), so the fsync is paid once per group, not once per
command. Each command still becomes its own batch or nothing (see
`apply_commands`).

Two ways to run the writer, chosen by `[server] ledger_writer`:

- `thread`: a thread of this process applies the groups (`LedgerWriter`, here).
- `process` (the default of `custody serve`): a child process applies them
  (`custody.ledger.process_writer`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from typing import Callable, Iterator

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from custody.errors import DatabaseUnavailable, Unavailable, driver_reason
from custody.ledger.commands import BatchResult, Command
from custody.ledger.engine import AccountIds, Result, apply_commands

log = logging.getLogger(__name__)
STOP = object()


class WriterUnavailable(Unavailable):
    """The ledger writer process exited before answering; retry with the same idempotency key."""


class GroupCommitter:
    """Applies groups of commands, each in one transaction, on one connection
    kept open for the writer's life: checking a connection out of the pool and
    back in for every group was a sixth of a small group's cost. After any
    error the connection is dropped and the next group opens a new one.

    When the database cannot be reached, every command of the group fails with
    DatabaseUnavailable (gRPC UNAVAILABLE) at once; an operational error that
    outlasts the retries (a lost connection, a deadlock three times) fails its
    command with it too."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.ids = AccountIds()
        self._conn: Connection | None = None

    def run(self, commands: list[Command]) -> list[Result | Exception]:
        """One result or error per command; after a database error, each command is retried on its own."""
        try:
            return self._commit(commands)
        except _CannotConnect as exc:  # none of them can be applied now
            return [exc] * len(commands)
        except DBAPIError:
            if len(commands) > 1:
                # Something in the group hit a database error (a key taken by
                # another instance, a deadlock): retry each command on its own
                # so one failure cannot sink the others.
                log.warning("group of %d failed, retrying one by one", len(commands), exc_info=True)
            results = []
            for command in commands:
                results.append(self._commit_alone(command))
                if isinstance(results[-1], _CannotConnect):  # the database went away: the rest cannot be applied
                    results += [results[-1]] * (len(commands) - len(results))
                    break
            return results
        except Exception as exc:  # a bug: fail the callers, keep the writer alive
            log.exception("ledger writer failed")
            return [exc] * len(commands)

    def close(self) -> None:
        conn, self._conn = self._conn, None  # forgotten first: a broken one must not be used again
        if conn is not None:
            conn.close()

    def _commit(self, commands: list[Command]) -> list[Result]:
        if self._conn is None:
            try:
                self._conn = self.engine.connect().execution_options(custody_write=True)
            except DBAPIError as exc:
                log.warning("ledger writer cannot connect to the database: %s", driver_reason(exc))
                raise _CannotConnect() from exc
        try:
            with self._conn.begin():
                results = apply_commands(self._conn, commands, self.ids)
        except BaseException:
            self.ids.rollback()
            try:
                self.close()
            except Exception:  # closing a connection the server dropped may fail too; it is gone either way
                log.debug("closing the failed connection failed", exc_info=True)
            raise
        self.ids.commit()
        return results

    def _commit_alone(self, command: Command, attempts: int = 3) -> Result | Exception:
        for attempt in range(attempts):
            try:
                return self._commit([command])[0]
            except _CannotConnect as exc:
                return exc
            except DBAPIError as exc:
                if attempt == attempts - 1:
                    if not isinstance(exc, (OperationalError, InterfaceError)):
                        return exc
                    log.warning("ledger command failed %d times: %s", attempts, driver_reason(exc))
                    return DatabaseUnavailable()
            except Exception as exc:
                log.exception("ledger writer failed")
                return exc
        raise AssertionError("unreachable")


class _CannotConnect(DatabaseUnavailable):
    """The writer could not open a connection, so nothing of the group was applied."""


def last_cursor(results: list) -> int | None:
    cursors = [r.event_cursor for r in results if isinstance(r, BatchResult) and not r.replayed]
    return max(cursors) if cursors else None


def resolve_futures(futures: list, results: list) -> None:
    """Resolves each caller's future: a concurrent one here; asyncio ones on their
    event loop, one wake-up per loop for the whole group rather than one per call."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for future, result in zip(futures, results):
        if isinstance(future, asyncio.Future):
            by_loop.setdefault(future.get_loop(), []).append((future, result))
        else:
            settle(future, result)
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(settle_on_loop, pairs)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def settle_on_loop(pairs) -> None:
    """Settles (future, result) pairs on the futures' own event loop's thread."""
    for future, result in pairs:
        settle(future, result)


def settle(future, result) -> None:
    """Gives the caller its result, unless it stopped waiting: a gRPC call cancelled or past its
    deadline cancels the future it awaits (asyncio.wrap_future), while the command is still
    applied. Setting a cancelled future raises, which killed the writer's thread and left every
    later caller waiting for ever. The caller learns the outcome by retrying with its key."""
    if future.done():
        return
    try:
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
    except (concurrent.futures.InvalidStateError, asyncio.InvalidStateError):
        pass  # cancelled from another thread between the check and the set


def cut_groups(q: queue.SimpleQueue, max_group: int, wait_s: float = 0.0) -> Iterator[list]:
    """Yields lists of queued (command, future) pairs, as many as are waiting, at most
    max_group each; ends at STOP. The queue holds lists of pairs (see submit_async).

    With wait_s, a group waits up to that long for more commands, but only
    while callers are concurrent (the last group had more than one): a commit
    has a fixed cost of several commands' worth, so with many calls in flight
    fewer, larger groups serve them with less CPU, while a lone caller never
    waits (PostgreSQL's commit_delay with commit_siblings is the same idea)."""
    carry: list = []
    last_size = 0
    while True:
        if not carry:
            item = q.get()
            if item is STOP:
                return
            carry = item
        group, carry = carry[:max_group], carry[max_group:]
        deadline = time.monotonic() + wait_s if wait_s > 0 and last_size > 1 else 0.0
        while len(group) < max_group and not carry:
            try:
                item = q.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = q.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is STOP:
                yield group
                return
            room = max_group - len(group)
            group += item[:room]
            carry = item[room:]
        last_size = len(group)
        yield group


class QueuedWriter:
    def __init__(self, max_group: int, group_wait_s: float):
        self.max_group = max_group
        self.group_wait_s = group_wait_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._listeners: list[Callable[[int], None]] = []
        # Per event loop, what its current turn submitted (touched only from that loop's thread).
        self._loop_batches: dict[asyncio.AbstractEventLoop, list] = {}

    def on_commit(self, listener: Callable[[int], None]) -> None:
        """listener(last_cursor) runs after each commit that wrote events (on a writer thread)."""
        self._listeners.append(listener)

    def submit(self, command: Command) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put([(command, future)])
        return future

    def submit_async(self, command: Command) -> asyncio.Future:
        """For callers on an event loop (the gRPC servicers): await the result.

        The commands submitted during one turn of the loop are queued together
        at its end: one wake-up of the writer's thread per turn, not per call."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        batch = self._loop_batches.get(loop)
        if batch is None:
            batch = self._loop_batches[loop] = []
            loop.call_soon(self._flush_loop_batch, loop)
        batch.append((command, future))
        return future

    def _flush_loop_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._queue.put(self._loop_batches.pop(loop))

    def execute(self, command: Command) -> BatchResult:
        return self.submit(command).result()

    def _notify(self, results: list) -> None:
        cursor = last_cursor(results)
        if cursor is not None:
            for listener in self._listeners:
                try:
                    listener(cursor)
                except Exception:
                    # The group is committed and its callers answered. A listener raising here
                    # ended the writer's thread, and every later call waited for ever.
                    log.exception("a commit listener failed (cursor %s); the writer goes on", cursor)


class LedgerWriter(QueuedWriter):
    """A thread of this process applies queued commands in groups."""

    def __init__(self, engine: Engine, *, max_group: int = 1000, group_wait_s: float = 0.0):
        super().__init__(max_group, group_wait_s)
        self.engine = engine
        self._committer = GroupCommitter(engine)
        self._thread = threading.Thread(target=self._loop, name="ledger-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._queue.put(STOP)
        self._thread.join()

    def _loop(self) -> None:
        try:
            for group in cut_groups(self._queue, self.max_group, self.group_wait_s):
                results = self._committer.run([c for c, _ in group])
                resolve_futures([f for _, f in group], results)
                self._notify(results)
        finally:
            self._committer.close()
