"""The ledger writer in a child process (`[server] ledger_writer = "process"`, the default of `custody serve`).

The child applies the group commits; this process only pickles commands and
results. Why: the writer's Python work per command (loading balances,
building rows) is larger than what the gRPC event loop spends on the call
itself; in one process the two take turns on the GIL and each commit cycle
stretches to the event loop's pace. In a child process the writer runs on
another core.

Two channels lead to the child, and it merges what arrives on both into one
group commit:

- the event loop's channel (the gRPC servicers' calls): each loop turn's
  commands are written as one message at the end of the turn, and answers
  are read when the socket is readable, all on the loop's own thread. No
  thread handoff stands between a call and its answer: with two threads in
  the middle (handoffs, and the GIL taken back from them), gRPC Transfer ran
  at 3,437 calls/s against 4,648 without them (64 in flight).
- the threads' channel (jobs, CLI, tests: callers without an event loop): a
  queue, one thread that sends groups and one that receives answers.

While callers are concurrent (the last group had more than one command) the
child waits up to `group_wait_s` for more before it commits (see
custody.ledger.writer.cut_groups for why).

If the child dies, the calls it had not answered fail with
`WriterUnavailable`; their outcome is unknown (the group may have committed
just before), so callers retry with the same idempotency key, which replays a
committed result or applies the command once. A new child is started.
"""
from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import pickle
import signal
import socket
import struct
import threading
import time

from custody.errors import CustodyError
from custody.ledger.commands import BatchResult, Command
from custody.ledger.writer import (
    STOP, GroupCommitter, QueuedWriter, WriterUnavailable, cut_groups, resolve_futures, settle_on_loop,
)

log = logging.getLogger(__name__)


class ProcessLedgerWriter(QueuedWriter):
    """A child process applies the commands; see the module's docstring."""

    def __init__(self, database_url: str, *, max_group: int = 1000, group_wait_s: float = 0.0):
        super().__init__(max_group, group_wait_s)
        self.database_url = database_url
        self._context = multiprocessing.get_context("spawn")  # never fork a process that runs gRPC threads
        self._lock = threading.Lock()
        # Held by the sender thread while it writes to the child, and by the receiver while it
        # closes a dead child's connection. A close during a write left the write with no handle
        # (the sender thread died, and every later threads'-channel call waited for good) or
        # writing into the next child's pipe, which had reused the descriptor (that child waited
        # for good for the rest of a frame, and with it every call). The sender never takes _lock
        # while holding it, and a write to a dead child fails at once.
        self._send_lock = threading.Lock()
        self._pending: dict[int, list] = {}
        self._numbers = itertools.count(1)
        self._closing = False
        self._generation = 0  # counts child processes started
        self._loop_channel: _LoopChannel | None = None
        self._process, self._conn, self._loop_sock = self._start_child()
        self._sender = threading.Thread(target=self._send_loop, name="ledger-sender", daemon=True)
        self._receiver = threading.Thread(target=self._receive_loop, name="ledger-receiver", daemon=True)
        self._sender.start()
        self._receiver.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def submit_async(self, command: Command) -> asyncio.Future:
        """For callers on an event loop: the commands of one loop turn go to the child as one message."""
        channel = self._channel_for(asyncio.get_running_loop())
        if channel is None:  # another loop owns the channel, or the child is being replaced
            return super().submit_async(command)
        return channel.submit(command)

    # How long close() waits for the child to finish what it has before it kills it: a child that
    # stopped answering (SIGSTOPped, or stuck) kept `custody serve` from ever exiting.
    close_wait_s = 60.0

    def close(self) -> None:
        self._queue.put(STOP)
        deadline = time.monotonic() + self.close_wait_s
        self._sender.join(self.close_wait_s)
        self._receiver.join(max(0.0, deadline - time.monotonic()))
        if self._sender.is_alive() or self._receiver.is_alive():
            log.error("ledger writer process %s did not finish within %.0f s of being asked to stop; killed; "
                      "its unanswered calls fail (retry them with the same key)", self._process.pid,
                      self.close_wait_s)
            with self._lock:
                self._closing = True  # the receiver starts no new child when this one goes
            self._process.kill()
            self._sender.join()
            self._receiver.join()
        with self._lock:
            channel, self._loop_channel = self._loop_channel, None
            spare, self._loop_sock = self._loop_sock, None
        if spare is not None:
            spare.close()
        if channel is not None:
            channel.close_from_any_thread()

    def _start_child(self):
        ours, theirs = self._context.Pipe()
        loop_ours, loop_theirs = socket.socketpair()
        loop_theirs = multiprocessing.connection.Connection(loop_theirs.detach())
        process = self._context.Process(
            target=_child_main, args=(self.database_url, self.max_group, self.group_wait_s, [theirs, loop_theirs]),
            name="custody-ledger-writer", daemon=True)
        process.start()
        theirs.close()
        loop_theirs.close()
        loop_ours.setblocking(False)
        return process, ours, loop_ours

    # -- the event loop's channel -------------------------------------------------------
    def _channel_for(self, loop: asyncio.AbstractEventLoop) -> "_LoopChannel | None":
        channel = self._loop_channel
        if channel is not None and channel.loop is loop and channel.usable(self._generation):
            return channel
        with self._lock:
            channel = self._loop_channel
            if channel is not None and channel.loop is not loop and not channel.loop.is_closed():
                return None  # one loop per channel; others take the threads' path
            if self._loop_sock is None:  # this child's socket went to a channel that has ended
                return None
            if channel is not None:
                channel.close_from_any_thread()
            self._loop_channel = channel = _LoopChannel(
                loop, self._loop_sock, self._generation, self.max_group, self._notify, self._queue.put)
            self._loop_sock = None
        return channel

    # -- the threads' channel ---------------------------------------------------------
    def _send_loop(self) -> None:
        # No waiting here for more commands: the child does that, over both channels.
        for group in cut_groups(self._queue, self.max_group):
            number = next(self._numbers)
            with self._lock:
                self._pending[number] = [f for _, f in group]
                conn = self._conn
            try:
                with self._send_lock:
                    conn.send((number, [c for c, _ in group]))
            except Exception as exc:  # noqa: BLE001 - this thread must live on whatever one group does
                # The child is gone (the receiver starts a new one) or the group could not be
                # written. If the receiver has not swept this group yet, fail it here.
                with self._lock:
                    futures = self._pending.pop(number, None)
                if futures and isinstance(exc, (OSError, EOFError, ValueError)):
                    _fail(futures)
                elif futures:
                    log.exception("ledger writer: a group could not be sent to the child process")
                    resolve_futures(futures, [RuntimeError(f"{type(exc).__name__}: {exc}")] * len(futures))
        with self._lock:
            self._closing = True
            conn = self._conn
        try:
            with self._send_lock:
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
                        with self._send_lock:
                            conn.close()
                        if self._loop_sock is not None:
                            self._loop_sock.close()
                        self._process, self._conn, self._loop_sock = self._start_child()
                        self._generation += 1
                for futures in lost:
                    _fail(futures)
                if closing:
                    self._process.join(30)
                    with self._send_lock:
                        conn.close()
                    return
                continue
            everything = []
            for number, results in answers:
                with self._lock:
                    futures = self._pending.pop(number, None)
                if futures is None:  # failed already as unanswered; a retry with its key replays it
                    log.error("ledger writer: an answer to group %d, which was failed as unanswered", number)
                else:
                    resolve_futures(futures, results)
                everything += results  # committed either way: event streams are woken
            self._notify(everything)


