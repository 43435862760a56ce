"""Append-only, hash-chained audit log of every request, decision and signature.

One JSON object per line:
    {"seq": n, "at": unix seconds, "kind": "...", "data": {...}, "prev": hash of entry n-1, "hash": ...}
hash = SHA-256 of the entry's canonical JSON without "hash". Entry 1's prev is
64 zeros. A changed entry breaks its own hash; a removed or reordered one
breaks seq and prev.

A request's entries (request, then decision) are written together and made
durable with one fsync before the signer answers (`sync`). Concurrent requests
share that fsync (group commit): one thread syncs the file for every entry
written before it, the others find their entries durable and return.

The chain alone can't show truncation (dropping the last entries leaves a
valid chain), so a separate head file (<log>.head) holds the count and last
hash, overwritten after each sync and before the signer answers. It is not
itself fsynced (that would be a second sync per request): after a power loss
it may lag behind the log, never run ahead of it, so verify accepts a log
that is longer than its head (the entries after the head were written since)
and reports one that is shorter or differs at the head's entry. Deleting the
head is reported too, unless the log went with it: a first start has neither,
so an empty or missing log verifies. That a log was wiped is for the signer
to see at start, from limits_db (which notes that a log was started) and from
a head or lock file left beside a missing log (hsm/service.py). What the head
file can't show is a truncation by someone who also rewrites the head to
match: that needs a record kept off the signer's host. The signer hands one
out with every answer (audit_sequence in SignResponse); `custody signer audit verify
--expect-count N [--expect-head H]` checks the log against it.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import threading
import time

from hsm.errors import AuditLogBroken, SignerError

GENESIS = "0" * 64


HASHED_KEYS = ("seq", "at", "kind", "data", "prev")
ENTRY_KEYS = {*HASHED_KEYS, "hash"}
# What this signer writes in each field. The chain is unkeyed, so an appended entry can hash and
# chain correctly and still hold, say, a list as its data: reported, never handed to a reader.
ENTRY_SHAPE = {"seq": ((int,), "a whole number"), "at": ((int, float), "a number"), "kind": ((str,), "a string"),
               "data": ((dict,), "an object"), "prev": ((str,), "a string"), "hash": ((str,), "a string")}


def _entry_hash(entry: dict) -> str:
    body = {k: entry[k] for k in HASHED_KEYS}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def head_path(log: pathlib.Path) -> pathlib.Path:
    return log.with_name(log.name + ".head")


def lock_path(log: pathlib.Path) -> pathlib.Path:
    return log.with_name(log.name + ".lock")


class AuditLog:
    def __init__(self, path: pathlib.Path, durable: bool = True, visit=None):
        """Verifies the whole log first (visit(entry) sees each entry, e.g. to rebuild rolling limits)."""
        self.path = pathlib.Path(path)
        self.durable = durable
        self._lock = threading.Lock()  # appends: seq and prev in file order
        self._sync_lock = threading.Lock()  # one fsync at a time; waiters find theirs done
        # One writer per log: a second signer started on the same config wrote its own chain into
        # the same file (and the rolling limits were counted twice apart). Held until close.
        self._owner = os.open(lock_path(self.path), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._owner)
            raise AuditLogInUse(f"audit log {self.path} is in use by another signer process") from None
        try:
            report = verify(self.path, visit=visit)
        except BaseException:  # visit refused an entry (hsm/limits.py): the lock goes with it
            os.close(self._owner)
            raise
        if not report.ok:
            # A signer must not go on writing after a tampered history: an operator decides.
            os.close(self._owner)
            raise AuditLogBroken(f"audit log {self.path} fails verification: " + "; ".join(report.problems))
        self.count, self.head = report.count, report.head
        self._synced = self.count
        self._file = open(self.path, "a", encoding="utf-8")
        self._head_file = _HeadFile(self.path, self.count, self.head)

    @property
    def next_seq(self) -> int:
        """The sequence the next entry written will have (callers that write one at a time know it)."""
        return self.count + 1

    def append(self, kind: str, data: dict) -> int:
        """One entry, durable on return."""
        seq = self.write([(kind, data)])
        self.sync(seq)
        return seq

    def write(self, entries: list[tuple[str, dict]]) -> int:
        """Writes entries together (one write call) and returns the last one's seq.
        Not durable until sync(seq) returns: the signer must not answer before that."""
        with self._lock:
            lines = []
            for kind, data in entries:
                entry = {"seq": self.count + 1, "at": round(time.time(), 6), "kind": kind, "data": data,
                         "prev": self.head}
                entry["hash"] = _entry_hash(entry)
                lines.append(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")
                self.count, self.head = entry["seq"], entry["hash"]
            self._file.write("".join(lines))
            self._file.flush()
            return self.count

    def sync(self, seq: int) -> None:
        """Returns once entries 1..seq are on disk; one fsync covers every entry written before it."""
        with self._sync_lock:
            if self._synced >= seq:
                return  # another request's fsync covered it (group commit)
            with self._lock:
                count, head = self.count, self.head  # everything written so far, all flushed
            if self.durable:
                os.fsync(self._file.fileno())
            self._synced = count
            self._head_file.write(count, head)

    def close(self) -> None:
        self._file.close()
        self._head_file.close()
        if self._owner >= 0:
            os.close(self._owner)  # releases the lock
            self._owner = -1


class AuditLogInUse(SignerError):
    """Another signer process holds the log."""


HEAD_RECORD_BYTES = 128


class _HeadFile:
    """<log>.head, overwritten in place with one fixed-size record.

    Not replaced through a temporary file and a rename: on ext4 a rename over
    an existing file flushes the new file's data first (auto_da_alloc), which
    costs as much as the fsync of the log itself (about 2 ms here). One
    128-byte write at offset 0 lies within one disk sector. The head is not
    fsynced: see the module docstring.
    """

    def __init__(self, log: pathlib.Path, count: int, head: str):
        self._fd = os.open(head_path(log), os.O_RDWR | os.O_CREAT, 0o600)
        self.write(count, head)
        os.ftruncate(self._fd, HEAD_RECORD_BYTES)  # a longer head written by an older version

    def write(self, count: int, head: str) -> None:
        record = json.dumps({"count": count, "hash": head}).ljust(HEAD_RECORD_BYTES - 1) + "\n"
        os.pwrite(self._fd, record.encode(), 0)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclasses.dataclass
class Report:
    count: int
    head: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        if self.ok:
            return f"audit log OK: {self.count} entries, head {self.head}"
        return "audit log BROKEN:\n" + "\n".join(f"  - {p}" for p in self.problems)


def verify(path: pathlib.Path, expect_count: int | None = None, expect_head: str | None = None,
           visit=None) -> Report:
    """Walks the whole log; every problem found is listed (not just the first).

    visit(entry), if given, is called with each entry that parses, in order.
    """
    path = pathlib.Path(path)
    problems: list[str] = []
    head, head_problem = _read_head(head_path(path))
    anchors = {}  # seq -> the hash the log must have there (the head file's, the caller's)
    if head:
        anchors[head["count"]] = (head["hash"], "the head file's")
    if expect_count is not None and expect_head is not None:
        anchors[expect_count] = (expect_head, "the one recorded elsewhere")
    elif expect_head is not None:  # a head alone anchors nothing: it was silently ignored
        problems.append("a head recorded elsewhere needs the entry count it was recorded at (--expect-count)")
    count, prev = 0, GENESIS
    line_no, last = 0, b"\n"
    for line_no, last in enumerate(_lines(path), start=1):
        try:
            line = last.decode("utf-8").rstrip("\n")
        except UnicodeDecodeError:  # the signer writes ASCII only (JSON escapes the rest)
            problems.append(f"line {line_no}: not UTF-8 text (damaged on disk, or changed)")
            continue
        try:
            entry = json.loads(line)
            stored = entry["hash"]
            computed = _entry_hash(entry)
        except (ValueError, KeyError, TypeError):
            problems.append(f"line {line_no}: not a complete entry (changed or damaged, "
                            "or cut short by a crash while it was written)")
            continue
        expected_seq = count + 1
        wrong = [(key, entry[key], what) for key, (types, what) in ENTRY_SHAPE.items()
                 if isinstance(entry[key], bool) or not isinstance(entry[key], types)]
        for key, value, what in wrong:
            problems.append(f"line {line_no} (seq {entry['seq']!r}): {key} is {json.dumps(value)[:40]}, "
                            f"where this signer writes {what}: not an entry it wrote")
        if set(entry) != ENTRY_KEYS:
            # The hash covers only these: a field added to an entry verified, and a reader would
            # have taken it for part of the signed record.
            problems.append(f"line {line_no} (seq {entry.get('seq')}): has fields "
                            f"{sorted(set(entry) - ENTRY_KEYS)[:5]} that this signer never writes: added")
        if line != json.dumps(entry, sort_keys=True, separators=(",", ":")):
            # The hash is over the parsed entry: a line with a second "data" key in front of the
            # real one verified, while a reader that takes the first key saw the forged one.
            problems.append(f"line {line_no} (seq {entry.get('seq')}): not as this signer writes entries "
                            "(a key repeated, reordered or reformatted): rewritten")
        if stored != computed:
            problems.append(f"line {line_no} (seq {entry.get('seq')}): changed: its hash does not match its contents")
        if entry["seq"] != expected_seq:
            problems.append(f"line {line_no}: seq {entry['seq']} where {expected_seq} was expected "
                            "(an entry was removed, inserted or reordered)")
        if entry["prev"] != prev:
            problems.append(f"line {line_no} (seq {entry['seq']}): does not chain to the entry before it "
                            "(an entry was removed, inserted or reordered)")
        count, prev = count + 1, stored
        if count in anchors and anchors[count][0] != stored:
            problems.append(f"entry {count} is not {anchors[count][1]} ({anchors[count][0][:16]}...): rewritten")
        if visit is not None and not wrong:
            visit(entry)
    if not last.endswith(b"\n"):
        # Appending after it would join the next entry to this line and break the log at the next start.
        problems.append(f"line {line_no}: ends without a newline (a write cut short by a crash, or an edit); "
                        "an operator must look before anything more is written")
    if head_problem and line_no:
        problems.append(head_problem)
    if head and head["count"] > count:
        # The head only lags behind the log (it is replaced after each sync), never runs ahead.
        problems.append(f"the head file says {head['count']} entries, the log has {count} (truncated)")
    if expect_count is not None and expect_count > count:
        problems.append(f"expected at least {expect_count} entries, the log has {count} (truncated)")
    return Report(count, prev, problems)


def _lines(path: pathlib.Path):
    """The log's lines (bytes) with their newlines, read as a stream: a long log is never in memory at
    once. Bytes: a line that does not decode is one damaged line, not the end of the walk."""
    try:
        with open(path, "rb") as f:
            yield from f
    except FileNotFoundError:
        return


def _read_head(head_file: pathlib.Path) -> tuple[dict | None, str]:
    """(head, "") or (None, why it can't be used)."""
    try:
        head = json.loads(head_file.read_text())
        if isinstance(head["count"], int) and isinstance(head["hash"], str):
            return head, ""
    except FileNotFoundError:
        return None, f"head file {head_file} is missing: truncation can't be ruled out"
    except (ValueError, KeyError, TypeError):
        pass
    return None, f"head file {head_file} is damaged"
