from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from app.storage.objects import (
    InvalidObjectKeyError,
    LocalObjectStore,
    ObjectNotFoundError,
    ObjectStore,
)


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_put_get_delete_round_trip(store: LocalObjectStore, tmp_path: Path) -> None:
    data = random.Random(7).randbytes(4096)
    assert isinstance(store, ObjectStore)
    store.put("frm_abc", data)
    assert store.get("frm_abc") == data
    assert store.exists("frm_abc") is True
    # Sharded by SHA-256(key): "714d..." -> 71/4d/frm_abc
    assert _all_files(tmp_path / "objects") == ["71/4d/frm_abc"]
    assert oct((tmp_path / "objects/71/4d/frm_abc").stat().st_mode & 0o777) == "0o600"
    assert store.delete("frm_abc") is True
    assert store.exists("frm_abc") is False
    assert store.delete("frm_abc") is False


def test_missing_key_raises_not_found(store: LocalObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError, match="no object 'frm_missing'") as info:
        store.get("frm_missing")
    assert info.value.key == "frm_missing"
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize(
    "key",
    ["", "../escape", "a/b", "/etc/passwd", "..", ".hidden", "a\\b", "a\x00b", "é", "k" * 201],
)
def test_keys_that_could_escape_or_hide_are_refused(
    store: LocalObjectStore, tmp_path: Path, key: str
) -> None:
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.delete(key),
        lambda: store.exists(key),
    ):
        with pytest.raises(InvalidObjectKeyError):
            call()
    assert _all_files(tmp_path) == []


def test_overwrite_is_atomic_and_a_failed_write_keeps_the_old_object(
    store: LocalObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("frm_1", b"old")
    store.put("frm_1", b"new")
    assert store.get("frm_1") == b"new"

    def crash(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    # A crash between writing the temp file and renaming it: readers still see the old
    # object and no temp file is left behind.
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk on fire"):
        store.put("frm_1", b"newer")
    monkeypatch.undo()
    assert store.get("frm_1") == b"new"
    assert [Path(f).name for f in _all_files(tmp_path / "objects")] == ["frm_1"]


def test_keys_written_before_a_moment(store: LocalObjectStore) -> None:
    from datetime import UTC, datetime, timedelta

    for key in ("frm_old", "frm_new", "other_old"):
        store.put(key, b"x")
    stale = (datetime.now(UTC) - timedelta(hours=2)).timestamp()
    for key in ("frm_old", "other_old"):
        os.utime(store.path_for(key), (stale, stale))
    # A temp file left by a crashed write is never reported as a key.
    (store.path_for("frm_old").parent / ".frm_old.tmp").write_bytes(b"partial")
    cutoff = datetime.now(UTC) - timedelta(hours=1)
    assert sorted(store.keys_written_before(cutoff)) == ["frm_old", "other_old"]
    assert sorted(store.keys_written_before(datetime.now(UTC) + timedelta(seconds=5))) == [
        "frm_new", "frm_old", "other_old",
    ]  # fmt: skip
    assert list(LocalObjectStore(store.directory / "empty").keys_written_before(cutoff)) == []
