"""Crash-safe file replacement, standard library only, shared by ``app``, ``models`` and ``index``.

Every write goes the same way: a temp file in the target's own directory → fsync → ``os.replace``
→ fsync of the directory. The guarantee: after a crash, power loss or full disk, a reader of
``path`` sees either the complete old file or the complete new one, never a mixture or a
truncated file. Without the directory fsync a crash after the rename can forget the rename; a
temp file elsewhere (``/tmp``) could sit on another file system, where ``os.replace`` is not
atomic.

Temp files are named ``.<name>.<random>.tmp``: the leading dot keeps them out of listings that
skip hidden files, and they are removed when the write fails. Only a crash in the middle of a
write can leave one behind.

    crashsafe.write_bytes(path, data)            # small files, all bytes at hand

    with crashsafe.replacing(path) as f:         # large files, streamed
        f.write(header)
        ...

Callers create the directory first; new directories are made durable with :func:`fsync_dir`
on their parent.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["fsync_dir", "replacing", "write_bytes"]

StrPath = str | os.PathLike[str]

# As tempfile.mkstemp: a clash of names is all but impossible, but retried, not fatal.
_NAME_ATTEMPTS = 100


def fsync_dir(directory: StrPath) -> None:
    """Flush ``directory``'s entries (a rename, a new or deleted file) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: StrPath, *, mode: int | None = 0o600) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` atomically and durably when the block ends.

    On a normal exit the file is flushed, fsynced, renamed over ``path`` with ``os.replace``,
    and ``path``'s directory is fsynced. If the block raises, or any of those steps fails, the
    temp file is removed, ``path`` keeps its previous content (or stays absent), and the
    exception propagates. The file may be seeked and rewritten before the block ends.

    ``mode`` is the new file's permission bits, set exactly (the umask does not apply). With
    ``mode=None`` the file is created as ``open(path, "wb")`` would: 0o666 less the umask.
    """
    target = Path(path)
    fd, tmp = _create_temp(target, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def write_bytes(
    path: StrPath, data: bytes | bytearray | memoryview, *, mode: int | None = 0o600
) -> None:
    """Replace ``path``'s content with ``data`` atomically and durably (see :func:`replacing`,
    whose guarantee and ``mode`` this shares)."""
    with replacing(path, mode=mode) as f:
        f.write(data)


def _create_temp(target: Path, mode: int | None) -> tuple[int, Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    # Secret data must never be readable, not even for the moment before fchmod.
    initial = 0o666 if mode is None else 0o600
    for _ in range(_NAME_ATTEMPTS):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, initial)
        except FileExistsError:
            continue
        if mode is not None:
            try:
                os.fchmod(fd, mode)
            except BaseException:
                os.close(fd)
                os.unlink(tmp)
                raise
        return fd, tmp
    raise FileExistsError(f"no free temp file name next to {target}")
