"""crashsafe: real files in tmp_path; failures injected where a crash or a full disk would hit."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import crashsafe


class Boom(Exception):
    pass


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_bytes_writes_the_content_with_mode_0600_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    crashsafe.write_bytes(target, b'{"a": 1}')
    assert target.read_bytes() == b'{"a": 1}'
    assert _mode(target) == 0o600
    assert _names(tmp_path) == ["state.json"]


def test_write_bytes_replaces_and_takes_bytearray_and_memoryview(tmp_path: Path) -> None:
    target = tmp_path / "blob"
    crashsafe.write_bytes(target, b"old")
    crashsafe.write_bytes(target, bytearray(b"newer"))
    assert target.read_bytes() == b"newer"
    crashsafe.write_bytes(target, memoryview(b"xnewestx")[1:-1])
    assert target.read_bytes() == b"newest"
    assert _names(tmp_path) == ["blob"]


def test_mode_is_set_exactly_whatever_the_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        crashsafe.write_bytes(tmp_path / "public", b"x", mode=0o644)
        crashsafe.write_bytes(tmp_path / "secret", b"x", mode=0o400)
    finally:
        os.umask(old_umask)
    assert _mode(tmp_path / "public") == 0o644
    assert _mode(tmp_path / "secret") == 0o400


def test_mode_none_creates_the_file_as_open_would(tmp_path: Path) -> None:
    old_umask = os.umask(0o027)
    try:
        crashsafe.write_bytes(tmp_path / "snapshot", b"x", mode=None)
    finally:
        os.umask(old_umask)
    assert _mode(tmp_path / "snapshot") == 0o640


def test_replacing_streams_and_may_seek_back(tmp_path: Path) -> None:
    target = tmp_path / "big.bin"
    with crashsafe.replacing(target) as f:
        f.seek(4)
        for _ in range(3):
            f.write(b"abcd")
        f.seek(0)
        f.write(b"HEAD")
        # Nothing is visible under the final name before the block ends.
        assert not target.exists()
    assert target.read_bytes() == b"HEAD" + b"abcd" * 3
    assert _mode(target) == 0o600
    assert _names(tmp_path) == ["big.bin"]


def test_an_exception_mid_write_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "big.bin"
    crashsafe.write_bytes(target, b"old content")
    with pytest.raises(Boom), crashsafe.replacing(target) as f:
        f.write(b"half of the new")
        raise Boom
    assert target.read_bytes() == b"old content"
    assert _names(tmp_path) == ["big.bin"]


def test_an_exception_mid_write_of_a_new_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(Boom), crashsafe.replacing(tmp_path / "new") as f:
        f.write(b"partial")
        raise Boom
    assert _names(tmp_path) == []


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_fsync_or_rename_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "state.json"
    crashsafe.write_bytes(target, b"old")

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, full_disk)
    with pytest.raises(OSError, match="No space left"):
        crashsafe.write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["state.json"]


def test_a_missing_directory_is_an_error_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        crashsafe.write_bytes(tmp_path / "absent" / "file", b"x")
    assert _names(tmp_path) == []


def test_fsync_dir_accepts_directories_only(tmp_path: Path) -> None:
    crashsafe.fsync_dir(tmp_path)
    crashsafe.fsync_dir(str(tmp_path))
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        crashsafe.fsync_dir(tmp_path / "file")
