"""Raw blocks fetched by a child process while this process parses.

Why a process and not a thread: a 4-block answer is about 1 MB of JSON that
arrives over dozens of socket reads, and a thread doing those reads needs the
GIL back after each one, which the parsing thread holds for up to Python's
switch interval (5 ms). With a prefetch thread, scanning took 1.64 to 1.8
times as long as the bare fetch on an idle 2-core machine, although parsing
alone is cheaper than the node's work. The child does the HTTP, the JSON and
the hex decoding; this process receives finished bytes through a pipe, about
one read per chunk.

Requests are served in order. Each one is answered with its chunks of raw
blocks, then an end (or an error). A request the caller stops reading is
cancelled, and its leftover answers are dropped when a later request is read.
If the child dies or stops answering, the caller gets NodeUnavailable and the
next request starts a new child: the scanner keeps its cursor and retries.
"""
from __future__ import annotations

import collections
import fcntl
import logging
import multiprocessing
import signal
from typing import Iterator

from chains.base import BlockNotFound, ChainError, NodeError, NodeUnavailable
from chains.bitcoin.rpc import BitcoinRPC, RpcError

log = logging.getLogger(__name__)

# Bitcoin Core: -8 "Block height out of range", -5 "Block not found".
NOT_FOUND_CODES = (-8, -5)


def not_found(exc: RpcError) -> bool:
    """The node has no such block (height above its tip, or a hash it dropped in a reorg). bcoin
    says so with code -1 ("Block not found", "Not found."), Core with NOT_FOUND_CODES."""
    return exc.code in NOT_FOUND_CODES or (exc.code == -1 and "not found" in exc.message.lower())
# Room for a whole chunk in the pipe, so the child can go on to the next one
# before this process reads it (Linux's unprivileged maximum).
_PIPE_BYTES = 1 << 20

RawBlock = tuple[str, bytes]  # (hash, serialized block)


def block_hashes(rpc: BitcoinRPC, start: int, count: int) -> list[str]:
    """Hashes of blocks start..start+count-1 on the best chain, stopping at the tip."""
    try:
        return rpc.batch([("getblockhash", h) for h in range(start, start + count)])
    except RpcError as exc:
        if not not_found(exc):
            raise
    hashes = []
    for h in range(start, start + count):  # some heights are above the tip: up to it, one by one
        try:
            hashes.append(rpc.call("getblockhash", h))
        except RpcError as exc:
            if not_found(exc):
                break
            raise
    return hashes


def raw_blocks(rpc: BitcoinRPC, hashes: list[str]) -> list[RawBlock]:
    if not hashes:
        return []
    try:
        raws = rpc.batch([("getblock", h, False) for h in hashes])
    except RpcError as exc:
        if not_found(exc):  # reorged away since its hash was read
            raise BlockNotFound(f"block {hashes[0]} or one after it left the best chain while fetching") from None
        raise
    return [(h, bytes.fromhex(raw)) for h, raw in zip(hashes, raws)]


