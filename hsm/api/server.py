"""`custody signer serve`: SignerService on a Unix socket or TLS on loopback."""
from __future__ import annotations

import concurrent.futures
import os
import pathlib
import signal
import stat
import threading

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hsm.api.auth import TokenAuth
from hsm.api.servicer import SignerServicer
from hsm.config import Config
from hsm.errors import ConfigError
from hsm.service import Signer
from hsm.v1 import signer_pb2_grpc


class SignerServer:
    def __init__(self, config: Config, signer: Signer):
        self.config = config
        self.signer = signer
        auth = TokenAuth(config.clients)
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="signer"),
                                  interceptors=[auth], options=[("grpc.max_receive_message_length", 4 << 20),
                                                                ("grpc.so_reuseport", 0)])  # no silent sharing of a port
        signer_pb2_grpc.add_SignerServiceServicer_to_server(SignerServicer(signer, auth), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        try:
            self.port = self._bind()
        except RuntimeError:  # grpc's only word for it: "Failed to bind"
            raise OSError(f"cannot listen on {config.server.listen}: the port is in use or the address "
                          "is not this host's ([server] listen)") from None

    def _bind(self) -> int:
        srv = self.config.server
        if srv.listen.startswith("unix:"):
            sock = pathlib.Path(srv.listen.removeprefix("unix:"))
            _remove_old_socket(sock)
            old = os.umask(0o077)  # the socket is only for this user (and root)
            try:
                return self.server.add_insecure_port(srv.listen)
            finally:
                os.umask(old)
        ca = srv.tls_client_ca.read_bytes() if srv.tls_client_ca else None
        creds = grpc.ssl_server_credentials([(srv.tls_key.read_bytes(), srv.tls_cert.read_bytes())],
                                            root_certificates=ca, require_client_auth=ca is not None)
        return self.server.add_secure_port(srv.listen, creds)

    def start(self) -> None:
        self.server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float = 2.0) -> None:
        self.server.stop(grace_s).wait()
        self.signer.close()


def _remove_old_socket(sock: pathlib.Path) -> None:
    """A socket left by an earlier run must go before binding; anything else there is a slip in [server] listen
    (pointed at keystore.json, it deleted the encrypted seeds), so it is left alone and the signer stops."""
    try:
        mode = os.lstat(sock).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"server.listen: {sock} exists and is not a socket; the signer removes only an old "
                          "socket there: choose another path")
    sock.unlink()


def serve(config: Config, signer: Signer) -> None:
    server = SignerServer(config, signer)
    server.start()
    print(f"signer listening on {config.server.listen}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    # Python runs a signal's handler in the main thread, when that thread next
    # runs. The kernel may hand SIGTERM to one of gRPC's threads instead, and
    # a wait without a timeout is then never woken: the signer ignored
    # SIGTERM (seen in CI). So the main thread wakes twice a second.
    while not done.wait(0.5):
        pass
    server.stop()
