"""A real SoftHSM2 token for the PKCS#11 tests, in a private token folder.

SoftHSM reads SOFTHSM2_CONF and its token list once, when the library is
first initialised in a process (python-pkcs11 loads it once per process). So
each test process gets one config and a pool of tokens made before that; each
test takes its own token, found by label (SoftHSM gives tokens random slot ids).
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import uuid

import pytest

from tests.support.databases import VAR

LIBRARY = pathlib.Path("/usr/lib/softhsm/libsofthsm2.so")
PIN = "123456"
SO_PIN = "12345678"
POOL_SIZE = 16
_conf: pathlib.Path | None = None
_pool: list[str] = []


def require_softhsm() -> None:
    if not LIBRARY.exists():
        pytest.fail(f"SoftHSM2 is not installed ({LIBRARY} missing): the PKCS#11 keystore can't be tested. "
                    "Install it with `apt-get install softhsm2` (make test does this when run as root).",
                    pytrace=False)


def configure() -> pathlib.Path:
    global _conf
    if _conf is None:
        folder = VAR / "softhsm" / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}"
        (folder / "tokens").mkdir(parents=True, exist_ok=True)
        _conf = folder / "softhsm2.conf"
        _conf.write_text(f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(_conf)
    return _conf


def _init_token(label: str) -> None:
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", SO_PIN],
                   check=True, capture_output=True, env=os.environ)


def new_token() -> str:
    """A fresh, empty token's label (from the pool made before the library loads)."""
    require_softhsm()
    if _conf is None:
        configure()
        for _ in range(POOL_SIZE):
            label = "t-" + uuid.uuid4().hex[:12]
            _init_token(label)
            _pool.append(label)
    if not _pool:
        pytest.fail(f"the SoftHSM token pool ({POOL_SIZE} per test process) is used up; raise POOL_SIZE")
    return _pool.pop()