class BlockFetcher:
    def __init__(self, rpc_options: dict, chunk: int):
        self.rpc_options = rpc_options
        self.chunk = chunk
        retries = rpc_options.get("retries", 5)
        # The child answers within its client's retries; past that it is stuck.
        self.deadline_s = (rpc_options.get("timeout_s", 30.0) * (retries + 1)
                           + rpc_options.get("max_backoff_s", 8.0) * retries + 5)
        self._context = multiprocessing.get_context("spawn")  # never fork a process that runs gRPC threads
        self._last_id = 0
        self._first_id_of_child = 1  # requests before it went to a child that is gone
        self._process = self._requests = self._replies = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def request(self, start: int, count: int) -> int:
        """Starts fetching blocks start..start+count-1; returns the request's id for `chunks`."""
        if self._process is None:
            self._start()
            self._first_id_of_child = self._last_id + 1
        self._last_id = request_id = self._last_id + 1
        self._send(("fetch", request_id, start, count))
        return request_id

    def chunks(self, request_id: int) -> Iterator[list[RawBlock]]:
        """The request's raw blocks in height order, a chunk at a time; fewer at the tip.

        Requests must be read in the order they were made. Stopping early cancels the rest."""
        if self._process is None or request_id < self._first_id_of_child:
            raise NodeUnavailable("the block fetcher process exited before answering; blocks are fetched again "
                                  "on the next run")
        finished = False
        try:
            while True:
                answered, kind, payload = self._receive()
                if answered < request_id:
                    continue  # left over from a request its caller stopped reading
                if kind == "chunk":
                    yield payload
                    continue
                finished = True
                if kind == "error":
                    raise _rebuild(payload)
                return
        finally:
            if not finished:
                self.cancel(request_id)

    def cancel(self, request_id: int) -> None:
        """Stops a request nobody will read; what it already sent is dropped by the next read."""
        if self._process is None:
            return
        try:
            self._requests.send(("cancel", request_id))
        except (OSError, ValueError):
            pass  # a child that is gone is noticed at the next read, not here (this may run in GC)

    def close(self) -> None:
        if self._process is None:
            return
        try:
            self._requests.send(None)
        except (OSError, ValueError):
            pass
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._forget()

    def _start(self) -> None:
        their_requests, self._requests = self._context.Pipe(duplex=False)
        self._replies, their_replies = self._context.Pipe(duplex=False)
        try:
            fcntl.fcntl(their_replies.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:
            pass  # a smaller pipe only makes the child wait for this process to read
        self._process = self._context.Process(
            target=_child_main, args=(self.rpc_options, self.chunk, their_requests, their_replies),
            name="bitcoin-block-fetcher", daemon=True)
        self._process.start()
        their_requests.close()
        their_replies.close()

    def _send(self, message) -> None:
        try:
            self._requests.send(message)
        except (OSError, ValueError):
            self._lost("exited")

    def _receive(self):
        try:
            if self._replies.poll(self.deadline_s):
                return self._replies.recv()
        except (OSError, EOFError):
            self._lost("exited")
        self._lost(f"did not answer within {self.deadline_s:.0f} s")

    def _lost(self, what: str):
        process = self._process
        log.error("bitcoin block fetcher process %s %s; the next request starts a new one", process.pid, what)
        process.kill()
        process.join()
        self._forget()
        raise NodeUnavailable(f"the block fetcher process {what}; blocks are fetched again on the next run")

    def _forget(self) -> None:
        for conn in (self._requests, self._replies):
            conn.close()
        self._process = self._requests = self._replies = None


_ERRORS = {cls.__name__: cls for cls in (BlockNotFound, NodeUnavailable, NodeError)}


def _describe(exc: ChainError) -> tuple[str, tuple]:
    """The error as plain values: exceptions with their own __init__ don't unpickle."""
    if isinstance(exc, RpcError):
        return "RpcError", (exc.method, exc.code, exc.message)
    return (type(exc).__name__ if type(exc).__name__ in _ERRORS else "NodeError"), (str(exc),)


def _rebuild(description: tuple[str, tuple]) -> ChainError:
    name, args = description
    if name == "RpcError":
        return RpcError(*args)
    return _ERRORS[name](*args)


def _child_main(rpc_options: dict, chunk: int, requests, replies) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop: it sends None
    try:
        _serve(BitcoinRPC(**rpc_options), chunk, requests, replies)
    except (EOFError, BrokenPipeError):
        pass  # the parent is gone (killed, say): so is the point of going on


def _serve(rpc: BitcoinRPC, chunk: int, requests, replies) -> None:
    queued: collections.deque = collections.deque()
    cancelled: set[int] = set()

    def read(wait: bool) -> bool:
        """Takes in what the parent sent; False once it says stop."""
        while wait or requests.poll():
            wait = False
            message = requests.recv()
            if message is None:
                return False
            if message[0] == "cancel":
                cancelled.add(message[1])
            else:
                queued.append(message)
        return True

    while read(wait=not queued):
        if not queued:
            continue
        _, request_id, start, count = queued.popleft()
        cancelled.difference_update([c for c in cancelled if c < request_id])
        if request_id in cancelled:
            continue
        try:
            hashes = block_hashes(rpc, start, count)
            for offset in range(0, len(hashes), chunk):
                replies.send((request_id, "chunk", raw_blocks(rpc, hashes[offset:offset + chunk])))
                if not read(wait=False):
                    return
                if request_id in cancelled:
                    break
        except ChainError as exc:  # the node's answer, for the caller to act on
            replies.send((request_id, "error", _describe(exc)))
            continue
        replies.send((request_id, "end", None))
