"""What `custody signer serve` finds wrong in its state at start: a deleted or moved audit log (which holds the
rolling 24h limits), a damaged line, an entry not as the signer writes them, a limits_db that is not a
database. Each stops it with one line naming the file, never a traceback and never a silent fresh start."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from hsm import audit
from hsm.errors import AuditLogBroken, LimitsFileMissing
from hsm.service import Signer
from tests.support import signer as S

ETH_KEYS = [(S.HOT, S.HOT_ETH_PATH)]
BTC_KEYS = [(S.HOT, S.HOT_BTC_PATH)]
PAYEE = "0x" + "22" * 20


def custody(tmp_path, *args):
    path = tmp_path / "signer.toml"
    path.write_text(S.to_toml(S.raw_config(tmp_path)))
    return subprocess.run([sys.executable, "-m", "custody.cli", "signer", *args, "--config", str(path)],
                          capture_output=True, text=True, env={**os.environ, "TEST_SIGNER_PASS": S.PASSPHRASE},
                          timeout=60)


def refused_start(tmp_path) -> str:
    """`custody signer serve` on tmp_path's state: it must stop at start with one line; that line."""
    r = custody(tmp_path, "serve")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


def stop(signer):
    signer.audit.close(), signer.policy.close()


def signed_once(make_signer):
    signer = make_signer()
    assert signer.sign("ethereum", S.eth_payload(PAYEE, S.ETH), ETH_KEYS, []).signed
    stop(signer)
    return signer.config


