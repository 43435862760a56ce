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
