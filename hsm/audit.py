"""Append-only, hash-chained audit log of every request, decision and signature.

One JSON object per line:
    {"seq": n, "at": unix seconds, "kind": "...", "data": {...}, "prev": hash of entry n-1, "hash": ...}
hash = SHA-256 of the entry's canonical JSON without "hash". Entry 1's prev is
64 zeros. A changed entry breaks its own hash; a removed or reordered one
breaks seq and prev.

The chain alone can't show truncation (dropping the last entries leaves a
valid chain), so a separate head file (<log>.head) holds the count and last
hash, replaced atomically after each append; verify compares the two. An
attacker who can rewrite both files consistently is not detected by this
alone: ship the head to a place the signer's host can't rewrite (the core
stores it with each signature it receives: audit_sequence in SignResponse)
and compare with `custody signer audit verify --expect-count N --expect-head H`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import threading
import time

GENESIS = "0" * 64


def _entry_hash(entry: dict) -> str:
    body = {k: entry[k] for k in ("seq", "at", "kind", "data", "prev")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def head_path(log: pathlib.Path) -> pathlib.Path:
    return log.with_name(log.name + ".head")


class AuditLog:
    def __init__(self, path: pathlib.Path, durable: bool = True):
        self.path = pathlib.Path(path)
        self.durable = durable
        self._lock = threading.Lock()
        report = verify(self.path)
        if not report.ok:
            # A signer must not go on writing after a tampered history: an operator decides.
            raise AuditLogBroken(f"audit log {self.path} fails verification: " + "; ".join(report.problems))
        self.count, self.head = report.count, report.head
        self._file = open(self.path, "a", encoding="utf-8")

    def append(self, kind: str, data: dict) -> int:
        with self._lock:
            entry = {"seq": self.count + 1, "at": round(time.time(), 6), "kind": kind, "data": data,
                     "prev": self.head}
            entry["hash"] = _entry_hash(entry)
            self._file.write(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")
            self._file.flush()
            if self.durable:
                os.fsync(self._file.fileno())
            self.count, self.head = entry["seq"], entry["hash"]
            _write_head(self.path, self.count, self.head, self.durable)
            return self.count

    def close(self) -> None:
        self._file.close()


class AuditLogBroken(Exception):
    pass


def _write_head(log: pathlib.Path, count: int, head: str, durable: bool) -> None:
    target = head_path(log)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps({"count": count, "hash": head}) + "\n")
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, target)


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


def verify(path: pathlib.Path, expect_count: int | None = None, expect_head: str | None = None) -> Report:
    """Walks the whole log; every problem found is listed (not just the first)."""
    path = pathlib.Path(path)
    problems: list[str] = []
    count, prev = 0, GENESIS
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for line_no, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
            stored = entry["hash"]
            computed = _entry_hash(entry)
        except (ValueError, KeyError, TypeError):
            problems.append(f"line {line_no}: not a complete entry (changed or damaged)")
            continue
        expected_seq = count + 1
        if stored != computed:
            problems.append(f"line {line_no} (seq {entry.get('seq')}): changed: its hash does not match its contents")
        if entry["seq"] != expected_seq:
            problems.append(f"line {line_no}: seq {entry['seq']} where {expected_seq} was expected "
                            "(an entry was removed, inserted or reordered)")
        if entry["prev"] != prev:
            problems.append(f"line {line_no} (seq {entry['seq']}): does not chain to the entry before it "
                            "(an entry was removed, inserted or reordered)")
        count, prev = count + 1, stored
    head_file = head_path(path)
    if head_file.exists():
        try:
            head = json.loads(head_file.read_text())
            if head["count"] != count or head["hash"] != prev:
                problems.append(f"the head file says {head['count']} entries ending in {head['hash'][:16]}..., "
                                f"the log has {count} ending in {prev[:16]}... (truncated or rewritten)")
        except (ValueError, KeyError, TypeError):
            problems.append(f"head file {head_file} is damaged")
    elif lines:
        problems.append(f"head file {head_file} is missing: truncation can't be ruled out")
    if expect_count is not None and expect_count > count:
        problems.append(f"expected at least {expect_count} entries, the log has {count} (truncated)")
    if expect_head is not None and expect_count is not None and expect_count <= len(lines):
        try:
            if json.loads(lines[expect_count - 1])["hash"] != expect_head:
                problems.append(f"entry {expect_count} is not the one recorded elsewhere (rewritten)")
        except (ValueError, KeyError):
            pass
    return Report(count, prev, problems)
