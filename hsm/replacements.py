"""What the signer remembers of what it signed: which spends the rolling 24-hour limit has already
counted (so a fee bump counts once), the amounts inputs were signed with, the coins that paid a withdrawal.

A replacement (RBF) spends exactly the same inputs as the transaction it
replaces, so at most one of them can ever confirm: when it also pays exactly
the same external outputs, it moves no new money and must not use up the
allowance a second time. The key of a spend is SHA-256 over the chain, its
sorted inputs and its sorted external (destination, amount) pairs; anything
else (another input, another payee or amount) is a new spend and counts.
Kept in SQLite (limits_db) so a restart of the signer changes nothing.
Only one of a spend and its fee bumps can confirm, so the fees limit counts the
highest fee signed for a spend once: each spend keeps the fee counted so far,
and a bump counts only what it pays above it.
Bitcoin only: an Ethereum replacement (same nonce) still counts each time,
which errs on the side of refusing.

The same database remembers the amount and script each signed Bitcoin input
was claimed with (its PSBT witness_utxo). A segwit v0 signature commits to the
amount of its own input only, so two requests for one transaction that each
understate a different input would each show a small fee, yet their signatures
combine into a valid transaction paying the difference to miners
(CVE-2020-14199). Every valid signature needs the input's true amount, so such
a pair always claims two amounts for one outpoint: a claim that differs from
the one signed before is refused (Policy, rule "inputs").

And it remembers which coins first paid each approved withdrawal: a later
transaction using that withdrawal's approvals must spend all of them (a fee
bump does), so any two payments of one withdrawal conflict and at most one
can confirm (Policy, rule "approvals").

The audit log is the record of what was signed; this file is written first
(under the signer's lock, before the request's audit entries), so a crash
between the two can leave rows for a signature that was never handed out or
logged. Each row keeps the audit sequence of the decision that wrote it, and
at start rows beyond the log's last entry are dropped: kept, a retry of that
request would pass as a fee bump of a spend already counted and skip the
rolling limits. A spend's row touched by a lost bump is dropped whole, so its
next bump counts again (errs on the side of refusing).

It also notes that an audit log was started (before the log's first entry is
written): the rolling limits live in the log alone, so a log deleted or moved
away (or an audit_log path mistyped) would otherwise restart them from zero
unseen whenever this file holds no rows, as for a signer that has signed only
Ethereum payments. An empty or missing log is then refused, unless the operator
says the log is lost for good (log_lost): the rows are kept, no longer tied to
the lost log's sequences.
"""
from __future__ import annotations

import hashlib
import pathlib
import sqlite3
import threading

from hsm.decode import Explained
from hsm.errors import SignerError
from hsm.signed_inputs import SignedInputs


def spend_key(tx: Explained) -> str | None:
    """The key of tx's spend, or None when it has no inputs to compare (Ethereum). The inputs are
    the ones the decoder read from the transaction it signs (Explained.inputs)."""
    if tx.chain != "bitcoin":
        return None
    inputs = sorted((txid, int(vout)) for txid, vout in (outpoint.split(":") for outpoint, _, _ in tx.inputs))
    paid = sorted((t.destination, t.asset, t.amount) for t in tx.transfers if not t.internal)
    text = repr((tx.chain, inputs, paid)).encode()
    return hashlib.sha256(text).hexdigest()


_TABLES = ("counted_spends", "signed_inputs", "withdrawal_first_spends")
# Decisions that may be in limits_db but not in the log after a crash: those written under the lock
# but not yet fsynced (a group commit's worth, with margin). More means the log was replaced or cut.
LOST_DECISIONS_AT_MOST = 1_000
# limits_db notes the audit sequence of the decisions that write it, once per this many sequences: on
# every write it cost a fifth of a durable signature (one more page per commit).
SEQ_NOTED_EVERY = 1_000


class StateMismatch(Exception):
    """limits_db and the audit log are not each other's (hsm/service.py turns this into a refusal)."""


class LimitsDbUnreadable(SignerError):
    """limits_db is not an SQLite database (a wrong path in [state], a damaged file)."""


