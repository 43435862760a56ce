"""`custody db upgrade`: runs the Alembic migrations shipped inside the package."""
import logging
import pathlib
from collections.abc import Callable

from alembic import command
from alembic.config import Config as AlembicConfig

MIGRATIONS = pathlib.Path(__file__).parent / "migrations"
PROGRESS_LOGGER = "alembic.runtime.migration"  # Alembic says "Running upgrade A -> B, ..." there


def alembic_config(database_url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head", progress: Callable[[str], None] | None = None) -> None:
    """progress, if given, hears each migration as it starts (one can take minutes on a large
    database) and a wait for another process's upgrade."""
    if progress is None:
        command.upgrade(alembic_config(database_url), revision)
        return
    handler = _Forward(progress)
    logger = logging.getLogger(PROGRESS_LOGGER)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # said once, through progress
    try:
        command.upgrade(alembic_config(database_url), revision)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


class _Forward(logging.Handler):
    def __init__(self, progress: Callable[[str], None]):
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().strip()
        if message.startswith(("Running upgrade", "waiting")):  # not Alembic's "Context impl ..."
            self.progress(" ".join(message.split()))


def current(database_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from custody.db.engine import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def has_schema(database_url: str) -> bool:
    """Whether the URL names a custody database (one `custody db upgrade` created). Checked without
    creating anything: connecting to a SQLite path that does not exist would create the file."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and not (url.database and pathlib.Path(url.database).is_file()):
        return False
    return current(database_url) is not None


def head() -> str:
    """The revision this custody's code needs (the last migration it ships)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
