"""Object store for sealed frames: a narrow interface and a local-directory backend.

Objects are opaque bytes (already sealed by ``app.crypto``); the store neither knows nor
cares what is inside. Keys are chosen by the app (e.g. ``frm_<hex>``), never by a client.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import crashsafe

# Letters, digits, '.', '_', '-'; no separators, no leading dot (temp files start with one,
# so a key can never name a half-written file), at most 200 characters.
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


class ObjectStoreError(Exception):
    """Base of the object store's errors."""


class InvalidObjectKeyError(ObjectStoreError, ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"invalid object key {key!r}")


class ObjectNotFoundError(ObjectStoreError, KeyError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"no object {self.key!r}"


@runtime_checkable
class ObjectStore(Protocol):
    def put(self, key: str, data: bytes | bytearray) -> None:
        """Store ``data`` under ``key`` durably (replacing any previous object)."""

    def get(self, key: str) -> bytes:
        """The object's bytes; :class:`ObjectNotFoundError` when absent."""

    def delete(self, key: str) -> bool:
        """Remove the object; True if it existed. Idempotent, so erasure can be retried."""

    def exists(self, key: str) -> bool: ...

    def keys_written_before(self, cutoff: datetime) -> Iterator[str]:
        """Keys of the objects last written before ``cutoff``, in no particular order."""


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidObjectKeyError(key)
    return key


class LocalObjectStore:
    """Objects as files under ``directory/<aa>/<bb>/<key>``.

    ``aa``/``bb`` are the first hex pairs of SHA-256(key): app keys share prefixes
    (``frm_``), so sharding by the key itself would pile every file into one directory.

    Writes are atomic and durable: temp file in the target directory, fsync, ``os.replace``,
    fsync of the directory (without the last step a crash can forget the rename). A reader
    sees the old object or the new one, never a torn one.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        validate_key(key)
        digest = hashlib.sha256(key.encode("ascii")).hexdigest()
        return self.directory / digest[:2] / digest[2:4] / key

    def put(self, key: str, data: bytes | bytearray) -> None:
        target = self.path_for(key)
        parent = target.parent
        if not parent.is_dir():
            parent.mkdir(parents=True, exist_ok=True)
            # New shard directories must themselves survive a crash.
            crashsafe.fsync_dir(parent.parent)
            crashsafe.fsync_dir(parent.parent.parent)
        crashsafe.write_bytes(target, data)

    def get(self, key: str) -> bytes:
        try:
            return self.path_for(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(key) from None

    def delete(self, key: str) -> bool:
        path = self.path_for(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        crashsafe.fsync_dir(path.parent)
        return True

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def keys_written_before(self, cutoff: datetime) -> Iterator[str]:
        limit = cutoff.timestamp()
        for shard in _subdirectories(self.directory):
            for leaf in _subdirectories(shard):
                with os.scandir(leaf) as entries:
                    for entry in entries:
                        # Temp files start with a dot and are never keys.
                        if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                            continue
                        if entry.stat(follow_symlinks=False).st_mtime < limit:
                            yield entry.name


def _subdirectories(directory: Path) -> list[Path]:
    with os.scandir(directory) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))