class CountedSpends:
    def __init__(self, path: pathlib.Path, durable: bool = True, logged_up_to: int | None = None,
                 last_recorded_signed: int = 0, log_lost: bool = False):
        """logged_up_to: the audit log's last sequence; rows written by later decisions are dropped.
        last_recorded_signed: the log's last signed decision that wrote this file (every Bitcoin one, an
        Ethereum first payment of an approved withdrawal), which this file must have seen.
        log_lost: the operator says the audit log is lost for good; an empty one is accepted."""
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            self._create_tables(durable)
        except sqlite3.DatabaseError as exc:  # "file is not a database": one line naming the file
            self._db.close()
            raise LimitsDbUnreadable(f"limits_db {path} can't be used: {exc} (a wrong path in [state], or a "
                                     "damaged file: restore it from a backup)") from None
        self.dropped: dict[str, int] = {}
        self._noted = 0
        self.log_started = bool(self._db.execute("SELECT count(*) FROM meta WHERE name = 'audit_log_started'")
                                .fetchone()[0])
        self.forgot_log = False  # log_lost, and this file held what the lost log was (rows, or that it was started)
        self._lock = threading.Lock()
        if logged_up_to is not None:
            self._check_against_log(logged_up_to, last_recorded_signed, log_lost)
            self.dropped = {table: self._db.execute(f"DELETE FROM {table} WHERE audit_seq > ?",
                                                    (logged_up_to,)).rowcount for table in _TABLES}
            if logged_up_to:
                self.note_log_started()  # a log begun before this was noted
        self._inputs = SignedInputs(self._db)

    def _create_tables(self, durable: bool) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute("CREATE TABLE IF NOT EXISTS counted_spends (spend_key TEXT PRIMARY KEY, at_s REAL NOT NULL, "
                         "fee TEXT NOT NULL DEFAULT '0')")
        if "fee" not in {row[1] for row in self._db.execute("PRAGMA table_info(counted_spends)")}:
            # A file from before fees were limited: its spends' fees count as 0, so a bump of one of
            # them counts its whole fee (errs on the side of refusing, for one window at most).
            self._db.execute("ALTER TABLE counted_spends ADD COLUMN fee TEXT NOT NULL DEFAULT '0'")
        self._db.execute("CREATE TABLE IF NOT EXISTS signed_inputs "
                         "(outpoint TEXT PRIMARY KEY, amount INTEGER NOT NULL, script BLOB NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS withdrawal_first_spends "
                         "(withdrawal_id TEXT NOT NULL, outpoint TEXT NOT NULL, PRIMARY KEY (withdrawal_id, outpoint))")
        for table in _TABLES:
            if "audit_seq" not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
                # Rows from before: NULL, kept (their decisions were logged long ago).
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN audit_seq INTEGER")
        # The sequence of the last decision that wrote here (absent in files from before it was kept),
        # and audit_log_started once a log has been written.
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")

    def note_log_started(self) -> None:
        """Called before the audit log's first entry is written (and at start, for a log begun before)."""
        if self.log_started:
            return
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('audit_log_started', 1)")
        self.log_started = True

    def _check_against_log(self, logged_up_to: int, last_recorded_signed: int, log_lost: bool) -> None:
        rows = sum(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in _TABLES)
        newest = max((self._db.execute(f"SELECT max(audit_seq) FROM {table}").fetchone()[0] or 0
                      for table in _TABLES), default=0)
        written = self._db.execute("SELECT value FROM meta WHERE name = 'last_audit_seq'").fetchone()
        if logged_up_to == 0 and (rows or self.log_started):
            if not log_lost:
                raise StateMismatch("the audit log is empty or missing, but limits_db "
                                    + (f"holds {rows} rows of signatures made before: a new log would wipe them"
                                       if rows else "says a log was started: its rolling 24h limits would "
                                                    "restart from zero"))
            # Kept, as rows from before sequences were kept: the lost log's numbers mean nothing to the new one.
            self._db.execute("BEGIN IMMEDIATE")
            for table in _TABLES:
                self._db.execute(f"UPDATE {table} SET audit_seq = NULL")
            self._db.execute("DELETE FROM meta WHERE name = 'last_audit_seq'")
            self._db.execute("COMMIT")
            self.forgot_log = True
            return
        if newest > logged_up_to + LOST_DECISIONS_AT_MOST:
            raise StateMismatch(f"limits_db holds decision {newest}, the audit log ends at {logged_up_to}: "
                                "the log was replaced or cut")
        self._noted = written[0] if written is not None else 0
        if written is not None and written[0] + SEQ_NOTED_EVERY < last_recorded_signed:
            raise StateMismatch(f"limits_db was last written by decision {written[0]}, but the audit log signed "
                                f"decision {last_recorded_signed}, which wrote it, after that: an older copy of the file "
                                "(restored from a backup, or copied without its -wal file)")

    def counted_since(self, key: str, since_s: float) -> int | None:
        """The fee counted for the spend named key if it was counted after since_s, else None."""
        with self._lock:
            row = self._db.execute("SELECT at_s, fee FROM counted_spends WHERE spend_key = ?", (key,)).fetchone()
        return int(row[1]) if row is not None and row[0] > since_s else None

    def claimed_otherwise(self, inputs) -> list[tuple[str, int, bytes, int, bytes]]:
        """(outpoint, amount, script, amount signed before, script signed before) of each input
        whose claim differs from the one signed before."""
        differ = []
        with self._lock:
            for outpoint, amount, script in inputs:
                before = self._inputs.claim(outpoint)
                if before is not None and before != (amount, script):
                    differ.append((outpoint, amount, script, *before))
        return differ

    def first_spends(self, withdrawal_ids) -> dict[str, set[str]]:
        """withdrawal id -> the outpoints of the first transaction signed for it, for those paid before."""
        ids = list(withdrawal_ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        out: dict[str, set[str]] = {}
        with self._lock:
            for withdrawal_id, outpoint in self._db.execute(
                    f"SELECT withdrawal_id, outpoint FROM withdrawal_first_spends WHERE withdrawal_id IN ({marks})",
                    ids):
                out.setdefault(withdrawal_id, set()).add(outpoint)
        return out

    def add(self, key: str | None, at_s: float, inputs=(), paid_first=(), fee: int = 0, replaces: bool = False,
            audit_seq: int | None = None, spends=()) -> None:
        """Records a signed spend's key and the fee counted for it (replaces: a bump of a spend
        counted before, whose counted fee becomes the higher of the two), its inputs' claims and,
        for the withdrawals it is the first to pay (paid_first), what it uses up (spends: Bitcoin
        outpoints, an Ethereum sender's nonce): in one commit.
        audit_seq: the sequence its decision will have in the audit log."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if key is not None and replaces:
                    # Decimal text, compared here: wei would not fit SQLite's integers.
                    row = self._db.execute("SELECT fee FROM counted_spends WHERE spend_key = ?", (key,)).fetchone()
                    if row is not None and fee > int(row[0]):
                        self._db.execute("UPDATE counted_spends SET fee = ?, audit_seq = ? WHERE spend_key = ?",
                                         (str(fee), audit_seq, key))
                elif key is not None:
                    self._db.execute("INSERT OR REPLACE INTO counted_spends (spend_key, at_s, fee, audit_seq) "
                                     "VALUES (?, ?, ?, ?)", (key, at_s, str(fee), audit_seq))
                self._db.executemany("INSERT OR IGNORE INTO signed_inputs (outpoint, amount, script, audit_seq) "
                                     "VALUES (?, ?, ?, ?)", [(*i, audit_seq) for i in inputs])
                self._db.executemany("INSERT OR IGNORE INTO withdrawal_first_spends (withdrawal_id, outpoint, "
                                     "audit_seq) VALUES (?, ?, ?)",
                                     [(w, spent, audit_seq) for w in paid_first for spent in spends])
                note = audit_seq is not None and audit_seq >= self._noted + SEQ_NOTED_EVERY
                if note:
                    self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('last_audit_seq', ?)",
                                     (audit_seq,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if note:
                self._noted = audit_seq
            self._inputs.signed(inputs)

    def close(self) -> None:
        self._db.close()
