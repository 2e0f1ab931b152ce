"""Snapshot files: one per namespace, written atomically, verified completely on load.

On-disk format, version 1 (all integers little-endian)::

    offset  size  field
    0       8     magic  b"WJHIDX\\r\\n"  (the CR LF catches text-mode mangling, as in PNG)
    8       4     H: length of the header in bytes (uint32, at most 65536)
    12      4     CRC-32 of the header bytes (uint32)
    16      H     header: a UTF-8 JSON object with the keys
                    format_version  int, 1
                    namespace       str, the namespace the snapshot belongs to
                    dimension       int, vector dimension
                    model_id        str, model the vectors come from
                    storage         "float32" | "float16", element type of the vectors
                    count           int, number of rows N
                    position        int, source-of-truth position the rows include
                    payload_bytes   int, 8*N + N*dimension*itemsize
                    payload_crc32   int, CRC-32 of the payload bytes
    16+H    8*N   ids: int64, unique and non-negative
    ...     N*D*s vectors: row-major float32 (s=4) or IEEE float16 (s=2)

The header is padded with spaces so that the vectors start at a multiple of 4096 bytes
(``VECTOR_ALIGNMENT``; readers accept any offset). The file ends exactly after the vectors,
so a truncated file is caught by its size before anything is read, and a flipped bit by one
of the two checksums. Only live rows are written;
tombstones never reach disk.

Writes go through ``crashsafe.replacing``: a temporary file in the same directory, which is
fsynced, renamed over the old snapshot with ``os.replace`` and followed by an fsync of the
directory, so a crash or a full disk leaves either the old or the new snapshot, never a
mixture. FAISS's ``write_index`` is not used: it does not fsync and can leave a truncated file
behind on a full disk.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import struct
import sys
import threading
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from numpy.typing import NDArray

import crashsafe

from ._store import ROW_BITS, Segment, Storage, Store, dtype_of
from .errors import SnapshotError, SnapshotWriteError

MAGIC = b"WJHIDX\r\n"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 65536
_PREFIX = struct.Struct("<8sII")
#: Writers pad the header so that the vectors start at a multiple of this offset.
VECTOR_ALIGNMENT = 4096
# Big enough to stream at disk speed, small enough that a chunk copy costs little memory.
_CHUNK_BYTES = 16 << 20

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("index snapshots assume a little-endian host")


@dataclass(frozen=True, slots=True)
class SnapshotHeader:
    """The metadata stored in front of a snapshot's payload."""

    namespace: str
    dimension: int
    model_id: str
    storage: Storage
    count: int
    position: int
    payload_bytes: int = 0
    payload_crc32: int = 0
    format_version: int = FORMAT_VERSION

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format_version": self.format_version,
                "namespace": self.namespace,
                "dimension": self.dimension,
                "model_id": self.model_id,
                "storage": self.storage,
                "count": self.count,
                "position": self.position,
                "payload_bytes": self.payload_bytes,
                "payload_crc32": self.payload_crc32,
            },
            sort_keys=True,
        ).encode()


class _Crc32:
    """CRC-32 computed on a helper thread, so checksumming overlaps disk I/O.

    One worker runs the updates in submission order; ``zlib.crc32`` releases the GIL on big
    buffers, as do file reads and writes.
    """

    def __init__(self) -> None:
        self.value = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wajah-crc")
        self._pending: deque[Future[None]] = deque()
        self._last: Future[None] | None = None

    def update(self, data: memoryview) -> None:
        self._last = self._executor.submit(self._step, data)
        self._pending.append(self._last)
        # Bound the chunks waiting for the checksum (some are copies) to a few.
        if len(self._pending) > 4:
            self._pending.popleft().result()

    def _step(self, data: memoryview) -> None:
        self.value = zlib.crc32(data, self.value)

    def result(self) -> int:
        if self._last is not None:
            self._last.result()
        return self.value

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _byte_chunks(array: NDArray[Any]) -> Iterator[memoryview]:
    if array.size == 0:
        return
    flat = np.ascontiguousarray(array).data.cast("B")
    for start in range(0, len(flat), _CHUNK_BYTES):
        yield flat[start : start + _CHUNK_BYTES]


