"""Audit log: every request and decision chained; edits, deletions, reorders and truncation found."""
from __future__ import annotations

import json

import pytest

from hsm import audit
from hsm.audit import AuditLog, AuditLogBroken
from tests.support import signer as S


@pytest.fixture
def log_with_entries(signer, keystore):
    signer.sign("bitcoin", S.simple_psbt(keystore, 1000), [(S.HOT, S.HOT_BTC_PATH)], [])
    signer.sign("bitcoin", S.simple_psbt(keystore, 3 * S.BTC), [(S.HOT, S.HOT_BTC_PATH)], [])
    signer.sign("ethereum", S.eth_payload("0x" + "22" * 20, 1), [(S.HOT, S.HOT_ETH_PATH)], [])
    signer.audit.close()
    return signer.config.audit_log


def lines(path):
    return path.read_text().splitlines()


def test_requests_decisions_and_signatures_are_logged(log_with_entries):
    entries = [json.loads(line) for line in lines(log_with_entries)]
    assert [e["kind"] for e in entries] == ["request", "signed", "request", "refused", "request", "signed"]
    assert entries[3]["data"]["rule"] == "max_per_transaction"
    assert entries[1]["data"]["txid"] and entries[1]["data"]["destinations"][0]["amount"] == "1000"
    report = audit.verify(log_with_entries)
    assert report.ok and report.count == 6


def rewrite(path, new_lines):
    path.write_text("".join(line + "\n" for line in new_lines))


def test_edited_entry_is_found(log_with_entries):
    ls = lines(log_with_entries)
    ls[3] = ls[3].replace("max_per_transaction", "max_per_transactioN")
    rewrite(log_with_entries, ls)
    report = audit.verify(log_with_entries)
    assert not report.ok and any("line 4" in p and "changed" in p for p in report.problems)


def test_edited_entry_with_recomputed_hash_still_breaks_the_chain(log_with_entries):
    ls = lines(log_with_entries)
    entry = json.loads(ls[1])
    entry["data"]["destinations"][0]["amount"] = "999"
    entry["hash"] = audit._entry_hash(entry)
    ls[1] = json.dumps(entry)
    rewrite(log_with_entries, ls)
    report = audit.verify(log_with_entries)
    assert any("line 3" in p and "does not chain" in p for p in report.problems)


def test_deleted_entry_is_found(log_with_entries):
    ls = lines(log_with_entries)
    del ls[2]
    rewrite(log_with_entries, ls)
    report = audit.verify(log_with_entries)
    assert not report.ok and any("removed" in p for p in report.problems)


def test_reordered_entries_are_found(log_with_entries):
    ls = lines(log_with_entries)
    ls[2], ls[3] = ls[3], ls[2]
    rewrite(log_with_entries, ls)
    assert not audit.verify(log_with_entries).ok


def test_truncation_is_found_by_the_head_file(log_with_entries):
    rewrite(log_with_entries, lines(log_with_entries)[:4])
    report = audit.verify(log_with_entries)
    assert not report.ok and any("truncated" in p for p in report.problems)
    audit.head_path(log_with_entries).unlink()
    assert any("head file" in p for p in audit.verify(log_with_entries).problems)


def test_truncation_with_a_rewritten_head_is_found_against_a_head_kept_elsewhere(log_with_entries):
    """The core keeps audit_sequence from each SignResponse; that is the outside anchor."""
    ls = lines(log_with_entries)
    last = json.loads(ls[-1])
    rewrite(log_with_entries, ls[:4])
    audit.head_path(log_with_entries).write_text(json.dumps({"count": 4, "hash": json.loads(ls[3])["hash"]}))
    assert audit.verify(log_with_entries).ok  # the weakness: both files rewritten together
    report = audit.verify(log_with_entries, expect_count=last["seq"], expect_head=last["hash"])
    assert not report.ok and "truncated" in report.problems[0]


def test_signer_refuses_to_start_on_a_tampered_log(log_with_entries):
    ls = lines(log_with_entries)
    del ls[0]
    rewrite(log_with_entries, ls)
    with pytest.raises(AuditLogBroken, match="fails verification"):
        AuditLog(log_with_entries)


def test_appending_after_reopen_continues_the_chain(log_with_entries):
    log = AuditLog(log_with_entries)
    assert log.append("note", {"x": 1}) == 7
    log.close()
    assert audit.verify(log_with_entries).ok
