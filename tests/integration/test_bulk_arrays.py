"""bulk.array_literal: what PostgreSQL reads back is exactly what was written."""
import datetime

from custody.db.bulk import array_literal
from custody.db.engine import make_engine


def test_array_literals_round_trip(pg_url):
    texts = ['plain', 'a "quoted" word', 'back\\slash', '{braces},commas', 'NULL', '', None, ' spaced ']
    ints = [0, -1, 2**256 - 1, None]
    now = datetime.datetime(2026, 11, 25, 9, 30, 0, 123456, tzinfo=datetime.timezone.utc)
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT %s::text[], %s::numeric[], %s::timestamptz[]",
                (array_literal(texts), array_literal(ints), array_literal([now, None, now])),
            ).one()
    finally:
        engine.dispose()
    assert row[0] == texts
    assert [None if v is None else int(v) for v in row[1]] == ints
    assert row[2] == [now, None, now]


def test_copied_timestamps_are_the_instants_written(pg_url):
    """insert_rows sends datetimes to COPY as text (bulk._StampDumper): the same instants come back."""
    from sqlalchemy import select

    from custody.db import schema as t
    from custody.db.bulk import insert_rows
    from custody.db.engine import write_transaction

    stamps = [
        datetime.datetime(2026, 11, 25, 9, 30, 0, 123456, tzinfo=datetime.timezone.utc),
        datetime.datetime(2026, 11, 25, 9, 30, 0, tzinfo=datetime.timezone.utc),  # str() leaves out .000000
        datetime.datetime(2026, 11, 25, 10, 30, 0, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
    ]
    engine = make_engine(pg_url)
    try:
        with write_transaction(engine) as conn:
            insert_rows(conn, t.events, ("cursor", "type", "payload", "created_at"),
                        [(1000 + i, "test", "{}", s) for i, s in enumerate(stamps)])
            back = conn.execute(select(t.events.c.created_at).where(t.events.c.cursor >= 1000)
                                .order_by(t.events.c.cursor)).scalars().all()
            conn.rollback()
    finally:
        engine.dispose()
    assert back == stamps


def test_update_rows_never_cuts_a_key_or_a_value_short(db_url, request):
    """PostgreSQL: the column arrays were cast to the columns' VARCHAR(n), which cuts a longer value
    short without a word: an update keyed one hold id plus more updated that hold, and a status too
    long was stored cut. Now the key matches nothing and the long value is refused, as on SQLite
    for the key (SQLite keeps any length, so there the long status is stored whole)."""
    import pytest
    from sqlalchemy import insert, select
    from sqlalchemy.exc import DBAPIError

    from custody.db import schema as t
    from custody.db.bulk import update_rows
    from custody.db.engine import write_transaction

    now = datetime.datetime.now(datetime.timezone.utc)
    engine = make_engine(db_url)
    columns = ("id", "remaining", "status", "closed_at")
    request.node.skip_invariants = True  # a hold row written here, not by the ledger
    try:
        with write_transaction(engine) as conn:
            account = conn.execute(insert(t.accounts).values(external_id="bulk", created_at=now, frozen=False)
                                   .returning(t.accounts.c.id)).scalar_one()
            conn.execute(insert(t.ledger_holds).values(id="a" * 32, account_id=account, asset="BTC", amount=5,
                                                       remaining=5, status="OPEN", created_at=now))
        with write_transaction(engine) as conn:
            update_rows(conn, t.ledger_holds, columns, [("a" * 32 + "-another-hold", 0, "CLOSED", now)])
        if engine.dialect.name == "postgresql":
            with pytest.raises(DBAPIError, match="too long"):
                with write_transaction(engine) as conn:
                    update_rows(conn, t.ledger_holds, columns, [("a" * 32, 0, "CLOSED-" + "x" * 16, now)])
        with engine.connect() as conn:
            assert conn.execute(select(t.ledger_holds.c.remaining, t.ledger_holds.c.status)).one() == (5, "OPEN")
    finally:
        engine.dispose()
