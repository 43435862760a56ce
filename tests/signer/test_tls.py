"""The signer served over mutual TLS on loopback, end to end through `custody signer serve`:
only its configured clients get in (a certificate from its CA and a listed bearer token)."""
from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest

from hsm.client import SignerClient
from tests.support import signer as S
from tests.support.signer import to_toml
from tests.support.tls import make_pki
from tests.support.ports import free_port



@pytest.fixture
def pki(tmp_path):
    (tmp_path / "pki").mkdir()
    (tmp_path / "other-pki").mkdir()
    return make_pki(tmp_path / "pki"), make_pki(tmp_path / "other-pki")


@pytest.fixture
def served(tmp_path, pki):
    ours, _ = pki
    S.make_keystore(tmp_path)
    raw = S.raw_config(tmp_path)
    raw["server"] = {"listen": f"127.0.0.1:{free_port()}", "tls_cert": str(ours["server_crt"]),
                     "tls_key": str(ours["server_key"]), "tls_client_ca": str(ours["ca"])}
    process = S.SignerProcess(tmp_path, raw, client_tls=client_tls(ours))
    yield process
    process.stop()


def client_tls(pki, with_cert: bool = True) -> dict:
    tls = {"root_cert": pki["ca"].read_bytes()}
    if with_cert:
        tls.update(client_cert=pki["client_crt"].read_bytes(), client_key=pki["client_key"].read_bytes())
    return tls


def test_configured_client_signs_over_mutual_tls(served, tmp_path):
    """The right certificate and token: keys are listed and a PSBT is signed, over TCP with TLS."""
    client = served.client
    assert [k.key_id for k in client.list_keys()] == [S.HOT]
    pub = client.public_key(S.HOT, S.HOT_BTC_PATH).public_key
    ours = S.p2wpkh_script(pub)
    payload = S.make_psbt([("11" * 32, 0, S.BTC, ours)], [(S.foreign_script(), 10_000), (ours, S.BTC - 12_000)])
    result = client.sign("bitcoin", payload, [(S.HOT, S.HOT_BTC_PATH)])
    assert result.signed and result.fee == 2_000 and result.audit_sequence == 2


def test_client_certificate_from_another_ca_is_refused(served, pki):
    assert served.client.list_keys()  # the configured client gets in, at the same time
    _, other = pki
    client = SignerClient(served.target, S.CLIENT_TOKEN, timeout_s=10,
                          root_cert=pki[0]["ca"].read_bytes(), client_cert=other["client_crt"].read_bytes(),
                          client_key=other["client_key"].read_bytes())
    with pytest.raises(grpc.RpcError) as exc:
        client.list_keys()
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails
    client.close()


def test_client_without_a_certificate_is_refused(served, pki):
    assert served.client.list_keys()  # the configured client gets in, at the same time
    client = SignerClient(served.target, S.CLIENT_TOKEN, timeout_s=10, **client_tls(pki[0], with_cert=False))
    with pytest.raises(grpc.RpcError) as exc:
        client.list_keys()
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    client.close()


def test_right_certificate_with_an_unknown_token_is_refused(served, pki):
    assert served.client.list_keys()  # the configured client gets in, at the same time
    client = SignerClient(served.target, "not-the-token", timeout_s=10, **client_tls(pki[0]))
    with pytest.raises(grpc.RpcError) as exc:
        client.sign("bitcoin", b"psbt\xff", [(S.HOT, S.HOT_BTC_PATH)])
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    client.close()


def test_plaintext_client_is_refused(served):
    assert served.client.list_keys()  # the configured client gets in, at the same time
    channel = grpc.insecure_channel(served.target)
    from hsm.v1 import signer_pb2, signer_pb2_grpc

    with pytest.raises(grpc.RpcError) as exc:
        signer_pb2_grpc.SignerServiceStub(channel).ListKeys(
            signer_pb2.ListKeysRequest(), metadata=[("authorization", f"Bearer {S.CLIENT_TOKEN}")], timeout=10)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_server_certificate_from_another_ca_is_not_trusted_by_the_client(served, pki):
    """The client checks the signer too: a server it has no CA for is not talked to."""
    assert served.client.list_keys()  # the configured client gets in, at the same time
    _, other = pki
    client = SignerClient(served.target, S.CLIENT_TOKEN, timeout_s=10, **client_tls(other))
    with pytest.raises(grpc.RpcError) as exc:
        client.list_keys()
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    client.close()


def test_a_second_signer_on_the_same_port_is_refused(served, tmp_path, pki):
    """gRPC binds with SO_REUSEPORT by default: a second signer (its own keystore and state) on the
    same port started without a word and the kernel shared the core's calls between the two."""
    other = tmp_path / "second"
    other.mkdir()
    S.make_keystore(other)
    raw = S.raw_config(other)
    ours, _ = pki
    raw["server"] = {"listen": served.target, "tls_cert": str(ours["server_crt"]),
                     "tls_key": str(ours["server_key"]), "tls_client_ca": str(ours["ca"])}
    (other / "signer.toml").write_text(to_toml(raw))
    second = subprocess.run([sys.executable, "-m", "custody.cli", "signer", "serve",
                             "--config", str(other / "signer.toml")],
                            env={**os.environ, "TEST_SIGNER_PASS": S.PASSPHRASE},
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 1, second.stdout + second.stderr
    assert f"cannot listen on {served.target}: the port is in use" in second.stderr
    assert "Traceback" not in second.stderr
    assert served.client.list_keys()  # the first one still serves


def test_the_signers_files_are_readable_by_its_owner_only(served, tmp_path):
    """The audit log and limits_db hold every decision, address and amount; they were 0644."""
    assert served.client.list_keys()
    for made in (tmp_path / "audit.log", tmp_path / "limits.sqlite"):
        assert made.stat().st_mode & 0o077 == 0, made
