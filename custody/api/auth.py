"""Bearer tokens with scopes.

Clients send `authorization: Bearer <token>`; the config lists each client's
name, the SHA-256 of its token and its scopes. The server never stores tokens.
Every method needs exactly one scope. The health service is open, for load
balancers; server reflection needs a valid token of any scope (open, anyone
could hold its streams open and take the server's call slots).
"""
from __future__ import annotations

import contextvars
import hashlib

import grpc

from custody.config import ClientConfig

REQUIRED_SCOPE = {
    "/custody.v1.CustodyService/CreateAccount": "accounts",
    "/custody.v1.CustodyService/GetBalances": "accounts",
    "/custody.v1.CustodyService/Transfer": "accounts",
    "/custody.v1.CustodyService/ListAssets": "accounts",
    "/custody.v1.CustodyService/StreamEvents": "accounts",
    "/custody.v1.CustodyService/GetDepositAddress": "accounts",
    "/custody.v1.CustodyService/ListDeposits": "accounts",
    "/custody.v1.CustodyService/RequestWithdrawal": "withdraw",
    "/custody.v1.CustodyService/GetWithdrawal": "withdraw",
    "/custody.v1.CustodyService/ListWithdrawals": "withdraw",
    "/custody.v1.CustodyService/CancelWithdrawal": "withdraw",
    "/custody.v1.BackofficeService/AdjustBalance": "admin",
    "/custody.v1.BackofficeService/ListWithdrawals": "review",
    "/custody.v1.BackofficeService/ApproveWithdrawal": "review",
    "/custody.v1.BackofficeService/RejectWithdrawal": "review",
    "/custody.v1.BackofficeService/ListWithdrawalBatches": "review",
    "/custody.v1.BackofficeService/ResolveWithdrawalBatch": "admin",
    "/custody.v1.BackofficeService/SetAccountFrozen": "admin",
    "/custody.v1.MatchingService/ListMarkets": "accounts",
    "/custody.v1.MatchingService/PlaceOrder": "accounts",
    "/custody.v1.MatchingService/CancelOrder": "accounts",
    "/custody.v1.MatchingService/GetOrder": "accounts",
    "/custody.v1.MatchingService/GetOrderBook": "accounts",
    "/custody.v1.MatchingService/ListTrades": "accounts",
    "/custody.v1.MatchingService/StreamMarketData": "accounts",
}
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
ANY_SCOPE_PREFIXES = ("/grpc.reflection.",)

_client: contextvars.ContextVar[str] = contextvars.ContextVar("custody_client")


def current_client() -> str:
    """The authenticated client (or staff member) of the call being served."""
    return _client.get()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    def __init__(self, clients: tuple[ClientConfig, ...]):
        self._by_digest = {c.token_sha256: c for c in clients}
        # Tokens already seen to be valid -> their client, so a token's digest is
        # computed once rather than on every call. Only valid tokens enter, so
        # this holds at most one entry per configured client.
        self._by_token: dict[str, ClientConfig] = {}

    def authorize(self, method: str, metadata) -> tuple[str | None, grpc.StatusCode | None, str]:
        """Returns (client name, None, "") or (None, status, message)."""
        if method.startswith(OPEN_PREFIXES):
            return "anonymous", None, ""
        token = None
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value[len("Bearer "):]
        if not token:
            return None, grpc.StatusCode.UNAUTHENTICATED, "missing bearer token"
        client = self._by_token.get(token)
        if client is None:
            client = self._by_digest.get(token_digest(token))
            if client is None:
                return None, grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token"
            self._by_token[token] = client
        if method.startswith(ANY_SCOPE_PREFIXES):
            return client.name, None, ""
        scope = REQUIRED_SCOPE.get(method)
        if scope is None or scope not in client.scopes:
            return None, grpc.StatusCode.PERMISSION_DENIED, f"client {client.name} lacks scope {scope or 'for ' + method}"
        return client.name, None, ""


def set_current_client(name: str) -> contextvars.Token:
    return _client.set(name)
