"""The Alembic migrations produce exactly the schema the code declares."""
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from custody.db.engine import make_engine
from custody.db.migrate import alembic_config, current
from custody.db.schema import metadata


def test_migrated_database_matches_the_declared_schema(db_url):
    (head,) = ScriptDirectory.from_config(alembic_config(db_url)).get_heads()  # one linear history
    assert current(db_url) == head
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()
    assert diff == []


def _postgres_at(revision: str) -> str:
    from custody.db.migrate import upgrade
    from tests.support import databases

    url = databases.new_postgres_database()
    engine = make_engine(url)
    with engine.begin() as conn:  # back to an empty database, then up to the revision
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()
    upgrade(url, revision)
    return url


def _indexes(url: str) -> dict[str, str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return dict(conn.exec_driver_sql(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN "
                "('deposits', 'withdrawals', 'withdrawal_batches')").all())
    finally:
        engine.dispose()


@pytest.mark.parametrize("interrupted_after", ["create", "drop"])
def test_migration_0013_run_again_after_an_interruption_finishes_the_job(interrupted_after):
    """CONCURRENTLY runs outside a transaction: a run killed between its steps leaves the indexes
    half swapped, and running the upgrade again must finish the swap, not fail for good."""
    from custody.db.migrate import upgrade
    from tests.support import databases

    url = _postgres_at("0012")
    try:
        engine = make_engine(url)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("CREATE INDEX CONCURRENTLY ix_deposits_account_id_new ON deposits (account_id, id)")
            if interrupted_after == "drop":
                conn.exec_driver_sql("DROP INDEX CONCURRENTLY ix_deposits_account_id")
        engine.dispose()
        upgrade(url)
        assert current(url) == ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        indexes = _indexes(url)
        assert "(account_id, id)" in indexes["ix_deposits_account_id"]
        assert not any(name.endswith("_new") for name in indexes)
    finally:
        databases.drop_postgres_database(url)


def test_two_upgrades_at_once_take_turns(tmp_path):
    """Two `custody db upgrade` (or two instances starting) on one PostgreSQL database."""
    import subprocess
    import sys

    from tests.support import databases

    url = _postgres_at("0012")
    try:
        config = tmp_path / "custody.toml"
        config.write_text(f'[database]\nurl = "{url}"\n')
        runs = [subprocess.Popen([sys.executable, "-m", "custody.cli", "db", "upgrade", "--config", str(config)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(run.wait(300), run.stderr.read()) for run in runs]
        assert [code for code, _ in results] == [0, 0], results
        indexes = _indexes(url)
        assert "(account_id, id)" in indexes["ix_deposits_account_id"] and "ix_withdrawals_account_id" in indexes
        assert not any(name.endswith("_new") for name in indexes)
    finally:
        databases.drop_postgres_database(url)


def test_a_downgrade_below_0006_with_deposits_it_cannot_hold_is_refused_with_a_reason(db_url):
    """0006 widened deposits.status for BELOW_MINIMUM and ASSET_DISABLED; its downgrade shrank the
    column back and failed in the driver ("value too long") on PostgreSQL. It now says why."""
    import datetime

    from alembic import command
    from sqlalchemy import insert, select

    from custody.db import schema as t

    now = datetime.datetime.now(datetime.timezone.utc)
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            account = conn.execute(insert(t.accounts).values(external_id="a", created_at=now, frozen=False)
                                   .returning(t.accounts.c.id)).scalar_one()
            address = conn.execute(insert(t.chain_addresses).values(
                chain="bitcoin", wallet="deposit", branch=0, key_index=0, address="bcrt1qexample", watch_key=b"k",
                account_id=account, created_at=now).returning(t.chain_addresses.c.id)).scalar_one()
            conn.execute(insert(t.deposits).values(
                chain="bitcoin", txid="ab" * 32, output_index=0, address_id=address, account_id=account,
                asset="BTC", amount=1, coinbase=False, status="BELOW_MINIMUM", created_at=now, updated_at=now))
        with pytest.raises(RuntimeError, match="cannot downgrade below 0006: 1 deposits have a status"):
            command.downgrade(alembic_config(db_url), "0005")
        with engine.connect() as conn:  # nothing lost on the way
            assert conn.execute(select(t.deposits.c.status)).scalar_one() == "BELOW_MINIMUM"
    finally:
        engine.dispose()
