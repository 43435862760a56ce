"""Amounts: Python ints of base units in the domain, strings of decimal digits on the wire.

No floats and no Decimal arithmetic anywhere near amounts: an amount that is
not a canonical decimal integer string is refused, never rounded.
"""
import re

from custody.errors import InvalidArgument

MAX_AMOUNT = 2**256 - 1
# Running totals (an account's debits or credits) are kept in NUMERIC(78,0):
# 78 digits hold about 8.6 times MAX_AMOUNT before anything overflows.
MAX_TOTAL = 10**78 - 1

_CANONICAL = re.compile(r"(0|[1-9][0-9]{0,77})")
_FRACTION_OR_EXPONENT = re.compile(r"[0-9]*\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+(\.[0-9]*)?[eE][+-]?[0-9]+")
_DIGITS = re.compile(r"[0-9]+")


def parse_amount(text: str, field: str = "amount", *, allow_zero: bool = False) -> int:
    """Parses a wire amount. Raises InvalidArgument naming the field and the reason."""
    if not isinstance(text, str) or text == "":
        raise InvalidArgument(f"{field} is required")
    if not _CANONICAL.fullmatch(text):
        if text.startswith("-"):
            raise InvalidArgument(f"{field} must not be negative: {text[:80]!r}")
        if _FRACTION_OR_EXPONENT.fullmatch(text):
            raise InvalidArgument(
                f"{field} must be a whole number of base units, not a fraction: {text[:80]!r}"
            )
        if len(text) > 78 and _DIGITS.fullmatch(text) and text[0] != "0":
            raise InvalidArgument(f"{field} exceeds 2^256-1")
        raise InvalidArgument(
            f"{field} must be decimal digits without sign or leading zeros: {text[:80]!r}"
        )
    value = int(text)
    if value > MAX_AMOUNT:
        raise InvalidArgument(f"{field} exceeds 2^256-1")
    if value == 0 and not allow_zero:
        raise InvalidArgument(f"{field} must be greater than zero")
    return value


def format_amount(value: int) -> str:
    return str(value)
