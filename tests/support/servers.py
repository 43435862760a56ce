"""A real gRPC server on a free loopback port, run on a background thread."""
from __future__ import annotations

import asyncio
import threading

import grpc

from custody.api.server import Server
from custody.app import Custody
from custody.config import Config
from custody.v1 import backoffice_pb2_grpc, custody_pb2_grpc, matching_pb2_grpc

# Tokens the test config accepts; the config holds only their SHA-256.
TOKENS = {
    "exchange": "token-exchange",
    "reviewer": "token-reviewer",
    "alice-admin": "token-alice-admin",
    "nobody": "token-nobody",
    "wallet-service": "token-wallet-service",
    "alice": "token-alice",
    "bob": "token-bob",
    "carol": "token-carol",
}
SCOPES = {
    "exchange": ["accounts"],
    "reviewer": ["review"],
    "alice-admin": ["admin"],
    "nobody": [],
    "wallet-service": ["withdraw", "accounts"],
    "alice": ["review"],
    "bob": ["review"],
    "carol": ["review", "withdraw"],  # staff who also requests: four-eyes tests
}


class ServerThread:
    def __init__(self, config: Config, app: Custody | None = None):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-server", daemon=True)
        self._thread.start()
        self.server: Server = self._call(self._start(config, app))
        self.port = self.server.port
        self.address = f"127.0.0.1:{self.port}"

    async def _start(self, config, app):
        server = Server(config, app)
        await server.start()
        return server

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def stop(self) -> None:
        self._call(self.server.stop(0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def bearer(client: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {TOKENS[client]}")]


class Clients:
    """Stubs on one channel; `md(client)` gives call metadata for a test identity."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None = None, options=()):
        self.channel = (grpc.secure_channel(address, credentials, options=options) if credentials
                        else grpc.insecure_channel(address))
        self.custody = custody_pb2_grpc.CustodyServiceStub(self.channel)
        self.backoffice = backoffice_pb2_grpc.BackofficeServiceStub(self.channel)
        self.matching = matching_pb2_grpc.MatchingServiceStub(self.channel)

    @staticmethod
    def md(client: str = "exchange"):
        return bearer(client)

    def close(self):
        self.channel.close()