class _LoopChannel:
    """One event loop's connection to the child: runs only on that loop's thread.

    Messages are framed as multiprocessing.Connection frames them (a 4-byte
    big-endian length, or -1 and an 8-byte length), so the child reads them
    with Connection.recv and answers with Connection.send. Writes never block
    the loop: what the socket does not take at once waits in `_out` until it
    is writable."""

    def __init__(self, loop, sock: socket.socket, generation: int, max_group: int, notify, fallback):
        self.loop = loop
        self.generation = generation
        self._sock = sock
        self._fd = sock.fileno()
        self._max_group = max_group
        self._notify = notify
        self._fallback = fallback  # queues (command, future) pairs on the threads' channel
        self._numbers = itertools.count(1)
        self._pending: dict[int, list] = {}
        self._turn: list = []
        self._out = bytearray()
        self._in = bytearray()
        self._alive = True
        loop.add_reader(self._fd, self._readable)

    def usable(self, generation: int) -> bool:
        return self._alive and self.generation == generation and not self.loop.is_closed()

    def submit(self, command: Command) -> asyncio.Future:
        future = self.loop.create_future()
        if not self._turn:
            self.loop.call_soon(self._flush)
        self._turn.append((command, future))
        return future

    def close_from_any_thread(self) -> None:
        if self.loop.is_closed():
            self._sock.close()
        elif not self.loop.is_running():  # nothing else touches a loop that is not running
            self._lost()
        else:
            try:
                self.loop.call_soon_threadsafe(self._lost)
            except RuntimeError:  # the loop closed meanwhile
                self._sock.close()

    def _flush(self) -> None:
        turn, self._turn = self._turn, []
        for start in range(0, len(turn), self._max_group):
            part = turn[start:start + self._max_group]
            if not self._alive:  # not sent: safe to send another way
                self._fallback(part)
                continue
            number = next(self._numbers)
            try:
                payload = pickle.dumps((number, [c for c, _ in part]), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # a command that cannot be pickled: a bug; fail its callers, not the loop
                log.exception("ledger commands could not be sent to the writer process")
                settle_on_loop((future, exc) for _, future in part)
                continue
            self._pending[number] = [f for _, f in part]
            self._write(_frame(payload))

    def _write(self, frame: bytes) -> None:
        if not self._out:
            try:
                sent = self._sock.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._lost()
                return
            if sent == len(frame):
                return
            self.loop.add_writer(self._fd, self._writable)
            frame = frame[sent:]
        self._out += frame

    def _writable(self) -> None:
        try:
            sent = self._sock.send(self._out)
        except BlockingIOError:
            return
        except OSError:
            self._lost()
            return
        del self._out[:sent]
        if not self._out:
            self.loop.remove_writer(self._fd)

    def _readable(self) -> None:
        try:
            data = self._sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the child is gone
            self._lost()
            return
        self._in += data
        everything = []
        while True:
            message = _unframe(self._in)
            if message is None:
                break
            for number, results in pickle.loads(message):
                settle_on_loop(zip(self._pending.pop(number), results))
                everything += results
        if everything:
            self._notify(everything)

    def _lost(self) -> None:
        """The child is gone (or the writer closes): fail what it had not answered."""
        if not self._alive:
            return
        self._alive = False
        self.loop.remove_reader(self._fd)
        if self._out:
            self.loop.remove_writer(self._fd)
        self._sock.close()
        pending, self._pending = list(self._pending.values()), {}
        error = _unavailable()
        settle_on_loop((future, error) for futures in pending for future in futures)


def _frame(payload: bytes) -> bytes:
    if len(payload) > 0x7FFFFFFF:
        return struct.pack("!iQ", -1, len(payload)) + payload
    return struct.pack("!i", len(payload)) + payload


def _unframe(buffer: bytearray) -> bytes | None:
    """Removes and returns the first whole message in buffer, or None if it has none yet."""
    if len(buffer) < 4:
        return None
    (size,), start = struct.unpack_from("!i", buffer), 4
    if size == -1:
        if len(buffer) < 12:
            return None
        (size,), start = struct.unpack_from("!Q", buffer, 4), 12
    if len(buffer) < start + size:
        return None
    message = bytes(buffer[start:start + size])
    del buffer[:start + size]
    return message


def _unavailable() -> WriterUnavailable:
    return WriterUnavailable(
        "the ledger writer process exited before answering; the request may or may not have been applied: "
        "retry it with the same idempotency key")


def _fail(futures: list) -> None:
    resolve_futures(futures, [_unavailable()] * len(futures))


def _picklable(result):
    if isinstance(result, (BatchResult, CustodyError)):
        return result
    return RuntimeError(f"{type(result).__name__}: {result}")  # e.g. a DBAPIError that carries a connection


def _child_main(database_url: str, max_group: int, group_wait_s: float, conns: list) -> None:
    """The writer process: reads what has arrived on its channels, applies it in one transaction, answers each."""
    from custody import logs
    from custody.db.engine import make_engine

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop: it sends None
    logs.configure()
    engine = make_engine(database_url)
    committer = GroupCommitter(engine)
    gc.collect()
    gc.freeze()  # as the server does (custody.api.server.freeze_startup_objects): no full collection walks the modules
    channels = list(conns)
    last_size = 0
    try:
        stopping = False
        while channels and not stopping:
            messages, stopping = _read_group(channels, max_group, group_wait_s if last_size > 1 else 0.0)
            if not messages:
                continue
            results = committer.run([c for _, _, commands in messages for c in commands])
            last_size = len(results)
            answers: dict = {}
            start = 0
            for conn, number, commands in messages:
                answers.setdefault(conn, []).append(
                    (number, [_picklable(r) for r in results[start:start + len(commands)]]))
                start += len(commands)
            for conn, batch in answers.items():
                try:
                    conn.send(batch)
                except OSError:  # that channel's end is closed: its calls were failed there
                    pass
    finally:
        committer.close()
        engine.dispose()
        for conn in conns:
            conn.close()


def _read_group(channels: list, max_group: int, wait_s: float) -> tuple[list, bool]:
    """Messages (channel, number, commands) that have arrived, up to max_group commands,
    waiting up to wait_s for more; and whether the parent asked to stop. A channel
    whose other end closed is removed from channels."""
    messages: list = []
    count = 0
    stopping = False
    ready = multiprocessing.connection.wait(channels)
    deadline = time.monotonic() + wait_s
    while True:
        for conn in ready:
            while count < max_group:
                try:
                    if not conn.poll():
                        break
                    message = conn.recv()
                except (EOFError, OSError):
                    channels.remove(conn)
                    break
                if message is None:  # the parent closes: finish what has arrived, answer, exit
                    stopping = True
                    break
                messages.append((conn, *message))
                count += len(message[1])
        remaining = deadline - time.monotonic()
        if stopping or count >= max_group or not channels or remaining <= 0:
            return messages, stopping
        ready = multiprocessing.connection.wait(channels, remaining)
        if not ready:
            return messages, stopping
