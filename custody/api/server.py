"""`custody serve`: the gRPC server with health, reflection, TLS and token auth."""
from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import signal

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from custody.api.auth import Authenticator
from custody.api.interceptor import CustodyInterceptor
from custody.api.matching_servicer import MatchingServicer
from custody.api.servicers import BackofficeServicer, CustodyServicer
from custody.app import Custody
from custody.config import Config
from custody.errors import CustodyError
from custody.v1 import backoffice_pb2, backoffice_pb2_grpc, custody_pb2, custody_pb2_grpc, matching_pb2, matching_pb2_grpc

log = structlog.get_logger("custody.server")
SERVICES = (
    custody_pb2.DESCRIPTOR.services_by_name["CustodyService"].full_name,
    backoffice_pb2.DESCRIPTOR.services_by_name["BackofficeService"].full_name,
    matching_pb2.DESCRIPTOR.services_by_name["MatchingService"].full_name,
)


class CannotListen(CustodyError):
    pass


class Server:
    """A running server; `port` is the bound port (useful with listen port 0)."""

    def __init__(self, config: Config, app: Custody | None = None, start_jobs: bool = False):
        self.config = config
        # `custody serve` runs the background jobs (scanners) in the server's process.
        self.start_jobs = start_jobs
        self.app = app or Custody(config)
        self._owns_app = app is None
        self.interceptor = CustodyInterceptor(Authenticator(config.clients), config.server.max_streams_per_client)
        self.server = grpc.aio.server(
            interceptors=[self.interceptor],
            # Without so_reuseport 0, a second `custody serve` on the same port
            # binds too and the kernel shares the callers between the two.
            options=[("grpc.max_receive_message_length", 1 << 20), ("grpc.so_reuseport", 0),
                     # A client host gone without closing its connection (power loss, a dropped
                     # network) is found in about 80 s, not TCP's two hours: its streams give back
                     # their slots (max_streams_per_client, max_concurrent_rpcs).
                     ("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000),
                     ("grpc.http2.max_pings_without_data", 0)],
            maximum_concurrent_rpcs=config.server.max_concurrent_rpcs,
        )
        custody_servicer, matching_servicer = CustodyServicer(self.app), MatchingServicer(self.app)
        self._tails = (custody_servicer.events, matching_servicer.market_data)
        custody_pb2_grpc.add_CustodyServiceServicer_to_server(custody_servicer, self.server)
        backoffice_pb2_grpc.add_BackofficeServiceServicer_to_server(BackofficeServicer(self.app), self.server)
        matching_pb2_grpc.add_MatchingServiceServicer_to_server(matching_servicer, self.server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                             reflection.SERVICE_NAME), self.server)
        try:
            self.port = self._bind(config)
        except CannotListen:
            if self._owns_app:
                self.app.close()
            raise

    def _bind(self, config: Config) -> int:
        srv = config.server
        try:
            if srv.tls_cert:
                _check_pem(srv)  # grpc reports a file it can't use as a bind failure: "the port is in use"
                ca = srv.tls_client_ca.read_bytes() if srv.tls_client_ca else None
                creds = grpc.ssl_server_credentials(
                    [(srv.tls_key.read_bytes(), srv.tls_cert.read_bytes())],
                    root_certificates=ca, require_client_auth=ca is not None)
                return self.server.add_secure_port(srv.listen, creds)
            return self.server.add_insecure_port(srv.listen)
        except RuntimeError:  # grpc's only word for it: "Failed to bind"
            raise CannotListen(f"cannot listen on {srv.listen}: the port is in use (another custody serve?) "
                               "or the address is not this host's ([server] listen)") from None

    async def start(self) -> None:
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="custody-io"))
        if self.start_jobs:  # first: a refused job (e.g. a changed chain config) means no server at all
            try:
                self.app.start_jobs()
            except Exception:
                if self._owns_app:
                    self.app.close()
                raise
        await self.server.start()
        for name in ("", *SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("listening", address=self.config.server.listen, port=self.port,
                 tls=bool(self.config.server.tls_cert), mutual_tls=bool(self.config.server.tls_client_ca))

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        for tail in self._tails:
            await tail.stop()
        if self._owns_app:
            # Off the event loop: closing waits for the ledger writer child, which may be reading the
            # rest of a message that only this loop can write (it hung there until SIGKILL).
            await asyncio.to_thread(self.app.close)
        log.info("stopped")


def _check_pem(srv) -> None:
    files = [("tls_cert", srv.tls_cert, x509.load_pem_x509_certificates),
             ("tls_key", srv.tls_key, lambda data: serialization.load_pem_private_key(data, password=None)),
             ("tls_client_ca", srv.tls_client_ca, x509.load_pem_x509_certificates)]
    for name, path, load in files:
        if path is None:
            continue
        try:
            load(path.read_bytes())
        except OSError as exc:
            raise CannotListen(f"[server] {name} = {str(path)!r}: cannot read it ({exc.strerror})") from None
        except (ValueError, TypeError) as exc:
            raise CannotListen(f"[server] {name} = {str(path)!r}: not a usable PEM file ({exc})") from None


def freeze_startup_objects() -> None:
    """Moves every object alive after start-up out of the cyclic collector's reach.

    The modules, descriptors and pools loaded at start-up are about a million
    objects that live as long as the process; each full collection walked all
    of them: 27 ms, about once a second under load, during which every call in
    flight waited (at 64 in flight, Transfer's p99 latency went from 23 to
    46 ms). Start-up garbage is collected first, so none of it is kept."""
    gc.collect()
    gc.freeze()


async def serve(config: Config) -> None:
    server = Server(config, start_jobs=True)
    await server.start()
    freeze_startup_objects()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
