import re

import pytest

from custody.errors import InvalidArgument
from custody.money import MAX_AMOUNT, parse_amount


@pytest.mark.parametrize("text, value", [("1", 1), ("10", 10), (str(MAX_AMOUNT), MAX_AMOUNT)])
def test_parses_canonical_amounts(text, value):
    assert parse_amount(text) == value


@pytest.mark.parametrize("text, reason", [
    ("", "required"),
    ("0", "greater than zero"),
    ("-1", "negative"),
    ("1.5", "fraction"),
    ("1e3", "fraction"),
    ("01", "leading zeros"),
    (" 1", "leading zeros"),
    ("+1", "leading zeros"),
    ("abc", "leading zeros"),
    ("ten", "decimal digits"),
    ("1.", "fraction"),
    (".5", "fraction"),
    ("1E18", "fraction"),
    ("１", "leading zeros"),  # a full-width digit: str.isdigit() says yes, we say no
    (str(MAX_AMOUNT + 1), "exceeds 2^256-1"),
    ("9" * 200, "exceeds 2^256-1"),
])
def test_refuses_anything_else_with_the_reason(text, reason):
    with pytest.raises(InvalidArgument, match=re.escape(reason)):
        parse_amount(text)


def test_zero_only_where_allowed():
    assert parse_amount("0", allow_zero=True) == 0
