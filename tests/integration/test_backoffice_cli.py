"""`python -m backoffice.cli`: list with facts, approve with the staff key, reject with a reason,
against the real gRPC server."""
from __future__ import annotations

import io
import pathlib

import pytest
from cryptography.hazmat.primitives import serialization

from backoffice.cli import main
from custody.app import Custody
from tests.support.servers import TOKENS, ServerThread
from tests.support.signer import STAFF
from tests.support.withdrawals import BTC, PAYEE, fund, withdrawal_config


@pytest.fixture
def served(db_url):
    app = Custody(withdrawal_config(db_url))
    server = ServerThread(app.config, app)
    yield app, server.address
    server.stop()
    app.close()


def key_file(tmp_path, name, pem=False):
    key = STAFF[name]
    path = tmp_path / f"{name}.key"
    if pem:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    else:
        path.write_text(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption()).hex())
    return str(path)


def run(address, staff, monkeypatch, *args, answer="y"):
    monkeypatch.setenv("CUSTODY_STAFF_TOKEN", TOKENS[staff])
    out = io.StringIO()
    code = main(["--server", address, *args], out=out, confirm=lambda _: answer)
    return code, out.getvalue()


def test_list_approve_reject(served, tmp_path, monkeypatch, capsys):
    app, address = served
    acct = app.create_account("user").account_id
    fund(app, acct, 5 * BTC)
    two = app.withdrawals.request("wallet-service", "two", str(acct), "BTC", PAYEE, str(2 * BTC))[0]["id"]
    bad = app.withdrawals.request("wallet-service", "bad", str(acct), "BTC", PAYEE, str(BTC // 2))[0]["id"]
    code, out = run(address, "alice", monkeypatch, "list")
    assert code == 0 and "2 pending" in out and two in out and "approvals 0/2" in out
    # Coins as well as base units: "200000000 BTC" read as two hundred million bitcoin.
    assert f"2.00000000 BTC (200000000 base units; + fee 0.00001000) -> {PAYEE}" in out
    assert "credited deposits (0.00000000 BTC)" in out and "max 10.00000000;" in out

    # Declined at the prompt: nothing sent.
    code, out = run(address, "alice", monkeypatch, "approve", two, "--key", key_file(tmp_path, "alice"), answer="n")
    assert code == 1 and "not approved" in out
    assert app.withdrawals.get(two)[0]["status"] == "PENDING_REVIEW"
    # The wrong key for the staff member: refused by the server, nothing changes.
    code, _ = run(address, "alice", monkeypatch, "approve", two, "--key", key_file(tmp_path, "bob"), "--yes")
    assert code == 1 and "INVALID_ARGUMENT" in capsys.readouterr().err
    # Two approvals, one with a PEM key file.
    code, out = run(address, "alice", monkeypatch, "approve", two, "--key", key_file(tmp_path, "alice"))
    assert code == 0 and f"{two} PENDING_REVIEW" in out
    code, out = run(address, "bob", monkeypatch, "approve", two, "--key", key_file(tmp_path, "bob", pem=True), "--yes")
    assert code == 0 and f"{two} APPROVED: approved by alice, bob" in out

    code, out = run(address, "bob", monkeypatch, "reject", bad, "--reason", "destination on a sanctions list")
    assert code == 0 and "REJECTED: destination on a sanctions list" in out
    _, (b, *_) = app.get_balances(str(acct))
    assert b.held == 2 * BTC + 1_000  # only the approved one is still held
    code, out = run(address, "bob", monkeypatch, "list")
    assert "0 pending" in out
    # A reason is required.
    code, _ = run(address, "bob", monkeypatch, "reject", two, "--reason", "")
    assert code == 1 and "INVALID_ARGUMENT" in capsys.readouterr().err


def test_no_token_and_no_review_scope(served, monkeypatch, capsys):
    _, address = served
    monkeypatch.delenv("CUSTODY_STAFF_TOKEN", raising=False)
    assert main(["--server", address, "list"], out=io.StringIO()) == 2
    code, _ = run(address, "exchange", monkeypatch, "list")
    assert code == 1 and "PERMISSION_DENIED" in capsys.readouterr().err


def test_a_timeout_that_is_no_number_of_seconds_or_a_token_that_is_no_token_is_a_bad_argument(
        served, monkeypatch, capsys):
    """nan and inf passed the '> 0' check and every call then failed DEADLINE_EXCEEDED; a token with a
    newline or non-ASCII text failed INTERNAL with gRPC's own log: exit 1, as if the server said no."""
    _, address = served
    for timeout in ("nan", "inf", "-1", "0"):
        with pytest.raises(SystemExit) as done:
            run(address, "alice", monkeypatch, "--timeout", timeout, "list")
        assert done.value.code == 2 and "--timeout must be a number of seconds more than 0" in capsys.readouterr().err
    for token in ("tok\nen", "tökén"):
        monkeypatch.setenv("CUSTODY_STAFF_TOKEN", token)
        assert main(["--server", address, "list"], out=io.StringIO()) == 2
        err = capsys.readouterr().err
        assert "CUSTODY_STAFF_TOKEN holds something that is not a token" in err and token not in err


def test_the_queue_is_read_to_its_last_page(served, tmp_path, monkeypatch):
    """The server answers in pages; list shows every pending withdrawal and approve finds one on a later page."""
    app, address = served
    monkeypatch.setattr("backoffice.cli.PAGE_SIZE", 2)
    acct = app.create_account("user").account_id
    fund(app, acct, 5 * BTC)
    ids = [app.withdrawals.request("wallet-service", f"k{i}", str(acct), "BTC", PAYEE, str(BTC // 2))[0]["id"]
           for i in range(5)]
    code, out = run(address, "alice", monkeypatch, "list")
    assert code == 0 and "5 pending" in out and all(i in out for i in ids)
    code, out = run(address, "alice", monkeypatch, "approve", ids[-1], "--key", key_file(tmp_path, "alice"), "--yes")
    assert code == 0 and f"{ids[-1]} APPROVED" in out


def test_freeze_and_unfreeze(served, monkeypatch, capsys):
    app, address = served
    acct = str(app.create_account("user").account_id)
    code, out = run(address, "alice-admin", monkeypatch, "freeze", acct, "--reason", "court order 2026-17")
    assert code == 0 and f"account {acct} frozen" in out and app.create_account("user").frozen
    code, out = run(address, "alice-admin", monkeypatch, "freeze", acct, "--reason", "court order 2026-17")
    assert code == 0 and "already: nothing changed" in out
    # A reviewer cannot; nothing changes.
    code, _ = run(address, "alice", monkeypatch, "unfreeze", acct, "--reason", "lifted")
    assert code == 1 and "PERMISSION_DENIED" in capsys.readouterr().err and app.create_account("user").frozen
    code, out = run(address, "alice-admin", monkeypatch, "unfreeze", acct, "--reason", "order lifted")
    assert code == 0 and f"account {acct} not frozen" in out and not app.create_account("user").frozen


def test_a_misspelt_batch_status_is_refused_by_the_cli(served, monkeypatch, capsys):
    """`batches --status NEEDS_STAF` answered "0 NEEDS_STAF", exit 0: staff read it as nothing to do."""
    _, address = served
    with pytest.raises(SystemExit) as exited:
        run(address, "alice", monkeypatch, "batches", "--status", "NEEDS_STAF")
    assert exited.value.code == 2 and "invalid choice: 'NEEDS_STAF'" in capsys.readouterr().err
    code, out = run(address, "alice", monkeypatch, "batches")
    assert code == 0 and "0 NEEDS_STAFF" in out


def test_a_misspelt_status_is_refused_by_the_server_naming_the_statuses(served):
    import grpc

    from custody.errors import InvalidArgument
    from custody.v1 import backoffice_pb2 as bo
    from tests.support.servers import Clients, bearer

    app, address = served
    clients = Clients(address)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            clients.backoffice.ListWithdrawalBatches(bo.ListWithdrawalBatchesRequest(status="NEEDS_STAF"),
                                                     metadata=bearer("alice"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "CANCELLING" in refused.value.details() and "NEEDS_STAFF" in refused.value.details()
        assert not clients.backoffice.ListWithdrawalBatches(bo.ListWithdrawalBatchesRequest(status="CANCELLING"),
                                                            metadata=bearer("alice"), timeout=30).batches
    finally:
        clients.close()
    with pytest.raises(InvalidArgument, match="PENDING_REVIEW"):
        app.withdrawals.review_list("PENDING_REVIE")


def test_no_token_in_the_clear_across_a_network_and_every_call_has_a_deadline(served, tmp_path, monkeypatch,
                                                                              capsys):
    import socket

    _, address = served
    cert = str(tmp_path / "cert.pem")
    pathlib.Path(cert).write_text("not used")
    code, _ = run(address, "alice", monkeypatch, "--cert", cert, "--client-key", cert, "list")
    assert code == 2 and "--cert/--client-key need --ca" in capsys.readouterr().err
    for server in ("10.1.2.3:50051", "custody.internal:50051"):
        code, _ = run(server, "alice", monkeypatch, "list")
        assert code == 2 and "give --ca (TLS), or --insecure" in capsys.readouterr().err
    code, _ = run("10.1.2.3:50051", "alice", monkeypatch, "--insecure", "--timeout", "0.2", "list")
    assert code == 1 and capsys.readouterr().err.startswith("backoffice: ")  # tried: the network said no
    code, _ = run(address, "alice", monkeypatch, "--ca", str(tmp_path / "missing.pem"), "list")
    err = capsys.readouterr().err
    assert code == 2 and "missing.pem: No such file or directory" in err and len(err.splitlines()) == 1
    # A server that takes the connection and never answers: the call ends at its deadline.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        code, _ = run(f"127.0.0.1:{silent.getsockname()[1]}", "alice", monkeypatch, "--timeout", "0.5", "list")
    assert code == 1 and "DEADLINE_EXCEEDED" in capsys.readouterr().err


def test_approve_with_a_bad_key_file_or_stdin_closed_sends_nothing(served, tmp_path, monkeypatch, capsys):
    app, address = served
    acct = app.create_account("user").account_id
    fund(app, acct, 5 * BTC)
    wid = app.withdrawals.request("wallet-service", "two", str(acct), "BTC", PAYEE, str(2 * BTC))[0]["id"]
    (tmp_path / "bad.key").write_text("not a key")
    for key in (tmp_path / "missing.key", tmp_path / "bad.key", tmp_path):
        code, _ = run(address, "alice", monkeypatch, "approve", wid, "--key", str(key))
        err = capsys.readouterr().err
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err

    def closed(_prompt):
        raise EOFError

    monkeypatch.setenv("CUSTODY_STAFF_TOKEN", "token-alice")
    out = io.StringIO()
    code = main(["--server", address, "approve", wid, "--key", key_file(tmp_path, "alice")], out=out, confirm=closed)
    assert code == 1 and "not approved" in out.getvalue()
    assert app.withdrawals.get(wid)[0]["status"] == "PENDING_REVIEW"
