"""Fixtures shared by the integration tests (the database, chain and node ones are in tests/conftest.py)."""
from __future__ import annotations

import pytest

from tests.support.withdrawals import start_signer, withdrawal_config


@pytest.fixture
def signer(tmp_path):
    """A real signer process (`custody signer serve`) on a fresh keystore and state under tmp_path."""
    process = start_signer(tmp_path)
    yield process
    process.stop()


@pytest.fixture
def btc(db_url, chain):
    """The custody app configured for withdrawals (2 confirmations) on a fresh database, its Bitcoin
    scanner caught up with the node."""
    from custody.app import Custody

    app = Custody(withdrawal_config(db_url, chain.rpc.url, confirmations=2))
    app.scanner("bitcoin").catch_up()
    yield app
    app.close()