def write_snapshot(path: Path, header: SnapshotHeader, store: Store) -> SnapshotHeader:
    """Write ``store``'s live rows to ``path`` atomically; return the header written.

    The caller must keep ``store`` unchanged while this runs. Raises
    :class:`SnapshotWriteError` on any OS error; the previous file at ``path`` is untouched.
    """
    itemsize = np.dtype(dtype_of(header.storage)).itemsize
    count = store.count
    payload_bytes = count * (8 + header.dimension * itemsize)
    # The header sits in front of the payload and holds its checksum, so reserve room for it
    # and fill it in once the payload is written: one pass over the vectors, not two.
    placeholder = SnapshotHeader(
        namespace=header.namespace,
        dimension=header.dimension,
        model_id=header.model_id,
        storage=header.storage,
        count=count,
        position=header.position,
        payload_bytes=payload_bytes,
        payload_crc32=0xFFFFFFFF,
    )
    # Pad the header so that the vectors start on a page boundary: a loaded float32 snapshot
    # is scanned in place from a memory map (see read_snapshot).
    header_len = len(placeholder.to_bytes())
    header_len += -(_PREFIX.size + header_len + 8 * count) % VECTOR_ALIGNMENT
    if header_len > MAX_HEADER_BYTES:
        raise SnapshotWriteError("snapshot header too large (model id or namespace too long)")
    try:
        # mode=None: snapshots keep the permissions they have always had (the umask's).
        with crashsafe.replacing(path, mode=None) as f:
            f.seek(_PREFIX.size + header_len)
            crc = _Crc32()
            written = 0
            # Ids first, then vectors, one segment at a time: a segment with tombstones is
            # copied (live rows only), the others are written from the FAISS buffers directly.
            parts: tuple[Literal["ids"], Literal["vectors"]] = ("ids", "vectors")
            try:
                for which in parts:
                    for data in store.live_chunks(which):
                        for part in _byte_chunks(data):
                            crc.update(part)
                            written += f.write(part)
                payload_crc = crc.result()
            finally:
                crc.close()
            if written != payload_bytes:
                raise SnapshotWriteError("store changed while the snapshot was written")
            final = SnapshotHeader(
                namespace=header.namespace,
                dimension=header.dimension,
                model_id=header.model_id,
                storage=header.storage,
                count=count,
                position=header.position,
                payload_bytes=payload_bytes,
                payload_crc32=payload_crc,
            )
            # Pad with spaces (valid JSON whitespace) to the reserved length.
            head = final.to_bytes().ljust(header_len)
            f.seek(0)
            f.write(_PREFIX.pack(MAGIC, header_len, zlib.crc32(head)))
            f.write(head)
    except OSError as exc:
        raise SnapshotWriteError(f"could not write snapshot {path.name}: {exc.strerror}") from exc
    return final


