"""The Alembic migrations produce exactly the schema the code declares."""
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
