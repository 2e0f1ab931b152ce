"""Fixtures: every storage test runs on SQLite and on the real PostgreSQL server.

PostgreSQL: one database per test run (``wajah_test_<hex>``, dropped at the end) and one
schema per test, selected through the connection's ``search_path``, so tests that drop the
audit triggers cannot leak into each other. Override the server with
``WAJAH_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``).

Audit details are sealed with the real ``app.crypto.EnvelopeCipher`` over a ``LocalKeyring``
with a fixed test root key.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from app.crypto import EnvelopeCipher, LocalKeyring, RootKey
from app.storage.engine import create_engine_for
from app.storage.migrate import upgrade_database
from tests.conftest import BACKENDS

TEST_ROOT_KEY = bytes(range(32))


@contextmanager
def empty_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[URL]:
    """URL of an empty database (not migrated): a SQLite file in ``tmp_path``, or a schema of
    its own in this run's PostgreSQL database, dropped afterwards."""
    if backend == "sqlite":
        yield make_url(f"sqlite:///{tmp_path / 'wajah.db'}")
        return
    base: URL = request.getfixturevalue("postgres_database")
    schema = f"t_{secrets.token_hex(6)}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield base.update_query_dict({"options": f"-csearch_path={schema}"})
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """URL of an empty database (not migrated) on each backend."""
    with empty_database(request.param, tmp_path, request) as url:
        yield url


@pytest.fixture
def bare_engine(database_url: URL) -> Iterator[Engine]:
    engine = create_engine_for(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def engine(bare_engine: Engine) -> Engine:
    """An engine on a database migrated to head."""
    upgrade_database(bare_engine)
    return bare_engine


@pytest.fixture
def keyring(tmp_path: Path) -> LocalKeyring:
    return LocalKeyring(tmp_path / "keys", RootKey(TEST_ROOT_KEY, source="tests"))


@pytest.fixture
def sealer(keyring: LocalKeyring) -> EnvelopeCipher:
    return EnvelopeCipher(keyring)
