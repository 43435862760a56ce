"""`custody db upgrade`: runs the Alembic migrations shipped inside the package."""
import pathlib

from alembic import command
from alembic.config import Config as AlembicConfig

MIGRATIONS = pathlib.Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


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
