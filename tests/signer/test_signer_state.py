"""The signer's two state files belong together: the audit log (the record of what was signed) and
limits_db (what it remembers beyond it). A start that would pair them wrongly, or a second signer
process on the same files, is refused instead of silently forgetting or double counting."""
from __future__ import annotations

import shutil

import pytest

from hsm.audit import AuditLogInUse
from hsm.errors import LimitsFileMissing
from tests.support import signer as S

KEYS = [(S.HOT, S.HOT_BTC_PATH)]


def pay(signer, keystore, coin: str, amount: int = S.BTC // 10):
    return signer.sign("bitcoin", S.simple_psbt(keystore, amount, input_txid=coin), KEYS, [])


def stop(signer):
    signer.audit.close(), signer.policy.close()


def test_a_second_signer_on_the_same_files_is_refused(make_signer, keystore):
    """It used to take over the socket and write its own chain into the same log, counting the daily
    limit apart: both signed, and the log failed verification at the next start."""
    first = make_signer()
    with pytest.raises(AuditLogInUse, match="in use by another signer process"):
        make_signer()
    assert pay(first, keystore, "a1" * 32).signed
    stop(first)
    stop(make_signer())  # the first has stopped: the next starts


def test_a_missing_audit_log_does_not_wipe_what_limits_db_remembers(make_signer, keystore):
    first = make_signer()
    assert pay(first, keystore, "a2" * 32).signed
    stop(first)
    log = first.config.audit_log
    log.unlink(), log.with_name(log.name + ".head").unlink()  # moved away, or audit_log mistyped
    with pytest.raises(LimitsFileMissing, match="audit log is empty or missing"):
        make_signer()
    # Nothing was dropped: with the log back, the coin's claim is still remembered.


def test_an_older_copy_of_limits_db_is_refused(make_signer, keystore, tmp_path, monkeypatch):
    """It notes the audit sequence once per SEQ_NOTED_EVERY sequences (on every write it cost a fifth of
    a durable signature): a copy older than that is refused."""
    from hsm import replacements

    monkeypatch.setattr(replacements, "SEQ_NOTED_EVERY", 2)
    first = make_signer()
    assert pay(first, keystore, "a3" * 32).signed
    first.policy.counted._db.execute("PRAGMA wal_checkpoint(FULL)")
    backup = tmp_path / "limits.backup"
    shutil.copy(first.config.limits_db, backup)
    for coin in ("a4", "a5", "a6"):  # signed after the backup
        assert pay(first, keystore, coin * 32).signed
    stop(first)
    for suffix in ("-wal", "-shm"):
        first.config.limits_db.with_name(first.config.limits_db.name + suffix).unlink(missing_ok=True)
    shutil.copy(backup, first.config.limits_db)
    with pytest.raises(LimitsFileMissing, match="an older copy of the file"):
        make_signer()