def append(log, kind: str, data) -> None:
    """An entry that hashes and chains correctly: anyone who can write the state folder can add one."""
    last = json.loads(log.read_text().splitlines()[-1])
    entry = {"seq": last["seq"] + 1, "at": last["at"], "kind": kind, "data": data, "prev": last["hash"]}
    entry["hash"] = audit._entry_hash(entry)
    with open(log, "a") as f:
        f.write(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")


# -- a deleted or moved audit log ---------------------------------------------------------------------


def test_an_ethereum_only_signer_whose_log_was_deleted_does_not_start(tmp_path, keystore):
    """limits_db held no rows (no Bitcoin, no approved withdrawal), so a deleted log and head went unseen and
    the 24h limit started again from zero: 8 ETH more on the same day."""
    proc = S.SignerProcess(tmp_path, S.raw_config(tmp_path))
    try:
        signed = [proc.client.sign("ethereum", S.eth_payload(PAYEE, 2 * S.ETH, nonce=n), ETH_KEYS).signed
                  for n in range(5)]
    finally:
        proc.stop()
    assert signed == [True, True, True, True, False]  # 8 ETH per 24h
    log = tmp_path / "audit.log"
    for path in (log, audit.head_path(log), audit.lock_path(log)):
        path.unlink()
    line = refused_start(tmp_path)
    assert "the audit log is empty or missing, but limits_db says a log was started" in line
    assert "--new-audit-log" in line and "Traceback" not in line


def test_a_mistyped_audit_log_path_is_refused(make_signer, keystore, tmp_path):
    config = signed_once(make_signer)
    with pytest.raises(LimitsFileMissing, match="limits_db says a log was started"):
        Signer(dataclasses.replace(config, audit_log=tmp_path / "audit-log"), keystore)


def test_a_lock_file_beside_a_missing_log_shows_it_was_deleted(make_signer, keystore):
    """A limits_db from before it noted a started log knows nothing: the files made with the log tell."""
    config = signed_once(make_signer)
    with contextlib.closing(sqlite3.connect(config.limits_db)) as db:
        db.execute("DELETE FROM meta WHERE name = 'audit_log_started'")
        db.commit()
    config.audit_log.unlink(), audit.head_path(config.audit_log).unlink()
    with pytest.raises(AuditLogBroken, match=r"audit.log is missing, but audit.log.lock beside it"):
        make_signer()
    # That start made a new empty log, as every start does: limits_db now keeps the evidence.
    with pytest.raises(LimitsFileMissing, match="limits_db says a log was started"):
        make_signer()


def test_a_signer_that_never_signed_starts_again(make_signer):
    stop(make_signer())
    stop(make_signer())


def signed_bitcoin_then_lost_log(make_signer, keystore):
    first = make_signer()
    assert first.sign("bitcoin", S.simple_psbt(keystore, S.BTC // 10, input_txid="e0" * 32), BTC_KEYS, []).signed
    stop(first)
    config = first.config
    lost_head = audit.head_path(config.audit_log).read_text().strip()
    config.audit_log.unlink()
    return config, lost_head


@pytest.mark.parametrize("lost", ["deleted", "emptied"])
def test_a_lost_log_is_started_again_only_when_the_operator_says_so_and_on_record(make_signer, keystore, lost):
    """Deleted, or emptied in place (truncated to 0 bytes): an emptied one kept its head file's
    complaint even with --new-audit-log, and the message did not say that flag."""
    config, lost_head = signed_bitcoin_then_lost_log(make_signer, keystore)
    if lost == "emptied":
        config.audit_log.write_bytes(b"")
    with pytest.raises(AuditLogBroken, match=r"truncated\). Restore the log .*--new-audit-log"):
        make_signer()
    again = Signer(config, keystore, new_audit_log=True)
    entries = [json.loads(line) for line in config.audit_log.read_text().splitlines()]
    assert [e["kind"] for e in entries] == ["audit_log_recreated"]
    assert entries[0]["data"]["lost_head"] == lost_head
    # What limits_db remembers is kept, though the lost log's sequences are gone: the input's claim.
    lie = S.simple_psbt(keystore, S.BTC // 10, input_txid="e0" * 32, input_value=4 * S.BTC)
    assert again.sign("bitcoin", lie, BTC_KEYS, []).refused_rule == "inputs"
    stop(again)
    stop(make_signer())  # a plain start again
    assert audit.verify(config.audit_log).ok


# -- damaged or foreign entries, a limits_db that is no database ------------------------------------


def test_a_byte_that_is_not_utf8_is_a_damaged_line(make_signer, tmp_path):
    """It was "'utf-8' codec can't decode byte 0xff", naming no file and listing no problem."""
    config = signed_once(make_signer)
    data = bytearray(config.audit_log.read_bytes())
    data[40] = 0xFF
    config.audit_log.write_bytes(bytes(data))
    assert refused_start(tmp_path).startswith(
        f"custody signer: audit log {config.audit_log} fails verification: line 1: not UTF-8")
    r = custody(tmp_path, "audit", "verify")
    assert r.returncode == 1 and "line 1: not UTF-8" in r.stdout and not r.stderr


def test_an_appended_entry_that_is_not_as_the_signer_writes_them_is_reported(make_signer, tmp_path):
    """It hashed and chained correctly, and the replay of the rolling limits died on it with a traceback."""
    config = signed_once(make_signer)
    clean = config.audit_log.read_bytes()
    append(config.audit_log, "signed", [])
    assert "line 3 (seq 3): data is [], where this signer writes an object" in refused_start(tmp_path)
    r = custody(tmp_path, "audit", "verify")
    assert r.returncode == 1 and "data is []" in r.stdout
    # An object, but its outflow is no table of amounts.
    config.audit_log.write_bytes(clean)
    append(config.audit_log, "signed", {"outflow": [], "at_s": 1.0})
    assert f"audit log {config.audit_log}: entry 3 (signed) is not as this signer writes it" in refused_start(tmp_path)


def test_a_limits_db_that_is_not_a_database_is_named(make_signer, tmp_path):
    config = signed_once(make_signer)
    config.limits_db.write_bytes(b"not a database" * 100)
    assert refused_start(tmp_path).startswith(
        f"custody signer: limits_db {config.limits_db} can't be used: file is not a database")
