"""Free text from clients and staff (transfer memos, staff reasons), checked before it is stored.

PostgreSQL text cannot hold NUL, and a lone surrogate cannot be encoded at all:
either would fail the whole write deep in the database layer (a ledger group
commit, a staff action) instead of refusing the one request. Other control
characters and bidirectional overrides are refused too: these strings end up
in logs, events and the backoffice, where a terminal escape, a carriage return
or a right-to-left override could disguise them.
Tabs and new lines are kept; a reason may have several lines.
"""
from __future__ import annotations

import re

from custody.errors import InvalidArgument

MAX_MEMO = 256
MIN_REASON, MAX_REASON = 3, 512

# C0 and C1 controls but tab and new line; the bidirectional overrides, isolates and marks
# that can make text display in another order than it is stored ("Trojan Source"); the
# invisible ones (zero-width space, word joiner and invisible operators, the byte order mark)
# that can make two texts look alike; and the line and paragraph separators, line breaks that
# some viewers show and others do not. Zero-width (non-)joiners stay: scripts such as Persian
# and emoji sequences need them.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064"
                      "\u2066-\u2069\ufeff]")


def _check(value: str, field: str) -> str:
    if _CONTROL.search(value):
        raise InvalidArgument(f"{field} must not contain control characters (other than tab and new line), "
                              f"bidirectional overrides or invisible characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{field} is not valid Unicode text") from None
    return value


def parse_memo(memo: str | None) -> str:
    """An optional memo: empty, or at most MAX_MEMO characters of text."""
    memo = memo or ""
    if len(memo) > MAX_MEMO:
        raise InvalidArgument(f"memo is longer than {MAX_MEMO} characters")
    return _check(memo, "memo")


def parse_reason(reason: str | None) -> str:
    """A staff reason: required, MIN_REASON to MAX_REASON characters once trimmed."""
    reason = (reason or "").strip()
    if not MIN_REASON <= len(reason) <= MAX_REASON:
        raise InvalidArgument(f"reason is required: {MIN_REASON} to {MAX_REASON} characters")
    return _check(reason, "reason")


# A client's name in the config (custody/config.py), and the staff name an operator command records.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def parse_staff(name: str | None) -> str:
    """The staff name an operator command records (--staff): a plain name, so that no escape,
    line break or right-to-left override can make the record read as someone else's."""
    name = (name or "").strip()
    if not NAME.fullmatch(name):
        raise InvalidArgument(f"staff name {name[:64]!r} must be 1 to 64 letters, digits and . _ @ - "
                              "(as client names in the config)")
    return name
