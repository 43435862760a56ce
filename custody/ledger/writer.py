"""Group commit: queued ledger commands applied in groups, one durable transaction per group.

A group is whatever queued up while the previous group was committing (up to
`max_group` commands), so the fsync is paid once per group, not once per
command. Each command still becomes its own batch or nothing (see
`apply_commands`).

Two ways to run the writer, chosen by `[server] ledger_writer`:

- `thread`: a thread of this process applies the groups.
- `process` (the default of `custody serve`): a child process applies them and
  this process only pickles commands and results. Why: the writer's Python
  work per command (loading balances, building rows) is larger than what the
  gRPC event loop spends on the call itself; in one process the two take
  turns on the GIL and each commit cycle stretches to the event loop's pace.
  In a child process the writer runs on another core.

If the child process dies, the calls it had not answered fail with
`WriterUnavailable`; their outcome is unknown (the group may have committed
just before), so callers retry with the same idempotency key, which replays a
committed result or applies the command once. A new child is started.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import multiprocessing
import queue
import signal
import threading
import time
from typing import Callable, Iterator

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from custody.errors import CustodyError, Unavailable
from custody.ledger.commands import BatchResult, Command
from custody.ledger.engine import AccountIds, Result, apply_commands

log = logging.getLogger(__name__)
_STOP = object()


class WriterUnavailable(Unavailable):
    """The ledger writer process exited before answering; retry with the same idempotency key."""


class GroupCommitter:
    """Applies groups of commands, each in one transaction, on one connection
    kept open for the writer's life: checking a connection out of the pool and
    back in for every group was a sixth of a small group's cost. After any
    error the connection is dropped and the next group opens a new one."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.ids = AccountIds()
        self._conn: Connection | None = None

    def run(self, commands: list[Command]) -> list[Result | Exception]:
        """One result or error per command; after a database error, each command is retried on its own."""
        try:
            return self._commit(commands)
        except DBAPIError:
            if len(commands) > 1:
                # Something in the group hit a database error (a key taken by
                # another instance, a deadlock): retry each command on its own
                # so one failure cannot sink the others.
                log.warning("group of %d failed, retrying one by one", len(commands), exc_info=True)
            return [self._commit_alone(c) for c in commands]
        except Exception as exc:  # a bug: fail the callers, keep the writer alive
            log.exception("ledger writer failed")
            return [exc] * len(commands)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _commit(self, commands: list[Command]) -> list[Result]:
        if self._conn is None:
            self._conn = self.engine.connect().execution_options(custody_write=True)
        try:
            with self._conn.begin():
                results = apply_commands(self._conn, commands, self.ids)
        except BaseException:
            self.ids.rollback()
            self.close()
            raise
        self.ids.commit()
        return results

    def _commit_alone(self, command: Command, attempts: int = 3) -> Result | Exception:
        for attempt in range(attempts):
            try:
                return self._commit([command])[0]
            except DBAPIError as exc:
                if attempt == attempts - 1:
                    return exc
            except Exception as exc:
                log.exception("ledger writer failed")
                return exc
        raise AssertionError("unreachable")


def last_cursor(results: list) -> int | None:
    cursors = [r.event_cursor for r in results if isinstance(r, BatchResult) and not r.replayed]
    return max(cursors) if cursors else None


def _resolve(futures: list, results: list) -> None:
    """Resolves each caller's future: a concurrent one here; asyncio ones on their
    event loop, one wake-up per loop for the whole group rather than one per call."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for future, result in zip(futures, results):
        if isinstance(future, asyncio.Future):
            by_loop.setdefault(future.get_loop(), []).append((future, result))
        else:
            _settle(future, result)
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve_on_loop, pairs)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _resolve_on_loop(pairs: list) -> None:
    for future, result in pairs:
        if not future.done():  # done: the call was cancelled
            _settle(future, result)


def _settle(future, result) -> None:
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _groups(q: queue.SimpleQueue, max_group: int, wait_s: float = 0.0) -> Iterator[list]:
    """Yields lists of queued (command, future) pairs, as many as are waiting, at most
    max_group each; ends at _STOP. The queue holds lists of pairs (see submit_async).

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
            if item is _STOP:
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
            if item is _STOP:
                yield group
                return
            room = max_group - len(group)
            group += item[:room]
            carry = item[room:]
        last_size = len(group)
        yield group


class _QueuedWriter:
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
                listener(cursor)


