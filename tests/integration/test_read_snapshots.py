"""read_transaction reads one snapshot on both databases: a commit made between two of its
statements is not seen by the second. On PostgreSQL's default (READ COMMITTED) it was, so a
reader of several tables (the matching engine's load at start: open orders, then the market-data
cursor) could pair a book without a group's fills with a cursor that includes them."""
from sqlalchemy import func, select

from custody.app import Custody
from custody.db import schema as t
from custody.db.engine import read_transaction
from tests.support.config import make_config


def test_a_commit_between_two_reads_is_not_seen_by_the_second(db_url):
    app = Custody(make_config(db_url))
    try:
        app.create_account("before")
        with read_transaction(app.engine) as conn:
            first = conn.execute(select(func.count()).select_from(t.accounts)).scalar_one()
            app.create_account("meanwhile")  # commits on another connection
            second = conn.execute(select(func.count()).select_from(t.accounts)).scalar_one()
        assert first == second == 1
        with read_transaction(app.engine) as conn:
            assert conn.execute(select(func.count()).select_from(t.accounts)).scalar_one() == 2
    finally:
        app.close()
