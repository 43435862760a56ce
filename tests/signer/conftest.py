"""Fixtures for the signer's tests: a software keystore with the BIP84 test
mnemonic, a signer.toml in a temporary folder, and the Signer on top."""
from __future__ import annotations

import time

import pytest

from hsm.service import Signer
from tests.support import signer as S


@pytest.fixture
def keystore(tmp_path):
    return S.make_keystore(tmp_path)


@pytest.fixture
def make_signer(tmp_path, keystore):
    made = []

    def make(clock=None, new_limits_db=False, **policy):
        config = S.make_config(tmp_path, **policy)
        signer = Signer(config, keystore, clock=clock or time.time, new_limits_db=new_limits_db)
        made.append(signer)
        return signer

    yield make
    for s in made:
        s.audit.close()
        s.limits.close()


@pytest.fixture
def signer(make_signer):
    return make_signer()
