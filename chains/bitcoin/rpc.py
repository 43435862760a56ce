"""The one client through which the Bitcoin plugin talks to its node.

python-bitcoinrpc does the JSON-RPC; this wraps it once with timeouts,
retries with exponential backoff, and error translation, so nothing else in
the plugin or the scanner deals with sockets. A call that still fails after
its retries raises NodeUnavailable; the caller (the scanner) keeps its cursor
and tries again on its next run: a node outage delays scanning, it never
skips a block.
"""
from __future__ import annotations

import http.client
import logging
import socket
import time
from typing import Callable

from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException

from chains.base import NodeError, NodeUnavailable

log = logging.getLogger(__name__)

# Bitcoin Core answers -28 while it starts (loading blocks, verifying): wait.
_WARMING_UP = -28
_TRANSPORT_ERRORS = (OSError, socket.timeout, http.client.HTTPException)


class RpcError(NodeError):
    """The node refused a call; code and message are the node's."""

    def __init__(self, method: str, code: int | None, message: str):
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message


class BitcoinRPC:
    def __init__(self, url: str, *, timeout_s: float = 30.0, retries: int = 5, backoff_s: float = 0.25,
                 max_backoff_s: float = 8.0, sleep: Callable[[float], None] = time.sleep):
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.sleep = sleep
        self._proxy: AuthServiceProxy | None = None

    def call(self, method: str, *params):
        return self._with_retries(method, lambda proxy: getattr(proxy, method)(*params))

    def batch(self, calls: list[tuple]) -> list:
        """Several calls in one HTTP request; results in the order of calls."""
        if not calls:
            return []
        method = f"batch of {len(calls)} {calls[0][0]}"
        results = self._with_retries(method, lambda proxy: proxy.batch_([list(c) for c in calls]))
        if len(results) != len(calls):
            raise NodeError(f"{method}: {len(results)} results for {len(calls)} calls")
        return results

    def close(self) -> None:
        self._proxy = None

    def _with_retries(self, method: str, do):
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return do(self._connection())
            except JSONRPCException as exc:
                code = getattr(exc, "code", None)
                if code == _WARMING_UP and attempt < self.retries:
                    problem = f"node warming up: {exc.message}"
                elif code in (-342, -343):  # python-bitcoinrpc: not JSON (e.g. 401), no result
                    self._proxy = None
                    raise NodeError(f"{method}: {exc.message}") from None
                else:
                    raise RpcError(method, code, str(getattr(exc, "message", exc))) from None
            except _TRANSPORT_ERRORS as exc:
                self._proxy = None  # the connection is unusable after a transport error
                problem = f"{type(exc).__name__}: {exc}"
            if attempt == self.retries:
                raise NodeUnavailable(f"{method}: node at {self._safe_url()} unreachable after "
                                      f"{self.retries + 1} attempts: {problem}")
            log.warning("bitcoin node call failed, retrying", extra={
                "method": method, "attempt": attempt + 1, "retry_in_s": delay, "problem": problem})
            self.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")

    def _connection(self) -> AuthServiceProxy:
        if self._proxy is None:
            self._proxy = AuthServiceProxy(self.url, timeout=self.timeout_s)
        return self._proxy

    def _safe_url(self) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port}"
