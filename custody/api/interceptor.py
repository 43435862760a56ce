"""The one place where calls are authenticated and domain errors become gRPC statuses."""
from __future__ import annotations

import grpc
import structlog
from sqlalchemy.exc import InterfaceError, OperationalError

from custody import errors
from custody.api.auth import OPEN_PREFIXES, Authenticator, set_current_client

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
    log.error("unhandled error", method=method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")


class CustodyInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each method's handler once (handlers are fixed when the server starts);
    the wrapper authorizes every call from its own metadata."""

    def __init__(self, authenticator: Authenticator):
        self.authenticator = authenticator
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

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                client, status, message = authorize(method, context.invocation_metadata())
                if client is None:
                    await context.abort(status, message)
                set_current_client(client)
                try:
                    return await inner(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort_for(exc, context, method)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer)

        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                client, status, message = authorize(method, context.invocation_metadata())
                if client is None:
                    await context.abort(status, message)
                set_current_client(client)
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort_for(exc, context, method)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer)

        # Streaming-request methods: none of ours (reflection is open), but never let one through unchecked.
        async def refuse(request, context):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} needs a scope no client can have")

        if method.startswith(OPEN_PREFIXES):
            return handler
        return grpc.unary_unary_rpc_method_handler(refuse)
