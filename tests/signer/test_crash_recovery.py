"""What the signer remembers in limits_db (input claims, counted spends and their fees, the coins that
paid approved withdrawals) agrees with its audit log after a crash between the two writes, and a
lost limits_db stops the signer instead of silently forgetting."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from hsm.errors import LimitsFileMissing
from tests.support import signer as S

KEYS = [(S.HOT, S.HOT_BTC_PATH)]
ASSETS = [{"asset": "BTC", "chain": "bitcoin", "max_per_transaction": str(2 * S.BTC), "max_per_24h": str(3 * S.BTC),
           "max_fee": "100000"}, {"asset": "ETH", "chain": "ethereum"}]

DIE_IN_AUDIT_WRITE = """
import os, pathlib, sys
from hsm import audit
from hsm.keystores.software import Passphrase, SoftwareKeystore
from hsm.service import Signer
from tests.support import signer as S
from tests.signer.test_crash_recovery import ASSETS, KEYS
folder = pathlib.Path(sys.argv[1])
signer = Signer(S.make_config(folder, assets=ASSETS), SoftwareKeystore.open(folder / "keystore.json",
                Passphrase(S.PASSPHRASE)))
write = audit.AuditLog.write
def dying_write(self, entries):
    if any(kind == "signed" for kind, _ in entries):
        os._exit(137)  # after limits_db committed, before the decision reached the log
    return write(self, entries)
audit.AuditLog.write = dying_write
signer.sign("bitcoin", (folder / "payload.psbt").read_bytes(), KEYS, [])
"""


def sign_in_a_process_that_dies_before_logging(folder: pathlib.Path, payload: bytes) -> None:
    (folder / "payload.psbt").write_bytes(payload)
    died = subprocess.run([sys.executable, "-c", DIE_IN_AUDIT_WRITE, str(folder)], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).parents[2], timeout=60)
    assert died.returncode == 137, died.stderr


def test_a_signature_lost_in_a_crash_before_its_audit_entry_leaves_no_memory_behind(make_signer, keystore, tmp_path):
    now = [9_000_000.0]
    first = make_signer(clock=lambda: now[0], assets=ASSETS)
    logged = S.simple_psbt(keystore, S.BTC // 2, input_txid="c0" * 32)
    assert first.sign("bitcoin", logged, KEYS, []).signed
    first.audit.close(), first.policy.close()

    a = S.simple_psbt(keystore, 2 * S.BTC, to=S.foreign_script("alice"), input_txid="a0" * 32)
    sign_in_a_process_that_dies_before_logging(tmp_path, a)
    restarted = make_signer(clock=lambda: now[0] + 60, assets=ASSETS)
    assert restarted.policy.counted.dropped == {"counted_spends": 1, "signed_inputs": 1, "withdrawal_first_spends": 0}
    # The core retries A: it is a new spend, counted in full (before the fix it passed as a fee bump of
    # a spend already counted and skipped the rolling limit, so B below was signed too: 4.5 BTC in a day).
    assert restarted.sign("bitcoin", a, KEYS, []).signed
    b = S.simple_psbt(keystore, S.BTC, to=S.foreign_script("mallory"), input_txid="b0" * 32)
    out = restarted.sign("bitcoin", b, KEYS, [])
    assert (out.signed, out.refused_rule) == (False, "rolling_24h")
    # What the logged signature wrote is kept: its input is still remembered with its amount.
    lie = S.simple_psbt(keystore, S.BTC // 2, input_txid="c0" * 32, input_value=4 * S.BTC)
    assert restarted.sign("bitcoin", lie, KEYS, []).refused_rule == "inputs"


def test_a_lost_limits_db_stops_the_signer_until_the_operator_says_so(make_signer, keystore):
    first = make_signer(assets=ASSETS)
    assert first.sign("bitcoin", S.simple_psbt(keystore, S.BTC // 2, input_txid="d0" * 32), KEYS, []).signed
    first.audit.close(), first.policy.close()
    config = first.config
    config.limits_db.unlink()
    with pytest.raises(LimitsFileMissing, match="holds 1 signatures it remembers"):
        make_signer(assets=ASSETS)
    assert not config.limits_db.exists() or config.limits_db.stat().st_size == 0
    again = make_signer(assets=ASSETS, new_limits_db=True)
    kinds = [json.loads(line)["kind"] for line in config.audit_log.read_text().splitlines()]
    assert kinds[-1] == "limits_db_recreated"
    again.audit.close(), again.policy.close()
    make_signer(assets=ASSETS).audit.close()  # the new file is there now: a plain start again


def test_a_signer_that_signed_only_ethereum_starts_without_limits_db(make_signer, keystore):
    first = make_signer(assets=ASSETS)
    assert first.sign("ethereum", S.eth_payload("0x" + "22" * 20, 1), [(S.HOT, S.HOT_ETH_PATH)], []).signed
    first.audit.close(), first.policy.close()
    first.config.limits_db.unlink()
    make_signer(assets=ASSETS).audit.close()
