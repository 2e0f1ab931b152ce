"""Object store for sealed frames: a narrow interface and two backends.

Objects are opaque bytes (already sealed by ``app.crypto``); the store neither knows nor
cares what is inside. Keys are chosen by the app (e.g. ``frm_<hex>``), never by a client.

* :class:`LocalObjectStore` — a directory: the embedded default, one machine;
* :class:`DatabaseObjectStore` — a table of the metadata database: replicas that share only
  the database (PostgreSQL) share the frames, and its backups hold them.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

import crashsafe
from app.storage.engine import read_transaction, write_transaction
from app.storage.schema import sealed_objects, utcnow

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


def _upsert(dialect: str) -> sa.Insert:
    """INSERT of a (key, data, created_at) row that replaces the data and time of an
    existing key, in one statement (no read-then-write race between replicas)."""
    if dialect == "postgresql":
        pg = postgresql.insert(sealed_objects)
        return pg.on_conflict_do_update(
            index_elements=[sealed_objects.c.key],
            set_={"data": pg.excluded.data, "created_at": pg.excluded.created_at},
        )
    lite = sqlite.insert(sealed_objects)
    return lite.on_conflict_do_update(
        index_elements=[sealed_objects.c.key],
        set_={"data": lite.excluded.data, "created_at": lite.excluded.created_at},
    )


def _subdirectories(directory: Path) -> list[Path]:
    with os.scandir(directory) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))


class DatabaseObjectStore:
    """Objects as rows of ``sealed_objects`` in the metadata database.

    Replicas that share only the database share the frames, and a backup of the database
    holds them. Each call is a short transaction of its own, committed before it returns (as
    durable as the database's commit); callers keep writing objects before the transaction
    that references them, as with the directory store. ``created_at`` is the time of the last
    write: a ``put`` of an existing key replaces the object and that time, like a file
    replaced in the directory store.
    """

    def __init__(self, engine: Engine, *, page_size: int = 1000) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._engine = engine
        self._page_size = page_size
        self._upsert = _upsert(engine.dialect.name)

    def put(self, key: str, data: bytes | bytearray) -> None:
        validate_key(key)
        with write_transaction(self._engine) as conn:
            conn.execute(self._upsert, {"key": key, "data": data, "created_at": utcnow()})

    def get(self, key: str) -> bytes:
        validate_key(key)
        with read_transaction(self._engine) as conn:
            data = conn.execute(
                sa.select(sealed_objects.c.data).where(sealed_objects.c.key == key)
            ).scalar_one_or_none()
        if data is None:
            raise ObjectNotFoundError(key)
        return bytes(data)

    def delete(self, key: str) -> bool:
        validate_key(key)
        with write_transaction(self._engine) as conn:
            result = conn.execute(sa.delete(sealed_objects).where(sealed_objects.c.key == key))
        return result.rowcount == 1

    def exists(self, key: str) -> bool:
        validate_key(key)
        with read_transaction(self._engine) as conn:
            found = conn.execute(
                sa.select(sa.literal(1)).where(sealed_objects.c.key == key)
            ).first()
        return found is not None

    def keys_written_before(self, cutoff: datetime) -> Iterator[str]:
        if cutoff.tzinfo is None:
            # A naive moment is ambiguous (local? UTC?); refuse it instead of guessing.
            raise ValueError("naive cutoff; pass an aware UTC datetime")
        return self._keys_written_before(cutoff)

    def _keys_written_before(self, cutoff: datetime) -> Iterator[str]:
        # Pages in key order, each read in a short transaction of its own: callers delete
        # what they are given while they iterate (the orphan sweep), and no connection or
        # snapshot stays open between pages.
        after: str | None = None
        while True:
            stmt = (
                sa.select(sealed_objects.c.key)
                .where(sealed_objects.c.created_at < cutoff)
                .order_by(sealed_objects.c.key)
                .limit(self._page_size)
            )
            if after is not None:
                stmt = stmt.where(sealed_objects.c.key > after)
            with read_transaction(self._engine) as conn:
                page = list(conn.execute(stmt).scalars())
            yield from page
            if len(page) < self._page_size:
                return
            after = page[-1]

    def __repr__(self) -> str:
        return f"DatabaseObjectStore(dialect={self._engine.dialect.name!r})"
