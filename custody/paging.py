"""Pages of list RPCs (ListDeposits, ListWithdrawals, the backoffice lists).

A list an account or a status keeps adding to (deposits, completed
withdrawals) cannot be sent whole: past a few thousand items a reply exceeds
gRPC's 4 MiB message limit and the call fails for good, and the query reads
every row each time. So these lists come in pages of page_size items, and a
reply that stops short of the end carries a next_page_token the client sends
back for the next page.

Pages are keyset pages: the token holds the sort key of the last item sent,
and the next page starts after it. Items added meanwhile do not shift the
pages, so none of the items already there is skipped or sent twice (an item
added meanwhile may come in this pass or the next: ids are not committed in
order across transactions and instances). The token also names the list it
belongs to (which RPC, which account or status); a token sent with another
request is refused, as is a malformed one (a key edited within its list is
not: it only moves where the page starts, within what the caller may list).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json

from sqlalchemy import Connection, Select

from custody.errors import InvalidArgument
from custody.events.journal import MAX_CURSOR
from custody.ledger.model import is_id

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_MAX_TOKEN = 256  # characters; tokens made here are well under 150


@dataclasses.dataclass(frozen=True)
class Page:
    listing: str  # the list and its filter, e.g. "deposits:42"
    size: int
    after: int | str | None  # sort key of the last item of the previous page; None for the first page

    def read(self, conn: Connection, query: Select, id_column, newest_first: bool = False) -> tuple[list, str]:
        """(this page of query's rows, ordered by id_column, and the token for the next page):
        the rows after `after`, one more than size read to tell whether more follow."""
        if self.after is not None:
            query = query.where(id_column < self.after if newest_first else id_column > self.after)
        query = query.order_by(id_column.desc() if newest_first else id_column).limit(self.size + 1)
        return self.cut(conn.execute(query).all(), lambda row: row.id)

    def cut(self, rows: list, key) -> tuple[list, str]:
        """(this page's rows, the token for the next page or "" after the last page), from up to
        size + 1 rows read after `after`: the extra row only tells that more follow.
        key(row) is a row's sort key."""
        if len(rows) <= self.size:
            return rows, ""
        rows = rows[:self.size]
        return rows, self.token_after(key(rows[-1]))

    def token_after(self, key) -> str:
        """The token of the page that starts after the item whose sort key is key (for a page
        cut short of size, as AIP-158 allows: a reply must stay well under 4 MiB)."""
        raw = json.dumps([self.listing, key], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def parse_page(page_size: int, page_token: str, listing: str, key_type: type = int) -> Page:
    """The page a request asks for. listing names the list and its filter, e.g. "deposits:42";
    key_type is its sort key's: int (a row number) or str (an id new_id made)."""
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be from 1 to {MAX_PAGE_SIZE} (0 for {DEFAULT_PAGE_SIZE})")
    size = page_size or DEFAULT_PAGE_SIZE
    if not page_token:
        return Page(listing, size, None)
    if len(page_token) > _MAX_TOKEN:
        raise InvalidArgument("page_token is not a token this server made")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(page_token.encode("ascii") + b"=" * (-len(page_token) % 4)))
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise InvalidArgument("page_token is not a token this server made") from None
    if not isinstance(decoded, list) or len(decoded) != 2 or not _valid_key(decoded[1], key_type):
        raise InvalidArgument("page_token is not a token this server made")
    token_listing, after = decoded
    if token_listing != listing:
        raise InvalidArgument("page_token belongs to a different list: send the request it came with, "
                              "changing only page_token")
    return Page(listing, size, after)


def _valid_key(key, key_type: type) -> bool:
    """Checked so that a token with a malformed key is refused here rather than failing in the database."""
    if key_type is int:
        return type(key) is int and 0 <= key <= MAX_CURSOR  # a 64-bit row id
    return is_id(key)
