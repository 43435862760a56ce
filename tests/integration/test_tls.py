"""TLS and mutual TLS on the real server."""
import grpc
import pytest

from custody.api.server import CannotListen
from custody.app import Custody
from custody.v1 import custody_pb2 as pb
from tests.support.config import make_config
from tests.support.servers import Clients, ServerThread, bearer
from tests.support.tls import make_pki


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


def run(db_url, **tls):
    config = make_config(db_url, **{k: str(v) for k, v in tls.items()})
    app = Custody(config)
    return app, ServerThread(config, app)


def list_assets(clients):
    return clients.custody.ListAssets(pb.ListAssetsRequest(), metadata=bearer("exchange"), timeout=5)


def test_tls_server_serves_tls_clients_only(db_url, pki):
    app, server = run(db_url, tls_cert=pki["server_crt"], tls_key=pki["server_key"])
    try:
        good = Clients(server.address, grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes()))
        assert len(list_assets(good).assets) == 3
        good.close()
        plain = Clients(server.address)
        with pytest.raises(grpc.RpcError) as err:
            list_assets(plain)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        plain.close()
    finally:
        server.stop()
        app.close()


def test_mutual_tls_requires_a_client_certificate(db_url, pki):
    app, server = run(db_url, tls_cert=pki["server_crt"], tls_key=pki["server_key"], tls_client_ca=pki["ca"])
    try:
        ca = pki["ca"].read_bytes()
        with_cert = Clients(server.address, grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=pki["client_key"].read_bytes(),
            certificate_chain=pki["client_crt"].read_bytes()))
        assert len(list_assets(with_cert).assets) == 3
        with_cert.close()
        without = Clients(server.address, grpc.ssl_channel_credentials(root_certificates=ca))
        with pytest.raises(grpc.RpcError) as err:
            list_assets(without)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        without.close()
    finally:
        server.stop()
        app.close()


def test_tls_still_needs_a_token(db_url, pki):
    app, server = run(db_url, tls_cert=pki["server_crt"], tls_key=pki["server_key"])
    try:
        c = Clients(server.address, grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes()))
        with pytest.raises(grpc.RpcError) as err:
            c.custody.ListAssets(pb.ListAssetsRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        c.close()
    finally:
        server.stop()
        app.close()


@pytest.mark.parametrize("field, content", [
    ("tls_client_ca", b""),
    ("tls_client_ca", b"not a certificate\n"),
    ("tls_cert", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
    ("tls_key", b"garbage"),
])
def test_a_tls_file_that_is_not_pem_is_named_at_start_not_taken_for_a_busy_port(db_url, pki, tmp_path, field,
                                                                               content):
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    files = {"tls_cert": pki["server_crt"], "tls_key": pki["server_key"], "tls_client_ca": pki["ca"], field: bad}
    config = make_config(db_url, **{k: str(v) for k, v in files.items()})
    app = Custody(config)
    try:
        with pytest.raises(CannotListen) as err:
            ServerThread(config, app)
        assert f"[server] {field} = {str(bad)!r}: not a usable PEM file" in str(err.value)
        assert "in use" not in str(err.value)
    finally:
        app.close()
