"""The one place where calls are authenticated and domain errors become gRPC statuses."""
from __future__ import annotations

import inspect

import grpc
import structlog
from google.protobuf.message import DecodeError
from sqlalchemy.exc import InterfaceError, OperationalError

from chains.base import ChainError, NodeUnavailable
from custody import errors
from custody.api.auth import ANY_SCOPE_PREFIXES, Authenticator, set_current_client

log = structlog.get_logger("custody.api")

STATUS_FOR = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.IdempotencyConflict, grpc.StatusCode.ALREADY_EXISTS),
    (errors.LimitExceeded, grpc.StatusCode.OUT_OF_RANGE),
    (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_for(exc: errors.CustodyError) -> grpc.StatusCode:
    for kind, code in STATUS_FOR:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def _abort_for(exc: Exception, context, method: str):
    if isinstance(exc, errors.CustodyError):
        await context.abort(status_for(exc), str(exc))
    if isinstance(exc, (OperationalError, InterfaceError)):  # the database went away, a deadlock: not a bug
        log.warning("database unavailable", method=method, reason=errors.driver_reason(exc))
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(errors.DatabaseUnavailable()))
    # A call that asks a chain node (staff settling a batch): the node's state, not a bug. The
    # details (node address, its own words) go to the log only.
    if isinstance(exc, NodeUnavailable):
        log.warning("chain node unavailable", method=method, reason=str(exc))
        await context.abort(grpc.StatusCode.UNAVAILABLE, "a chain node is unreachable; retry later")
    if isinstance(exc, ChainError):
        log.warning("chain node error", method=method, reason=str(exc))
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            "the chain node could not answer this; see the server log")
    log.error("unhandled error", method=method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")


async def _parsed(raw: bytes, parse, context):
    if parse is None:
        return raw
    try:
        return parse(raw)
    except DecodeError:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid message of this method")


class CustodyInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each method's handler once (handlers are fixed when the server starts);
    the wrapper authorizes every call from its own metadata."""

    def __init__(self, authenticator: Authenticator, max_streams_per_client: int = 100):
        self.authenticator = authenticator
        self.max_streams_per_client = max_streams_per_client
        self._streams: dict[str, int] = {}  # open streams by client; the event loop's thread only
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, details):
        method = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrap(method, await continuation(details))
            if wrapped is not None:  # only served methods: any caller can name any number of others
                self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler):
        if handler is None:
            return None
        authorize = self.authenticator.authorize
        # The wrappers get the request's bytes and parse them once the caller is authorized: parsed
        # by gRPC before, a malformed body (bad UTF-8 in a string field) was UNKNOWN, with the
        # decoder's words and our message names, to any caller, token or not.
        parse = handler.request_deserializer

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(raw, context):
                client, status, message = authorize(method, context.invocation_metadata())
                if client is None:
                    await context.abort(status, message)
                set_current_client(client)
                request = await _parsed(raw, parse, context)
                try:
                    return await inner(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort_for(exc, context, method)

            return grpc.unary_unary_rpc_method_handler(unary_unary, None, handler.response_serializer)

        if handler.unary_stream:
            inner_stream = handler.unary_stream
            if inspect.isasyncgenfunction(inner_stream):
                async def unary_stream(raw, context):
                    client = await self._open_stream(method, context)
                    try:
                        request = await _parsed(raw, parse, context)
                        async for item in inner_stream(request, context):
                            yield item
                    except grpc.aio.AbortError:
                        raise
                    except Exception as exc:
                        await _abort_for(exc, context, method)
                    finally:
                        self._close_stream(client)
            else:  # a coroutine that writes with context.write (grpc's health Watch)
                async def unary_stream(raw, context):
                    client = await self._open_stream(method, context)
                    try:
                        await inner_stream(await _parsed(raw, parse, context), context)
                    finally:
                        self._close_stream(client)

            return grpc.unary_stream_rpc_method_handler(unary_stream, None, handler.response_serializer)

        if handler.stream_stream and method.startswith(ANY_SCOPE_PREFIXES):  # server reflection
            inner_bidi = handler.stream_stream

            async def stream_stream(requests, context):
                client = await self._open_stream(method, context)
                try:
                    async for item in inner_bidi(requests, context):
                        yield item
                finally:
                    self._close_stream(client)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer)

        # Other streaming-request methods: none of ours, but never let one through unchecked.
        async def refuse(request, context):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} needs a scope no client can have")

        return grpc.unary_unary_rpc_method_handler(refuse)

    async def _open_stream(self, method: str, context) -> str:
        """Authorizes a streaming call and takes one of its client's stream slots (callers without a
        token share the slots of "anonymous"): a stream holds a server call slot for as long as it is
        open, and one client's leaked streams could otherwise take all of them."""
        client, status, message = self.authenticator.authorize(method, context.invocation_metadata())
        if client is None:
            await context.abort(status, message)
        if self._streams.get(client, 0) >= self.max_streams_per_client:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"client {client} has {self.max_streams_per_client} streams open, the most "
                                "allowed (server.max_streams_per_client); close one first")
        self._streams[client] = self._streams.get(client, 0) + 1
        set_current_client(client)
        return client

    def _close_stream(self, client: str) -> None:
        self._streams[client] -= 1
