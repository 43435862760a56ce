"""Column types for exact money, and stored times read back in UTC.

PostgreSQL stores amounts as NUMERIC(78,0), exact for every integer below
10^78 (> 2^256). SQLite has no exact type that wide (its INTEGER is 64-bit and
NUMERIC falls back to a float), so there amounts are decimal text; the ledger
never compares or sums amounts in SQL, only in Python ints.
"""
import datetime
from decimal import Decimal

from sqlalchemy import Numeric, String
from sqlalchemy.types import TypeDecorator


class Amount(TypeDecorator):
    impl = String(79)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(78, 0, asdecimal=True))
        return dialect.type_descriptor(String(79))

    def bind_processor(self, dialect):
        if dialect.name == "postgresql":
            return _check_int
        return _int_to_text

    def result_processor(self, dialect, coltype):
        return _to_int

    # The TypeDecorator API requires these, but bind_processor and
    # result_processor above replace them on the hot path.
    def process_bind_param(self, value, dialect):  # pragma: no cover
        return value

    def process_result_value(self, value, dialect):  # pragma: no cover
        return value


def _check_int(value):
    if value is None:
        return None
    if type(value) is not int:
        raise TypeError(f"amounts must be int, got {type(value).__name__}")
    return value


def _int_to_text(value):
    if value is None:
        return None
    if type(value) is not int:
        raise TypeError(f"amounts must be int, got {type(value).__name__}")
    return str(value)


def _to_int(value):
    if value is None:
        return None
    if isinstance(value, Decimal):
        integral = int(value)
        if integral != value:
            raise ValueError(f"stored amount is not an integer: {value}")
        return integral
    return int(value)


def as_utc(value: datetime.datetime) -> datetime.datetime:
    """A stored time, aware: SQLite hands back the UTC time it stored without its zone."""
    return value if value.tzinfo is not None else value.replace(tzinfo=datetime.timezone.utc)
