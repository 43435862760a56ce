"""The one client through which the Bitcoin plugin talks to its node.

python-bitcoinrpc does the single JSON-RPC calls (batches are posted here,
see _post_batch for why); this wraps them once with timeouts,
retries with exponential backoff, and error translation, so nothing else in
the plugin or the scanner deals with sockets. A call that still fails after
its retries raises NodeUnavailable; the caller (the scanner) keeps its cursor
and tries again on its next run: a node outage delays scanning, it never
skips a block.
"""
from __future__ import annotations

import base64
import decimal
import http.client
import json
import logging
import re
import socket
import time
from typing import Callable
from urllib.parse import unquote, urlsplit

from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException

from chains.base import NodeError, NodeUnavailable

log = logging.getLogger(__name__)

# Bitcoin Core answers -28 while it starts (loading blocks, verifying): wait.
_WARMING_UP = -28
_TRANSPORT_ERRORS = (OSError, socket.timeout, http.client.HTTPException)
_SERVER_BUSY = re.compile(r"'5\d\d ")  # in python-bitcoinrpc's "non-JSON HTTP response with '503 ...'"


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
        self._batch_conn: http.client.HTTPConnection | None = None

    def call(self, method: str, *params):
        return self._with_retries(method, lambda proxy: getattr(proxy, method)(*params))

    def batch(self, calls: list[tuple]) -> list:
        """Several calls in one HTTP request; results in the order of calls."""
        if not calls:
            return []
        method = f"batch of {len(calls)} {calls[0][0]}"
        return self._with_retries(method, lambda _proxy: self._post_batch(method, calls))

    def _post_batch(self, method: str, calls: list[tuple]) -> list:
        # Hand-written because python-bitcoinrpc's batch_ sends JSON-RPC 2.0 and reads response["error"],
        # which Bitcoin Core 28+ leaves out of a successful 2.0 answer (KeyError on every batch), and
        # pairs answers with calls by position, which JSON-RPC does not promise. Here the calls go
        # as JSON-RPC 1.x, like the library's single calls, and answers are matched by id.
        body = json.dumps([{"version": "1.1", "method": call[0], "params": list(call[1:]), "id": i}
                           for i, call in enumerate(calls, start=1)])
        conn = self._batch_connection()
        try:
            conn.request("POST", self._path, body, self._headers)
            response = conn.getresponse()
            data = response.read()
        except BaseException:
            self._batch_conn = None  # the connection is unusable after a transport error
            raise
        if not (response.getheader("Content-Type") or "").startswith("application/json"):
            raise JSONRPCException({"code": -342, "message": f"non-JSON HTTP response with '{response.status} "
                                                             f"{response.reason}' from server"})
        try:
            answers = json.loads(data, parse_float=decimal.Decimal)
        except ValueError:
            raise NodeError(f"{method}: the node's answer is not JSON") from None
        if isinstance(answers, dict) and answers.get("error") is not None:
            raise JSONRPCException(answers["error"])  # the batch as a whole was refused
        if not isinstance(answers, list):
            raise NodeError(f"{method}: the node did not answer with a list")
        by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
        results = []
        for i in range(1, len(calls) + 1):
            answer = by_id.get(i)
            if answer is None:
                raise NodeError(f"{method}: {len(answers)} answers for {len(calls)} calls, none for call {i}")
            if answer.get("error") is not None:
                raise JSONRPCException(answer["error"])
            if "result" not in answer:
                raise JSONRPCException({"code": -343, "message": "missing JSON-RPC result"})
            results.append(answer["result"])
        return results

    def _batch_connection(self) -> http.client.HTTPConnection:
        if self._batch_conn is None:
            parts = urlsplit(self.url)
            self._path = parts.path or "/"
            self._headers = {"Content-Type": "application/json"}
            if parts.username is not None:
                secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
                self._headers["Authorization"] = "Basic " + base64.b64encode(secret).decode()
            kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            self._batch_conn = kind(parts.hostname, parts.port, timeout=self.timeout_s)
        return self._batch_conn

    def close(self) -> None:
        self._proxy = None
        if self._batch_conn is not None:
            self._batch_conn.close()
            self._batch_conn = None

    def _with_retries(self, method: str, do):
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return do(self._connection())
            except JSONRPCException as exc:
                code = getattr(exc, "code", None)
                if code == _WARMING_UP and attempt < self.retries:
                    problem = f"node warming up: {exc.message}"
                elif code == -342 and _SERVER_BUSY.search(str(exc.message)):
                    # Not JSON, a 5xx: a busy node's 503 ("work queue depth exceeded") or a proxy's 502.
                    # Retried like a transport error, NodeUnavailable if it lasts (below).
                    self._proxy = self._batch_conn = None
                    problem = exc.message
                elif code in (-342, -343):  # not JSON otherwise (a 401: wrong credentials), no result
                    self._proxy = self._batch_conn = None
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
