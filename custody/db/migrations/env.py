"""Alembic environment: the URL comes from custody's own config (see custody.db.migrate)."""
import contextlib
import logging
import time

from alembic import context

from custody.db.engine import make_engine
from custody.db.migrate import PROGRESS_LOGGER
from custody.db.schema import metadata
from custody.jobs import locks


# Any constant: two `custody db upgrade` (or two instances' `custody serve`, which migrates at
# start) at once on one PostgreSQL database take turns on it. Without it both read the same
# revision and ran the same migration, each dropping the other's indexes (SQLite's BEGIN
# IMMEDIATE already makes them take turns).
MIGRATION_LOCK = 0x637573746F6479  # "custody"


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    engine = make_engine(url, session_timeouts=False)
    try:
        with _turn(engine):
            with engine.connect().execution_options(custody_write=True) as connection:
                context.configure(
                    connection=connection,
                    target_metadata=metadata,
                    render_as_batch=connection.dialect.name == "sqlite",
                    compare_type=True,
                    # SQLite's DDL is transactional too, but Alembic assumes not and commits after
                    # each migration, having read the revision once: a second upgrade could read it
                    # between two of them and run a migration again. One transaction (BEGIN
                    # IMMEDIATE) makes two upgrades take turns, the second finding nothing to do.
                    transactional_ddl=True,
                )
                with context.begin_transaction():
                    context.run_migrations()
    finally:
        engine.dispose()


@contextlib.contextmanager
def _turn(engine):
    """Holds the migration lock on PostgreSQL, on a session of its own that is never inside a
    transaction: asked for again every 0.2 s rather than waited on in a statement, since CREATE
    INDEX CONCURRENTLY waits for every statement older than itself, and a statement waiting for
    the lock its own session holds would be a deadlock."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock:
        waiting = False
        while not lock.exec_driver_sql(f"SELECT pg_try_advisory_lock({MIGRATION_LOCK})").scalar():
            if not waiting:
                logging.getLogger(PROGRESS_LOGGER).info("waiting for another process's upgrade of this database")
                waiting = True
            time.sleep(0.2)
        locks.keep_while_idle(lock)  # idle while the migrations run on another session
        try:
            yield
        finally:
            lock.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `custody db upgrade`")
run_migrations_online()