def read_header(f: BinaryIO, file_size: int) -> SnapshotHeader:
    """Read and check the header of an open snapshot; raise :class:`SnapshotError`."""
    prefix = f.read(_PREFIX.size)
    if len(prefix) != _PREFIX.size:
        raise SnapshotError("snapshot shorter than its prefix")
    magic, header_len, header_crc = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise SnapshotError("not a wajah index snapshot (bad magic)")
    if header_len > MAX_HEADER_BYTES:
        raise SnapshotError("snapshot header length out of bounds")
    head = f.read(header_len)
    if len(head) != header_len or zlib.crc32(head) != header_crc:
        raise SnapshotError("snapshot header checksum mismatch")
    try:
        fields = json.loads(head)
        if fields["format_version"] != FORMAT_VERSION:
            raise SnapshotError(f"unsupported snapshot format version {fields['format_version']}")
        header = SnapshotHeader(
            namespace=str(fields["namespace"]),
            dimension=int(fields["dimension"]),
            model_id=str(fields["model_id"]),
            storage=fields["storage"],
            count=int(fields["count"]),
            position=int(fields["position"]),
            payload_bytes=int(fields["payload_bytes"]),
            payload_crc32=int(fields["payload_crc32"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError("snapshot header is malformed") from exc
    if header.storage not in ("float32", "float16") or header.dimension < 1 or header.count < 0:
        raise SnapshotError("snapshot header is malformed")
    itemsize = np.dtype(dtype_of(header.storage)).itemsize
    if header.payload_bytes != header.count * (8 + header.dimension * itemsize):
        raise SnapshotError("snapshot payload size disagrees with its count")
    if file_size != _PREFIX.size + header_len + header.payload_bytes:
        raise SnapshotError("snapshot is truncated or has trailing bytes")
    return header


def _read_exact(f: io.BufferedReader, target: NDArray[Any], crc: _Crc32) -> None:
    if target.size == 0:
        return
    view = target.data.cast("B")
    for start in range(0, len(view), _CHUNK_BYTES):
        part = view[start : start + _CHUNK_BYTES]
        if f.readinto(part) != len(part):
            raise SnapshotError("snapshot is truncated")
        crc.update(part)


def read_snapshot(path: Path, *, namespace: str, dimension: int, model_id: str,
                  storage: Storage) -> tuple[SnapshotHeader, Store]:  # fmt: skip
    """Load a snapshot into a fresh :class:`Store`, verifying everything.

    Raises :class:`SnapshotError` if the file is missing, truncated, corrupt, of another format
    version, or belongs to another namespace, dimension, model or storage layout.

    Float32 vectors are not copied: the file is mapped copy-on-write (``MAP_PRIVATE``) and its
    rows become the segments that FAISS scans, so the page cache *is* the index and loading
    costs one checksum pass. (On this 2-core VM, 1M x 512: copying into freshly allocated
    memory took 3.4-3.8 s, mostly first-touch page faults; mapping about 1.2-2 s.) A removed
    row is zeroed in the private copy of its page; the file itself is never written. wajah
    only ever replaces a snapshot by renaming a new file over it, which leaves a mapped one
    intact (its disk blocks stay allocated until the index is compacted or loaded again); a
    snapshot must never be rewritten in place while an index uses it. Float16 snapshots are
    read into FAISS's own buffers.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with block below
    except OSError as exc:
        raise SnapshotError(f"cannot open snapshot: {exc.strerror}") from exc
    with f, ThreadPoolExecutor(2, thread_name_prefix="wajah-snapshot-load") as helpers:
        header = read_header(f, os.fstat(f.fileno()).st_size)
        expected = (namespace, dimension, model_id, storage)
        found = (header.namespace, header.dimension, header.model_id, header.storage)
        if found != expected:
            raise SnapshotError(f"snapshot is for {found}, expected {expected}")
        store = Store(dimension, storage)
        if header.count == 0:
            return header, store
        if storage == "float32":
            ids, rows = _map_rows(f, header, store, helpers)
        else:
            ids, rows = _read_rows(f, header, store, helpers)
        if int(ids.min()) < 0:
            raise SnapshotError("snapshot holds a negative id")
        store.rows = rows
        if store.count != header.count:
            raise SnapshotError("snapshot holds duplicate ids")
    return header, store


def _map_rows(
    f: io.BufferedReader, header: SnapshotHeader, store: Store, helpers: ThreadPoolExecutor
) -> tuple[NDArray[np.int64], dict[int, int]]:
    """Map the payload, verify it, and fill ``store`` with segments viewing the mapping."""
    start = f.tell()
    try:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except OSError as exc:
        raise SnapshotError(f"cannot map snapshot: {exc.strerror}") from exc
    mapping.madvise(mmap.MADV_WILLNEED)
    count, dimension = header.count, header.dimension
    ids = np.frombuffer(mapping, np.int64, count, offset=start).copy()
    capacities = [store.max_segment_rows] * -(-count // store.max_segment_rows)
    rows = helpers.submit(_row_map, ids, capacities)
    # Page faults are the slow part of reading a mapping, and a fault inside zlib's loop
    # stalls the checksum; a helper runs ahead touching the pages (1M x 512 cold, four
    # alternating runs: 1.2-1.3 s with it, 2.1-2.7 s without).
    checked = threading.Event()
    helpers.submit(_touch, mapping, start, checked)
    crc = 0
    try:
        with memoryview(mapping) as view:
            for offset in range(start, len(view), _CHUNK_BYTES):
                crc = zlib.crc32(view[offset : offset + _CHUNK_BYTES], crc)
    finally:
        checked.set()
    row_map = rows.result()
    if crc != header.payload_crc32:
        raise SnapshotError("snapshot payload checksum mismatch")
    vectors = np.frombuffer(mapping, np.float32, count * dimension, offset=start + 8 * count)
    vectors = vectors.reshape(count, dimension)
    for first in range(0, count, store.max_segment_rows):
        last = min(count, first + store.max_segment_rows)
        store.segments.append(Segment.view(vectors[first:last], ids[first:last].copy()))
    return ids, row_map


def _touch(mapping: mmap.mmap, start: int, stop: threading.Event) -> None:
    """Read every page from ``start`` on, ahead of the checksum, until ``stop`` is set.

    adler32 is the cheapest full read of a buffer that releases the GIL.
    """
    with memoryview(mapping) as view:
        for offset in range(start, len(view), _CHUNK_BYTES):
            if stop.is_set():
                return
            zlib.adler32(view[offset : offset + _CHUNK_BYTES])


def _read_rows(
    f: io.BufferedReader, header: SnapshotHeader, store: Store, helpers: ThreadPoolExecutor
) -> tuple[NDArray[np.int64], dict[int, int]]:
    """Read and verify the payload into freshly allocated segments of ``store``.

    Two things overlap with reading: allocating the next segments (first-touch page faults
    cost about as much as the read here) and building the id -> row map.
    """
    capacities = store.capacities_for(header.count)
    segments = [helpers.submit(Segment, header.dimension, header.storage, c) for c in capacities]
    ids = np.empty(header.count, dtype=np.int64)
    crc = _Crc32()
    try:
        _read_exact(f, ids, crc)
        rows = helpers.submit(_row_map, ids, capacities)
        remaining = header.count
        for future in segments:
            seg = future.result()
            store.segments.append(seg)
            take = min(remaining, seg.capacity)
            _read_exact(f, seg.vectors[:take], crc)
            seg.ids[:take] = ids[header.count - remaining : header.count - remaining + take]
            seg.set_size(take)
            remaining -= take
        payload_crc = crc.result()
        row_map = rows.result()
    finally:
        crc.close()
        for future in segments:
            future.cancel()
    if payload_crc != header.payload_crc32:
        raise SnapshotError("snapshot payload checksum mismatch")
    return ids, row_map


def _row_map(ids: NDArray[np.int64], capacities: list[int]) -> dict[int, int]:
    """The :attr:`Store.rows` map for ``ids`` laid out in segments of ``capacities``."""
    rows: dict[int, int] = {}
    done = 0
    for seg_index, capacity in enumerate(capacities):
        take = min(len(ids) - done, capacity)
        base = seg_index << ROW_BITS
        rows.update(zip(ids[done : done + take].tolist(), range(base, base + take), strict=True))
        done += take
    return rows
