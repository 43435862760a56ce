"""Free text from clients and staff: what is refused before it reaches the database."""
import pytest

from custody.errors import InvalidArgument
from custody.text import MAX_MEMO, parse_memo, parse_reason


@pytest.mark.parametrize("bad", ["a\x00b", "\x1b[31mred", "carriage\rreturn", "bell\x07", "del\x7f", "vt\x0b",
                                 "csi\x9b2J", "pay to \u202eredro\u202c", "isolate\u2066x\u2069",
                                 "mark\u200fx", "arabic mark\u061c", "zero\u200bwidth", "bom\ufeff",
                                 "word\u2060joiner", "line\u2028separator", "paragraph\u2029separator"])
def test_control_characters_are_refused(bad):
    with pytest.raises(InvalidArgument, match="control characters"):
        parse_memo(bad)
    with pytest.raises(InvalidArgument, match="control characters"):
        parse_reason("reason " + bad + " end")


def test_a_lone_surrogate_is_refused():
    with pytest.raises(InvalidArgument, match="not valid Unicode"):
        parse_memo("half a pair \ud800")
    with pytest.raises(InvalidArgument, match="not valid Unicode"):
        parse_reason("half a pair \udfff")


def test_tabs_new_lines_and_any_script_are_kept():
    assert parse_memo("a\tb\nc — 家賃") == "a\tb\nc — 家賃"
    assert parse_memo("می\u200cخواهم 👨\u200d👩\u200d👧") == "می\u200cخواهم 👨\u200d👩\u200d👧"  # joiners kept
    assert parse_reason("  two\nlines  ") == "two\nlines"


def test_lengths():
    assert parse_memo(None) == "" and parse_memo("m" * MAX_MEMO) == "m" * MAX_MEMO
    with pytest.raises(InvalidArgument, match="longer"):
        parse_memo("m" * (MAX_MEMO + 1))
    with pytest.raises(InvalidArgument, match="required"):
        parse_reason("  ab  ")
