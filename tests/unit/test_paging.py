"""Page tokens of the list RPCs: what they carry, and what is refused."""
import base64
import json

import pytest
from hypothesis import given, settings, strategies as st

from custody.errors import InvalidArgument
from custody.ledger.model import new_id
from custody.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, parse_page


def token_for(listing, key):
    return base64.urlsafe_b64encode(json.dumps([listing, key]).encode()).rstrip(b"=").decode()


def test_page_sizes():
    assert parse_page(0, "", "deposits:1").size == DEFAULT_PAGE_SIZE
    assert parse_page(1, "", "deposits:1").size == 1
    assert parse_page(MAX_PAGE_SIZE, "", "deposits:1").size == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument, match="page_size must be from 1 to 1000"):
        parse_page(MAX_PAGE_SIZE + 1, "", "deposits:1")
    with pytest.raises(InvalidArgument, match="page_size"):
        parse_page(2**32 - 1, "", "deposits:1")


def test_a_cut_page_carries_a_token_that_resumes_after_its_last_row():
    page = parse_page(3, "", "deposits:7")
    rows, token = page.cut([10, 9, 8, 7], key=lambda r: r)
    assert rows == [10, 9, 8] and token
    following = parse_page(3, token, "deposits:7")
    assert following.after == 8 and following.size == 3
    rows, token = following.cut([7], key=lambda r: r)
    assert rows == [7] and token == "", "the last page has no token"


def test_exactly_a_full_last_page_has_no_token():
    assert parse_page(2, "", "deposits:7").cut([5, 4], key=lambda r: r) == ([5, 4], "")


def test_string_keys_round_trip():
    withdrawal_id = new_id()
    _, token = parse_page(1, "", "withdrawals:3", key_type=str).cut([withdrawal_id, new_id()], key=lambda r: r)
    assert parse_page(1, token, "withdrawals:3", key_type=str).after == withdrawal_id


def test_a_token_of_another_list_is_refused():
    _, token = parse_page(1, "", "deposits:7").cut([2, 1], key=lambda r: r)
    with pytest.raises(InvalidArgument, match="belongs to a different list"):
        parse_page(1, token, "deposits:8")
    with pytest.raises(InvalidArgument, match="belongs to a different list"):
        parse_page(1, token_for("review:PENDING_REVIEW", new_id()), "review:APPROVED", key_type=str)


@pytest.mark.parametrize("token", [
    "not base64 at all!", "x" * 300, "\x00", "ü", token_for("deposits:7", "12"), token_for("deposits:7", -1),
    token_for("deposits:7", 2**63), token_for("deposits:7", True), token_for("deposits:7", 1.5),
    token_for("deposits:7", None), base64.urlsafe_b64encode(b'{"a": 1}').decode(),
    base64.urlsafe_b64encode(b"\xff\xfe").decode(), base64.urlsafe_b64encode(b"[" * 150).decode(),
])
def test_altered_tokens_are_refused(token):
    with pytest.raises(InvalidArgument, match="page_token is not a token this server made"):
        parse_page(10, token, "deposits:7")


@pytest.mark.parametrize("key", ["x\x00y", "A" * 32, "g" * 32, "0" * 31, 5, "'; DROP TABLE withdrawals; --"])
def test_string_keys_must_be_ids(key):
    with pytest.raises(InvalidArgument, match="page_token is not a token this server made"):
        parse_page(10, token_for("withdrawals:3", key), "withdrawals:3", key_type=str)


@settings(deadline=None)  # a loaded CI machine, not a slow function
@given(st.text(max_size=300))
def test_any_text_is_a_token_or_refused_as_bad_input(text):
    try:
        page = parse_page(10, text, "deposits:7")
    except InvalidArgument:
        return
    assert page.after is None if text == "" else type(page.after) is int and 0 <= page.after < 2**63