class LedgerWriter(_QueuedWriter):
    """A thread of this process applies queued commands in groups."""

    def __init__(self, engine: Engine, *, max_group: int = 1000, group_wait_s: float = 0.0):
        super().__init__(max_group, group_wait_s)
        self.engine = engine
        self._committer = GroupCommitter(engine)
        self._thread = threading.Thread(target=self._loop, name="ledger-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def _loop(self) -> None:
        try:
            for group in _groups(self._queue, self.max_group, self.group_wait_s):
                results = self._committer.run([c for c, _ in group])
                _resolve([f for _, f in group], results)
                self._notify(results)
        finally:
            self._committer.close()


class ProcessLedgerWriter(_QueuedWriter):
    """A child process applies the commands; this process sends it groups over a pipe.

    Two threads here: one sends groups as they queue up (it does not wait for
    answers, so the child can merge what arrived during its last commit into
    one transaction), one receives the answers and resolves the futures.
    """

    def __init__(self, database_url: str, *, max_group: int = 1000, group_wait_s: float = 0.0):
        super().__init__(max_group, group_wait_s)
        self.database_url = database_url
        self._context = multiprocessing.get_context("spawn")  # never fork a process that runs gRPC threads
        self._lock = threading.Lock()
        self._pending: dict[int, list] = {}
        self._numbers = itertools.count(1)
        self._closing = False
        self._process, self._conn = self._start_child()
        self._sender = threading.Thread(target=self._send_loop, name="ledger-sender", daemon=True)
        self._receiver = threading.Thread(target=self._receive_loop, name="ledger-receiver", daemon=True)
        self._sender.start()
        self._receiver.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def close(self) -> None:
        self._queue.put(_STOP)
        self._sender.join()
        self._receiver.join()

    def _start_child(self):
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_child_main, args=(self.database_url, self.max_group, theirs),
            name="custody-ledger-writer", daemon=True)
        process.start()
        theirs.close()
        return process, ours

    def _send_loop(self) -> None:
        for group in _groups(self._queue, self.max_group, self.group_wait_s):
            number = next(self._numbers)
            with self._lock:
                self._pending[number] = [f for _, f in group]
                conn = self._conn
            try:
                conn.send((number, [c for c, _ in group]))
            except (OSError, EOFError, ValueError):
                # The child is gone; the receiver starts a new one. If it has
                # not swept this group yet, fail it here.
                with self._lock:
                    futures = self._pending.pop(number, None)
                if futures:
                    _fail(futures)
        with self._lock:
            self._closing = True
            conn = self._conn
        try:
            conn.send(None)  # the child finishes what it has, answers, and exits
        except (OSError, EOFError, ValueError):
            pass

    def _receive_loop(self) -> None:
        while True:
            with self._lock:
                conn = self._conn
            try:
                answers = conn.recv()
            except (OSError, EOFError):
                with self._lock:
                    # At interpreter exit multiprocessing terminates daemon
                    # children itself: no new writer then.
                    closing = self._closing or not threading.main_thread().is_alive()
                    lost = list(self._pending.values())
                    self._pending.clear()
                    if not closing:
                        log.error("ledger writer process %s exited (code %s); starting a new one; "
                                  "%d unanswered calls failed", self._process.pid, self._process.exitcode,
                                  sum(map(len, lost)))
                        self._process.join(5)
                        conn.close()
                        self._process, self._conn = self._start_child()
                for futures in lost:
                    _fail(futures)
                if closing:
                    self._process.join(30)
                    conn.close()
                    return
                continue
            everything = []
            for number, results in answers:
                with self._lock:
                    futures = self._pending.pop(number)
                _resolve(futures, results)
                everything += results
            self._notify(everything)


def _fail(futures: list) -> None:
    error = WriterUnavailable(
        "the ledger writer process exited before answering; the request may or may not have been applied: "
        "retry it with the same idempotency key")
    _resolve(futures, [error] * len(futures))


def _picklable(result):
    if isinstance(result, (BatchResult, CustodyError)):
        return result
    return RuntimeError(f"{type(result).__name__}: {result}")  # e.g. a DBAPIError that carries a connection


def _child_main(database_url: str, max_group: int, conn) -> None:
    """The writer process: reads groups, applies what has arrived in one transaction, answers."""
    from custody import logs
    from custody.db.engine import make_engine

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop: it sends None
    logs.configure()
    engine = make_engine(database_url)
    committer = GroupCommitter(engine)
    stop = False
    try:
        while not stop:
            try:
                message = conn.recv()
            except EOFError:  # the parent is gone
                return
            if message is None:
                return
            messages = [message]
            count = len(message[1])
            while count < max_group and conn.poll():
                message = conn.recv()
                if message is None:
                    stop = True
                    break
                messages.append(message)
                count += len(message[1])
            results = committer.run([c for _, commands in messages for c in commands])
            answers, start = [], 0
            for number, commands in messages:
                answers.append((number, [_picklable(r) for r in results[start:start + len(commands)]]))
                start += len(commands)
            conn.send(answers)
    finally:
        committer.close()
        engine.dispose()
        conn.close()
