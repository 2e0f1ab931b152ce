"""Which key-manager store and object store `Runtime.start` picks for a database.

PostgreSQL: both in the database, so replicas that share only the database share keys and
frames. SQLite: files under `WAJAH_HOME`, as before. No connection is made here: the choice
follows the URL (and `WAJAH_OBJECT_STORE`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from app.runtime import keyring_store, object_store
from app.settings import Settings
from app.storage.engine import create_engine_for
from app.storage.keyring import DatabaseKeyringStore
from app.storage.objects import DatabaseObjectStore, LocalObjectStore

POSTGRES = "postgresql+psycopg://wajah@127.0.0.1:5432/wajah"


def _settings(home: Path, url: str | None, choice: str) -> Settings:
    return Settings(home=home, database_url=url, object_store=choice)  # type: ignore[arg-type]


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    engines: list[Engine] = []
    yield engines
    for engine in engines:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "choice", "expected"),
    [
        (None, "auto", LocalObjectStore),
        (POSTGRES, "auto", DatabaseObjectStore),
        (POSTGRES, "local", LocalObjectStore),
        (None, "database", DatabaseObjectStore),
        (POSTGRES, "database", DatabaseObjectStore),
        (None, "local", LocalObjectStore),
    ],
)
def test_object_store_follows_the_database_unless_told(
    tmp_path: Path, engines: list[Engine], url: str | None, choice: str, expected: type
) -> None:
    settings = _settings(tmp_path, url, choice)
    engines.append(create_engine_for(settings.resolved_database_url))
    store = object_store(settings, engines[-1])
    assert type(store) is expected
    if isinstance(store, LocalObjectStore):
        assert store.directory == tmp_path / "objects"


def test_keyring_state_is_in_the_database_only_on_postgresql(
    tmp_path: Path, engines: list[Engine]
) -> None:
    on_sqlite, on_postgres = (
        _settings(tmp_path, None, "auto"),
        _settings(tmp_path, POSTGRES, "auto"),
    )
    engines += [create_engine_for(s.resolved_database_url) for s in (on_sqlite, on_postgres)]
    # None: `build_kms` keeps its default, the file under home/keys.
    assert keyring_store(on_sqlite, engines[0]) is None
    store = keyring_store(on_postgres, engines[1])
    assert isinstance(store, DatabaseKeyringStore)
    assert store.name == "keyring"


def test_object_store_setting_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WAJAH_OBJECT_STORE", "database")
    assert Settings(home=tmp_path).object_store == "database"
    monkeypatch.setenv("WAJAH_OBJECT_STORE", "s3")
    with pytest.raises(ValueError, match="object_store"):
        Settings(home=tmp_path)
