"""Only the clients listed in signer.toml get in: bearer tokens checked by SHA-256.

Like the core's auth (custody/api/auth.py), the config holds only digests.
With mutual TLS configured, the transport also refuses clients without a
certificate from the configured CA before any of this runs.
"""
from __future__ import annotations

import hashlib
import hmac

import grpc

from hsm.config import ClientConfig

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenAuth(grpc.ServerInterceptor):
    def __init__(self, clients: tuple[ClientConfig, ...]):
        self._clients = clients

    def client_for(self, metadata) -> str | None:
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                digest = token_digest(value[len("Bearer "):])
                for c in self._clients:
                    if hmac.compare_digest(c.token_sha256, digest):
                        return c.name
        return None

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        client = self.client_for(details.invocation_metadata)
        if client is None:
            def refuse(request, context):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token")
            return grpc.unary_unary_rpc_method_handler(
                refuse, handler.request_deserializer, handler.response_serializer)
        return handler
