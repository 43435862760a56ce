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


def test_one_request_costs_one_fsync_and_concurrent_requests_share_them(make_signer, keystore, monkeypatch):
    """Request and decision (with the outflow the rolling limits count) are synced together;
    four concurrent requests whose entries are all written while the first fsync runs need two."""
    import os
    import threading

    signer = make_signer()
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(audit.os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    payloads = [S.simple_psbt(keystore, 1000 + i) for i in range(4)]
    for p in payloads[:2]:
        assert signer.sign("bitcoin", p, [(S.HOT, S.HOT_BTC_PATH)], []).signed
    assert len(calls) == 2 and audit.verify(signer.config.audit_log).count == 4

    calls.clear()
    all_written = threading.Event()

    def first_fsync_waits_for_everyone(fd):
        calls.append(fd)
        if len(calls) == 1:
            # The other three requests decide and write while this fsync is under way.
            assert all_written.wait(timeout=60)
        real_fsync(fd)

    monkeypatch.setattr(audit.os, "fsync", first_fsync_waits_for_everyone)
    written = signer.audit.write

    def write_and_tell(entries):
        seq = written(entries)
        if seq == 4 + 2 * len(payloads):
            all_written.set()
        return seq

    monkeypatch.setattr(signer.audit, "write", write_and_tell)
    outcomes = []
    threads = [threading.Thread(target=lambda p=p: outcomes.append(
        signer.sign("bitcoin", p, [(S.HOT, S.HOT_BTC_PATH)], []))) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(o.audit_sequence for o in outcomes) == [6, 8, 10, 12] and all(o.signed for o in outcomes)
    # The first fsync covered what was written before it started (at least the first request); one
    # more covered the rest. Without group commit it would be four.
    assert 1 <= len(calls) <= 2
    assert audit.verify(signer.config.audit_log).ok


def test_no_signature_is_handed_out_if_its_audit_entry_cannot_be_made_durable(signer, keystore, monkeypatch):
    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(audit.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        signer.sign("bitcoin", S.simple_psbt(keystore, 1000), [(S.HOT, S.HOT_BTC_PATH)], [])


def test_signed_entries_carry_the_outflow_the_rolling_limits_replay(signer, keystore):
    signer.sign("bitcoin", S.simple_psbt(keystore, 12_345), [(S.HOT, S.HOT_BTC_PATH)], [])
    signed = [json.loads(line) for line in lines(signer.config.audit_log)][-1]
    assert signed["kind"] == "signed" and signed["data"]["outflow"] == {"BTC": "12345"}
    from hsm.limits import RollingLimits

    limits = RollingLimits(now_s=signed["data"]["at_s"])
    audit.verify(signer.config.audit_log, visit=limits.replay)
    assert limits.spent_since("BTC", signed["data"]["at_s"] - 1) == 12_345


def test_a_head_that_lags_behind_the_log_is_accepted_one_ahead_of_it_is_not(log_with_entries):
    """The head file is replaced after each sync but not itself synced: after a power loss it can lag."""
    ls = lines(log_with_entries)
    audit.head_path(log_with_entries).write_text(json.dumps({"count": 4, "hash": json.loads(ls[3])["hash"]}))
    assert audit.verify(log_with_entries).ok
    audit.head_path(log_with_entries).write_text(json.dumps({"count": 4, "hash": json.loads(ls[2])["hash"]}))
    assert any("entry 4" in p and "rewritten" in p for p in audit.verify(log_with_entries).problems)
    audit.head_path(log_with_entries).write_text(json.dumps({"count": 7, "hash": "ab" * 32}))
    assert any("truncated" in p for p in audit.verify(log_with_entries).problems)


def test_truncation_with_the_head_deleted_too_stops_the_signer(log_with_entries):
    """Deleting the head file together with the tail does not hide the truncation: a log without
    its head is reported, and the signer does not start on it (an operator must look)."""
    rewrite(log_with_entries, lines(log_with_entries)[:2])
    audit.head_path(log_with_entries).unlink()
    report = audit.verify(log_with_entries)
    assert not report.ok and any("missing" in p for p in report.problems)
    with pytest.raises(AuditLogBroken, match="missing"):
        AuditLog(log_with_entries)
    # The record kept off the signer's host (audit_sequence of the last answer) shows how much is gone.
    assert any("expected at least 6" in p for p in audit.verify(log_with_entries, expect_count=6).problems)


def test_a_cut_short_last_line_is_reported(log_with_entries):
    """A crash in the middle of a write (or a cut inside an entry) leaves a partial line: reported."""
    text = log_with_entries.read_text()
    log_with_entries.write_text(text[:-40])
    report = audit.verify(log_with_entries)
    assert not report.ok and any("line 6" in p and "not a complete entry" in p for p in report.problems)


def test_a_last_entry_cut_just_before_its_newline_stops_the_signer(log_with_entries):
    """The entry is whole but its newline was lost in a crash: appending after it would join the next
    entry to that line and break the log at the following start, looking like tampering."""
    log_with_entries.write_text(log_with_entries.read_text()[:-1])
    report = audit.verify(log_with_entries)
    assert [p for p in report.problems if "line 6" in p] == [
        "line 6: ends without a newline (a write cut short by a crash, or an edit); an operator must look before "
        "anything more is written"]
    with pytest.raises(AuditLogBroken, match="without a newline"):
        AuditLog(log_with_entries)


def test_a_failure_while_signing_is_still_on_record(signer, keystore, monkeypatch):
    """The token fails in the middle of a request: the request and an `error` decision are logged, nothing is
    counted toward the rolling limits, and the error reaches the caller."""
    def broken(*args):
        raise RuntimeError("token removed")

    monkeypatch.setattr(keystore, "sign_digest", broken)
    monkeypatch.setattr(keystore, "sign_digest_der", broken)
    with pytest.raises(RuntimeError, match="token removed"):
        signer.sign("bitcoin", S.simple_psbt(keystore, 1000), [(S.HOT, S.HOT_BTC_PATH)], [])
    entries = [json.loads(line) for line in lines(signer.config.audit_log)]
    assert [e["kind"] for e in entries] == ["request", "error"] and "token removed" in entries[1]["data"]["error"]
    assert audit.verify(signer.config.audit_log).ok
    assert signer.limits.spent_since("BTC", 0) == 0


@pytest.mark.parametrize("forged", [
    {"outflow": {"ETH": str(-10**30)}, "fees": {}, "ahead_s": 0},  # a negative amount: the limit used up never
    {"outflow": {"ETH": "1"}, "fees": {}, "ahead_s": 10 * 365 * 86400},  # a time that never leaves the window
    {"outflow": {}, "fees": {"ETH": "-5"}, "ahead_s": 0},
])
def test_a_forged_signed_entry_that_would_switch_a_limit_off_stops_the_signer(log_with_entries, make_signer,
                                                                                forged):
    """The chain of hashes is unkeyed: someone able to write the state folder appended entries that
    verify (and pass --expect-count/--expect-head, since a log may run ahead of its head file), and
    replaying them switched the 24-hour limit off for good (a review reproduced 12 ETH more signed
    against an 8 ETH limit). The signer never writes such an entry, so it now refuses to start."""
    import hashlib
    import time

    *_, last = lines(log_with_entries)
    last = json.loads(last)
    entry = {"seq": last["seq"] + 1, "at": round(time.time(), 6), "kind": "signed", "prev": last["hash"],
             "data": {"payload_sha256": "00" * 32, "outflow": forged["outflow"], "fees": forged["fees"],
                      "at_s": time.time() + forged["ahead_s"]}}
    entry["hash"] = hashlib.sha256(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    with open(log_with_entries, "a") as f:
        f.write(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")
    assert audit.verify(log_with_entries).ok  # the chain alone can't tell
    with pytest.raises(AuditLogBroken, match="which this signer never writes"):
        make_signer()


def test_a_line_with_a_second_key_in_front_of_the_real_one_is_found(log_with_entries):
    """The hash is over the parsed entry and Python keeps a repeated key's last value: a forged
    "data" put in front of the real one verified, while a reader taking the first key saw it."""
    entries = lines(log_with_entries)
    entries[1] = '{"data":{"outflow":{"BTC":"999999"}},' + entries[1][1:]
    log_with_entries.write_text("\n".join(entries) + "\n")
    report = audit.verify(log_with_entries)
    assert not report.ok and any("line 2" in p and "rewritten" in p for p in report.problems), report.render()


def test_a_head_recorded_elsewhere_without_its_count_is_not_silently_ignored(log_with_entries):
    count = len(lines(log_with_entries))
    assert not audit.verify(log_with_entries, expect_head="deadbeef").ok
    assert audit.verify(log_with_entries, expect_count=count,
                        expect_head=json.loads(lines(log_with_entries)[-1])["hash"]).ok


def test_a_field_added_to_an_entry_is_found(log_with_entries):
    """The hash covers seq, at, kind, data and prev: a field added beside them, written in the
    signer's own format, verified, and a reader took it for part of the record (a review note)."""
    entries = lines(log_with_entries)
    entry = json.loads(entries[1])
    entry["override"] = {"approved_by": "alice", "decision": "signed"}
    entries[1] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    log_with_entries.write_text("\n".join(entries) + "\n")
    report = audit.verify(log_with_entries)
    assert not report.ok, report.render()
    assert any("line 2" in p and "['override']" in p and "added" in p for p in report.problems), report.render()
