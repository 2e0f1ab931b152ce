"""Where a key manager keeps its state document, and the file-backed default.

A key manager's bookkeeping (`app.crypto.kms`: per-org KEK versions, primary, minimum
decryption version, wrap reservations, reference keys) is one JSON document. A
`KeyringStore` loads it and lets one process at a time change it: `mutate` holds a lock that
excludes every other process (and thread) sharing the store, re-reads the document under it
and writes it back when the block ends without an error. Processes that share a store share
the keys.

* `FileKeyringStore` — `<directory>/keyring.json`, rewritten crash-safely under an exclusive
  `flock` on `<directory>/keyring.lock`: one machine (the service and the CLI beside it).
* `app.storage.keyring.DatabaseKeyringStore` — a row of the metadata database: replicas that
  share only the database share the keys. It lives with the other SQL, in `app.storage`.

Both store the document byte for byte as `encode_state` writes it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import crashsafe
from app.crypto.errors import KeyringError

STATE_FILENAME = "keyring.json"
LOCK_FILENAME = "keyring.lock"

StateDocument = dict[str, Any]
StrPath = str | os.PathLike[str]


@runtime_checkable
class KeyringStore(Protocol):
    """Persistence of one key manager's state document."""

    @property
    def location(self) -> str:
        """Where the document lives, for messages (a path, a table row); never a secret."""

    def load(self) -> StateDocument | None:
        """The document as last written, or None when there is none yet."""

    def mutate(self, create: Callable[[], StateDocument]) -> AbstractContextManager[StateDocument]:
        """Yield the current document under a lock that excludes every other user of the
        store, calling ``create`` for it when there is none yet; write it back when the block
        ends without an error (an unchanged document need not be rewritten). An error in the
        block leaves the stored document as it was."""


def encode_state(state: StateDocument) -> str:
    return json.dumps(state, indent=1, sort_keys=True)


def decode_state(text: str | bytes, location: str) -> StateDocument:
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise KeyringError(f"cannot read keyring state {location}: {exc}") from None
    if not isinstance(state, dict):
        raise KeyringError(f"keyring state {location} is not a JSON object")
    return state


class FileKeyringStore:
    """`<directory>/keyring.json`, changed only under an exclusive `flock`.

    The lock file is separate from the document because the document is replaced (temp file →
    fsync → `os.replace` → fsync of the directory), and a lock on a replaced inode locks
    nothing. Every `flock` opens its own descriptor, so threads of one process exclude each
    other as two processes do.
    """

    def __init__(self, directory: StrPath) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.directory / STATE_FILENAME
        self._lock_path = self.directory / LOCK_FILENAME

    @property
    def location(self) -> str:
        return str(self.path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read(self) -> str | None:
        try:
            return self.path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise KeyringError(f"cannot read keyring state {self.path}: {exc}") from None

    def load(self) -> StateDocument | None:
        with self._locked():
            text = self._read()
        return None if text is None else decode_state(text, self.location)

    @contextmanager
    def mutate(self, create: Callable[[], StateDocument]) -> Iterator[StateDocument]:
        with self._locked():
            before = self._read()
            state = create() if before is None else decode_state(before, self.location)
            yield state
            after = encode_state(state)
            if after != before:
                crashsafe.write_bytes(self.path, after.encode("utf-8"))

    def __repr__(self) -> str:
        return f"FileKeyringStore({str(self.directory)!r})"
