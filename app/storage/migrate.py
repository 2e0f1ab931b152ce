"""Apply Alembic migrations from the installed package (no alembic.ini, no working directory).

>>> engine = create_engine_for("sqlite:///wajah.db")
>>> upgrade_database(engine)          # fresh or older database -> head
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection, Engine

from app.storage.engine import create_engine_for

# Package-resource form: resolved inside the installed package, wherever it lives.
SCRIPT_LOCATION = "app.storage:migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@contextmanager
def _connection(engine_or_url: Engine | str | URL) -> Iterator[Connection]:
    owned = not isinstance(engine_or_url, Engine)
    engine = (
        engine_or_url if isinstance(engine_or_url, Engine) else create_engine_for(engine_or_url)
    )
    try:
        # One transaction for the whole run: both databases have transactional DDL, so a
        # failed migration leaves the schema as it was.
        with engine.begin() as conn:
            yield conn
    finally:
        if owned:
            engine.dispose()


def upgrade_database(engine_or_url: Engine | str | URL, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (default: the newest)."""
    with _connection(engine_or_url) as conn:
        command.upgrade(alembic_config(conn), revision)


def downgrade_database(engine_or_url: Engine | str | URL, revision: str) -> None:
    """Migrate down to ``revision`` (``"base"`` drops every table, audit log included)."""
    with _connection(engine_or_url) as conn:
        command.downgrade(alembic_config(conn), revision)


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
