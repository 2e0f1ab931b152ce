"""The object store's contract, run on every backend (a directory, and the database on SQLite
and PostgreSQL), then what only the directory store promises (its layout on disk, atomic
file replacement)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.storage.engine import create_engine_for
from app.storage.migrate import upgrade_database
from app.storage.objects import (
    DatabaseObjectStore,
    InvalidObjectKeyError,
    LocalObjectStore,
    ObjectNotFoundError,
    ObjectStore,
)
from app.storage.schema import sealed_objects
from tests.app.storage.conftest import empty_database

STORES = ["local", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
# Past the coarse clock file systems stamp mtimes with (a few ms), so "before" and "after"
# a moment are unambiguous on every store.
CLOCK_MARGIN_S = 0.05


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalObjectStore(tmp_path / "objects")
        return
    with empty_database(request.param, tmp_path, request) as url:
        engine = create_engine_for(url)
        try:
            upgrade_database(engine)
            yield DatabaseObjectStore(engine)
        finally:
            engine.dispose()


@pytest.fixture
def local_store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def _all_keys(store: ObjectStore) -> list[str]:
    return sorted(store.keys_written_before(datetime.now(UTC) + timedelta(days=1)))


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ----- the contract -------------------------------------------------------------------------
def test_put_get_delete_round_trip(store: ObjectStore) -> None:
    data = random.Random(7).randbytes(4096)
    assert isinstance(store, ObjectStore)
    store.put("frm_abc", data)
    assert store.get("frm_abc") == data
    assert store.exists("frm_abc") is True
    assert _all_keys(store) == ["frm_abc"]
    assert store.delete("frm_abc") is True
    assert store.exists("frm_abc") is False
    assert store.delete("frm_abc") is False
    assert _all_keys(store) == []


def test_a_bytearray_is_stored_as_its_bytes(store: ObjectStore) -> None:
    # The envelope's detached payload is the bytearray it was encrypted into.
    data = bytearray(random.Random(11).randbytes(300_000))
    store.put("frm_big", data)
    got = store.get("frm_big")
    assert (type(got), len(got), got) == (bytes, 300_000, bytes(data))


def test_missing_key_raises_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError, match="no object 'frm_missing'") as info:
        store.get("frm_missing")
    assert info.value.key == "frm_missing"
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize(
    "key",
    ["", "../escape", "a/b", "/etc/passwd", "..", ".hidden", "a\\b", "a\x00b", "é", "k" * 201],
)
def test_keys_that_could_escape_or_hide_are_refused(
    store: ObjectStore, tmp_path: Path, key: str
) -> None:
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.delete(key),
        lambda: store.exists(key),
    ):
        with pytest.raises(InvalidObjectKeyError):
            call()
    assert _all_keys(store) == []
    assert [f for f in _all_files(tmp_path) if not f.startswith("wajah.db")] == []


def test_the_longest_key_is_accepted(store: ObjectStore) -> None:
    key = "k" * 200
    store.put(key, b"x")
    assert (store.get(key), _all_keys(store)) == (b"x", [key])


def test_put_replaces_an_existing_object(store: ObjectStore) -> None:
    store.put("frm_1", b"old")
    store.put("frm_1", b"new")
    assert store.get("frm_1") == b"new"
    assert _all_keys(store) == ["frm_1"]


def test_keys_written_before_a_moment(store: ObjectStore) -> None:
    for key in ("frm_old", "other_old", "frm_rewritten"):
        store.put(key, b"x")
    time.sleep(CLOCK_MARGIN_S)
    moment = datetime.now(UTC)
    time.sleep(CLOCK_MARGIN_S)
    for key in ("frm_new", "frm_rewritten"):  # a rewrite counts from its last write
        store.put(key, b"y")
    assert sorted(store.keys_written_before(moment)) == ["frm_old", "other_old"]
    assert _all_keys(store) == ["frm_new", "frm_old", "frm_rewritten", "other_old"]
    assert list(store.keys_written_before(moment - timedelta(hours=1))) == []


def test_keys_can_be_deleted_while_they_are_listed(store: ObjectStore) -> None:
    # The orphan sweep deletes what the listing hands it, batch by batch.
    keys = [f"frm_{i:04d}" for i in range(25)]
    for key in random.Random(3).sample(keys, len(keys)):
        store.put(key, b"x")
    later = datetime.now(UTC) + timedelta(seconds=5)
    seen = []
    for key in store.keys_written_before(later):
        seen.append(key)
        assert store.delete(key) is True
    assert (sorted(seen), _all_keys(store)) == (keys, [])


# ----- the database store ------------------------------------------------------------------
def test_database_store_lists_page_by_page(engine: Engine) -> None:
    store = DatabaseObjectStore(engine, page_size=2)
    keys = [f"frm_{i}" for i in range(5)]
    for key in keys:
        store.put(key, key.encode())
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert list(store.keys_written_before(later)) == keys  # key order, over 3 pages
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sealed_objects.c.key, sealed_objects.c.data)).all()
    assert sorted(tuple(r) for r in rows) == [(k, k.encode()) for k in keys]


def test_database_store_refuses_a_naive_cutoff(engine: Engine) -> None:
    # Which zone a naive moment is in is a guess; the database store refuses to make it.
    with pytest.raises(ValueError, match="naive cutoff"):
        DatabaseObjectStore(engine).keys_written_before(datetime.now())


# ----- the directory store -----------------------------------------------------------------
def test_local_layout_is_sharded_and_private(local_store: LocalObjectStore, tmp_path: Path) -> None:
    local_store.put("frm_abc", b"x")
    # Sharded by SHA-256(key): "714d..." -> 71/4d/frm_abc
    assert _all_files(tmp_path / "objects") == ["71/4d/frm_abc"]
    assert oct((tmp_path / "objects/71/4d/frm_abc").stat().st_mode & 0o777) == "0o600"


def test_local_overwrite_is_atomic_and_a_failed_write_keeps_the_old_object(
    local_store: LocalObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_store.put("frm_1", b"old")
    local_store.put("frm_1", b"new")

    def crash(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    # A crash between writing the temp file and renaming it: readers still see the old
    # object and no temp file is left behind.
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk on fire"):
        local_store.put("frm_1", b"newer")
    monkeypatch.undo()
    assert local_store.get("frm_1") == b"new"
    assert [Path(f).name for f in _all_files(tmp_path / "objects")] == ["frm_1"]


def test_local_listing_uses_mtimes_and_skips_temp_files(local_store: LocalObjectStore) -> None:
    for key in ("frm_old", "frm_new", "other_old"):
        local_store.put(key, b"x")
    stale = (datetime.now(UTC) - timedelta(hours=2)).timestamp()
    for key in ("frm_old", "other_old"):
        os.utime(local_store.path_for(key), (stale, stale))
    # A temp file left by a crashed write is never reported as a key.
    (local_store.path_for("frm_old").parent / ".frm_old.tmp").write_bytes(b"partial")
    cutoff = datetime.now(UTC) - timedelta(hours=1)
    assert sorted(local_store.keys_written_before(cutoff)) == ["frm_old", "other_old"]
    assert sorted(local_store.keys_written_before(datetime.now(UTC) + timedelta(seconds=5))) == [
        "frm_new", "frm_old", "other_old",
    ]  # fmt: skip
    empty = LocalObjectStore(local_store.directory / "empty")
    assert list(empty.keys_written_before(cutoff)) == []
