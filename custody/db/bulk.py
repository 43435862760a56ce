"""Fast multi-row writes for the ledger's hot path.

SQLAlchemy's executemany builds and processes a parameter dict per row, which
is most of the cost of a 1,000-transfer group commit. Here rows are tuples:
PostgreSQL gets them through COPY (one round trip for the whole group) and
SQLite through the driver's executemany, with each column's SQLAlchemy bind
processor (precomputed once per table) applied so values are stored exactly
as the ORM-level code stores them.
"""
from __future__ import annotations

import datetime
import json
from decimal import Decimal
from typing import Sequence

from psycopg.adapt import Dumper
from sqlalchemy import BigInteger, Connection, String, Table, and_, any_, bindparam, false, func, or_, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError


def insert_rows(conn: Connection, table: Table, columns: Sequence[str], rows: list[tuple]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
        cursor = conn.connection.driver_connection.cursor()
        cursor.adapters.register_dumper(datetime.datetime, _StampDumper)
        try:
            with cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _sqlalchemy_error(conn, statement, None, exc) from exc
        return
    placeholders = ", ".join("?" for _ in columns)
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({placeholders})"
    _executemany(conn, sql, _bind(conn, table, columns, rows))


class _StampDumper(Dumper):
    """A datetime for COPY as str() writes it, which PostgreSQL parses to the
    same instant (with its offset; a naive one in the session's time zone, as
    psycopg's own would be). Each dumper belongs to one cursor, and a group's
    rows share one or two timestamps: the last one's text is kept. psycopg's
    own datetime dumper cost about 1.5 us more of client CPU a row in a COPY
    of 5,000 ledger batch rows (3.1 against 1.55 us)."""

    def __init__(self, cls, context=None):
        super().__init__(cls, context)
        self._last = self._text = None

    def dump(self, obj):
        if obj is not self._last:
            self._last, self._text = obj, str(obj).encode()
        return self._text


def update_rows(conn: Connection, table: Table, columns: Sequence[str], rows: list[tuple]) -> None:
    """UPDATE table SET columns[1:] WHERE columns[0] = value, for rows with distinct keys.

    PostgreSQL gets one statement with a column array each (unnest), as in
    update_account_totals: psycopg's executemany costs a pipelined statement
    and some Python per row. SQLite gets the driver's executemany."""
    if not rows:
        return
    key, *values = columns
    if conn.dialect.name == "postgresql":
        # text, not the column's VARCHAR(n): casting to VARCHAR(n) cuts a longer value short without
        # a word (a key one character longer updated another row); assigning text raises instead.
        types = [_array_element_type(conn, table.c[name].type) for name in columns]
        arrays = ", ".join(f"%s::{kind}[]" for kind in types)
        conn.exec_driver_sql(
            f"UPDATE {table.name} AS t SET {', '.join(f'{c} = v.{c}' for c in values)} "
            f"FROM unnest({arrays}) AS v({', '.join(columns)}) WHERE t.{key} = v.{key}",
            tuple(map(array_literal, zip(*rows))),
        )
        return
    sql = f"UPDATE {table.name} SET {', '.join(f'{c} = ?' for c in values)} WHERE {key} = ?"
    # The driver binds in statement order: the key comes last.
    _executemany(conn, sql, [(*row[1:], row[0]) for row in _bind(conn, table, columns, rows)])


def _array_element_type(conn: Connection, kind) -> str:
    return "text" if isinstance(kind, String) else kind.compile(dialect=conn.dialect)


def _bind(conn: Connection, table: Table, columns: Sequence[str], rows: list) -> list:
    """rows with each column's SQLAlchemy bind processor applied (PostgreSQL's psycopg takes the values as they are)."""
    if conn.dialect.name == "postgresql":
        return rows
    processors = [(i, p) for i, p in enumerate(_processors(conn, table, tuple(columns))) if p]
    if not processors:
        return rows
    # Column by column: each distinct value is processed once (a group's rows
    # share one timestamp), and the transposing is done by zip in C rather
    # than per row in Python.
    cols = list(zip(*rows))
    for i, process in processors:
        converted = {v: None if v is None else process(v) for v in set(cols[i])}
        cols[i] = map(converted.__getitem__, cols[i])
    return list(zip(*cols))


def update_account_totals(conn: Connection, rows: list[tuple[int, int, int]]) -> None:
    """rows: (ledger account id, debits, credits)."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        ids, debits, credits = zip(*rows)
        conn.exec_driver_sql(
            "UPDATE ledger_accounts AS a SET debits = v.debits, credits = v.credits "
            "FROM unnest(%(ids)s::bigint[], %(debits)s::numeric[], %(credits)s::numeric[]) AS v(id, debits, credits) "
            "WHERE a.id = v.id",
            {"ids": int_array(ids), "debits": int_array(debits), "credits": int_array(credits)},
        )
        return
    _executemany(conn, "UPDATE ledger_accounts SET debits = ?, credits = ? WHERE id = ?",
                 [(str(d), str(c), i) for i, d, c in rows])


_cache: dict[tuple, tuple] = {}


def _processors(conn: Connection, table: Table, columns: tuple[str, ...]) -> tuple:
    key = (conn.dialect.name, table.name, columns)
    if key not in _cache:
        _cache[key] = tuple(table.c[name].type._cached_bind_processor(conn.dialect) for name in columns)
    return _cache[key]


# Up to this many values, SQLite gets one parameter per value (its plain IN list); above it, one
# JSON parameter. A statement may bind at most 32,766 parameters on SQLite (its default build) and
# 65,535 on PostgreSQL: a list of a scanned block group's txids or addresses past that failed the
# group, and with it every later scan (found by the deposits review).
SQLITE_IN_LIST_MAX = 1000


def in_values(conn: Connection, column, values):
    """column IN values, with one parameter however many values: an array on PostgreSQL, and on
    SQLite a JSON list past SQLITE_IN_LIST_MAX values."""
    values = list(values)
    if not values:
        return false()
    if conn.dialect.name == "postgresql":
        kind = BigInteger() if isinstance(values[0], int) else String()
        return column == any_(bindparam(None, values, type_=ARRAY(kind)))
    if len(values) <= SQLITE_IN_LIST_MAX:
        return column.in_(values)
    each = func.json_each(bindparam(None, json.dumps(values), type_=String())).table_valued("value")
    return column.in_(select(each.c.value))


def in_pairs(conn: Connection, first, second, pairs):
    """(first, second) IN pairs, written so that a (first, second) index is used.

    A row-value IN list makes SQLite scan the whole table (seen with EXPLAIN
    QUERY PLAN), which grows with every idempotency key ever stored. Grouped by
    the first column (a client, an asset: few per group) each branch is an
    index search on both columns."""
    grouped = _by_first(pairs)
    if not grouped:
        return false()
    return or_(*(and_(first == a, in_values(conn, second, bs)) for a, bs in grouped.items()))


def select_by_ids(conn: Connection, table: Table, columns: Sequence[str], ids, *, lock: bool = False) -> list[tuple]:
    """SELECT columns (names or SQL expressions) FROM table WHERE id IN ids ORDER BY id [FOR UPDATE on PostgreSQL].

    Straight to the driver with one parameter for all ids: this runs once per
    group commit and SQLAlchemy's per-parameter work was a tenth of its cost.
    Amount columns come back as ints (see to_int)."""
    ids = list(ids)
    if not ids:
        return []
    names = ", ".join(columns)
    if conn.dialect.name == "postgresql":
        if type(ids[0]) is int:
            kind, values = "bigint[]", int_array(ids)
        else:  # text ids (holds)
            kind, values = "text[]", array_literal(ids)
        sql = (f"SELECT {names} FROM {table.name} WHERE id = ANY(%s::{kind}) ORDER BY id"
               + (" FOR UPDATE" if lock else ""))
        return fetch_rows(conn, sql, (values,))
    sql = f"SELECT {names} FROM {table.name} WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id"
    return fetch_rows(conn, sql, (json.dumps(ids),))


def int_array(values) -> str:
    """A PostgreSQL array literal of ints, e.g. '{1,2,3}', for a ::bigint[] or ::numeric[] parameter.

    psycopg dumps a list parameter element by element in Python (a regex per
    element to decide on quoting): 11 per transfer on the ledger's hot path.
    Decimal digits need no quoting, and the server parses the literal exactly."""
    return "{" + ",".join(map(str, values)) + "}"


def array_literal(values) -> str:
    """A PostgreSQL array literal of values (ints, strings, datetimes, None), for a
    ::type[] parameter; what psycopg sends for a list, without its per-element cost.

    psycopg dumps a list element by element in Python: 1 us per string, 2.3 us
    per datetime; these arrays carry a column per changed hold or order of a
    group commit. Strings are quoted with the array syntax's escapes; other
    values are written as str() writes them, which PostgreSQL parses (a
    datetime with its offset), each distinct one once: a group's rows share
    one timestamp."""
    other: dict = {}
    out = []
    for v in values:
        if v is None:
            out.append("NULL")
        elif type(v) is str:
            out.append('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif type(v) is int:
            out.append(str(v))
        else:
            element = other.get(v)
            if element is None:
                element = other[v] = '"' + str(v) + '"'
            out.append(element)
    return "{" + ",".join(out) + "}"


def _by_first(pairs) -> dict:
    """first value -> the second values paired with it."""
    grouped: dict = {}
    for a, b in pairs:
        grouped.setdefault(a, []).append(b)
    return grouped


def select_by_pairs(conn: Connection, table: Table, columns: Sequence[str], first: str, second: str,
                    pairs) -> list[tuple]:
    """SELECT columns FROM table WHERE (first, second) IN pairs (second values text), one driver-level
    statement per distinct first value (a client scope, an asset: few per group),
    each an index search on (first, second); see in_pairs for why not a row-value IN."""
    grouped = _by_first(pairs)
    names = ", ".join(columns)
    rows: list[tuple] = []
    for a, bs in grouped.items():
        if conn.dialect.name == "postgresql":
            sql = f"SELECT {names} FROM {table.name} WHERE {first} = %s AND {second} = ANY(%s::text[])"
            rows += fetch_rows(conn, sql, (a, array_literal(bs)))
        else:
            sql = f"SELECT {names} FROM {table.name} WHERE {first} = ? AND {second} IN (SELECT value FROM json_each(?))"
            rows += fetch_rows(conn, sql, (a, json.dumps(bs)))
    return rows


def fetch_rows(conn: Connection, sql: str, params) -> list[tuple]:
    """The driver's rows as plain tuples: SQLAlchemy's Row objects cost about a
    microsecond each, and a group commit reads a row per hold and per account."""
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(sql, params)
        return cursor.fetchall()
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _sqlalchemy_error(conn, sql, params, exc) from exc
    finally:
        cursor.close()


def _executemany(conn: Connection, sql: str, rows: list) -> None:
    """The driver's executemany: SQLAlchemy's statement handling costs about
    25 us per statement, and a group commit runs several whatever its size."""
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.executemany(sql, rows)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _sqlalchemy_error(conn, sql, None, exc) from exc
    finally:
        cursor.close()


def _sqlalchemy_error(conn: Connection, sql: str, params, exc: Exception) -> DBAPIError:
    """What SQLAlchemy would have raised, so callers handle one family of
    database errors (IntegrityError, OperationalError...)."""
    return DBAPIError.instance(sql, params, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect)


def to_int(value) -> int:
    """An amount as the driver returns it (Decimal from NUMERIC, text from SQLite) as an int."""
    if type(value) is str:  # SQLite's text, the common case
        return int(value)
    if type(value) is Decimal:
        integral = int(value)
        if integral != value:
            raise ValueError(f"stored amount is not an integer: {value}")
        return integral
    return int(value)
