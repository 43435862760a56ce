"""Alembic environment: the URL comes from custody's own config (see custody.db.migrate)."""
from alembic import context

from custody.db.engine import make_engine
from custody.db.schema import metadata


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    engine = make_engine(url)
    with engine.connect().execution_options(custody_write=True) as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `custody db upgrade`")
run_migrations_online()
