"""Fixtures shared by the integration tests (the database, chain and node ones are in tests/conftest.py)."""
from __future__ import annotations

import pytest

from tests.support.withdrawals import start_signer


@pytest.fixture
def signer(tmp_path):
    """A real signer process (`custody signer serve`) on a fresh keystore and state under tmp_path."""
    process = start_signer(tmp_path)
    yield process
    process.stop()
