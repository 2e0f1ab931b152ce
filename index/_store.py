"""Segmented vector storage that the exact scan reads in place.

Vectors live in fixed-capacity segments: numpy arrays allocated once at full capacity, rows
written straight into them, and the scan (``index._kernels``) reads the filled rows in place,
float32 or IEEE half floats. So adding never reallocates or copies existing vectors (an
``IndexIDMap2`` doubling its storage stalled 8.8 s and peaked at 3x after 1M vectors), and
peak memory stays within one segment of the raw vector bytes.

The arrays are numpy's, not a FAISS index's own code buffer (as they once were), for their
pages: numpy asks the kernel for transparent huge pages (``madvise``) on every allocation of
4 MiB and more before first touch, while a FAISS buffer is zero-filled in 4 KiB pages. The
same FAISS kernel over the same rows read 12.3 GB/s from a FAISS buffer and 14.0 GB/s from a
numpy array on one core here (1M x 512), 11.1 and 13.8 at 128-d: a scan streams far more
pages than the TLB holds.

Ids are kept beside the vectors (``-1`` marks a free or removed row) and in a dict from id to
row. Removing an id is O(1): the row's id becomes ``-1`` and its vector is zeroed. A zero
vector scores exactly 0 against any query, so a tombstone can only surface when a search asks
for scores <= 0; then the search asks for ``k + tombstones`` rows and drops them.
Compaction rewrites live rows into fresh segments.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ._kernels import scan_top_k

Storage = Literal["float32", "float16"]

# Rows are addressed as (segment << ROW_BITS) | row in the id dict: one int per id.
ROW_BITS = 32
_ROW_MASK = (1 << ROW_BITS) - 1
# Segments start small so that thousands of tiny namespaces stay cheap, then double up to a
# cap that keeps one zero-filled allocation short and makes a segment the piece of work that
# the search threads take in turn (see SearchPool.share): 16 MiB is about 1.2 ms of scanning
# on one core here, so a thread slowed by a busy core holds the search up by at most that,
# while the per-piece overhead (a scan call, a top-k fold) stays near 2 %.
FIRST_SEGMENT_ROWS = 1024
MAX_SEGMENT_BYTES = 16 << 20


def dtype_of(storage: Storage) -> type[np.floating[Any]]:
    return np.float32 if storage == "float32" else np.float16


class Segment:
    """Pre-allocated rows plus their ids, or a full view of float32 rows held elsewhere.

    A segment either owns its memory (allocated at full capacity) or, loaded from a snapshot,
    is a full view of float32 rows that the scan reads in place (no copy); see
    :func:`Segment.view`.
    """

    __slots__ = ("capacity", "dead", "ids", "size", "vectors")

    def __init__(self, dimension: int, storage: Storage, capacity: int) -> None:
        self.vectors: NDArray[Any] = np.empty((capacity, dimension), dtype=dtype_of(storage))
        # Touch every page now, while no lock is held, not when a row is added under the
        # write lock (each first touch of a huge page zeroes 2 MiB).
        self.vectors.fill(0)
        self.ids: NDArray[np.int64] = np.full(capacity, -1, dtype=np.int64)
        self.capacity = capacity
        self.size = 0
        self.dead = 0

    @classmethod
    def view(cls, vectors: NDArray[np.float32], ids: NDArray[np.int64]) -> Segment:
        """A full segment over float32 ``vectors`` held elsewhere (e.g. a mapped snapshot).

        The caller keeps the memory valid; rows can still be removed (zeroed) in place.
        """
        seg = cls.__new__(cls)
        seg.vectors = vectors
        seg.ids = ids
        seg.capacity = seg.size = len(vectors)
        seg.dead = 0
        return seg

    def search(self, queries: NDArray[np.float32], k: int) -> tuple[NDArray[Any], NDArray[Any]]:
        """Top-``k`` (scores, rows) of the filled rows, best first, ``k`` <= ``size``."""
        return scan_top_k(queries, self.vectors[: self.size], k)

    def set_size(self, size: int) -> None:
        self.size = size

    def memory_bytes(self) -> int:
        return int(self.vectors.nbytes + self.ids.nbytes)


class Store:
    """Segments of one namespace plus the id -> row map. Not thread-safe on its own."""

    def __init__(self, dimension: int, storage: Storage) -> None:
        self.dimension = dimension
        self.storage: Storage = storage
        self.segments: list[Segment] = []
        self.rows: dict[int, int] = {}
        self.dead = 0
        itemsize = np.dtype(dtype_of(storage)).itemsize
        self.max_segment_rows = max(FIRST_SEGMENT_ROWS, MAX_SEGMENT_BYTES // (dimension * itemsize))

    @property
    def count(self) -> int:
        return len(self.rows)

    def capacities_for(self, n: int) -> list[int]:
        """Capacities of the segments that :meth:`reserve` would add for ``n`` more rows."""
        free = self.segments[-1].capacity - self.segments[-1].size if self.segments else 0
        last = self.segments[-1].capacity if self.segments else 0
        capacities: list[int] = []
        while free < n:
            last = min(last * 2, self.max_segment_rows) if last else FIRST_SEGMENT_ROWS
            capacities.append(last)
            free += last
        return capacities

    def reserve(self, n: int) -> None:
        """Allocate segments so that ``n`` more rows fit without allocating later."""
        for capacity in self.capacities_for(n):
            self.segments.append(Segment(self.dimension, self.storage, capacity))

    def append(self, ids: NDArray[np.int64], vectors: NDArray[Any]) -> None:
        """Append rows; ids must be validated as new and unique by the caller."""
        n = len(ids)
        if n == 0:
            return
        self.reserve(n)
        # reserve() may have left a partly filled segment followed by empty ones.
        seg_index = next(i for i, s in enumerate(self.segments) if s.size < s.capacity)
        done = 0
        while done < n:
            seg = self.segments[seg_index]
            take = min(n - done, seg.capacity - seg.size)
            start = seg.size
            seg.vectors[start : start + take] = vectors[done : done + take]
            seg.ids[start : start + take] = ids[done : done + take]
            base = seg_index << ROW_BITS
            self.rows.update(
                zip(
                    ids[done : done + take].tolist(),
                    range(base + start, base + start + take),
                    strict=True,
                )
            )
            # Advance ntotal last so a scan never sees a row before its vector is written.
            seg.set_size(start + take)
            done += take
            seg_index += 1

    def remove(self, ids: list[int]) -> int:
        removed = 0
        for id_ in ids:
            code = self.rows.pop(id_, None)
            if code is None:
                continue
            seg = self.segments[code >> ROW_BITS]
            row = code & _ROW_MASK
            seg.ids[row] = -1
            seg.vectors[row] = 0
            seg.dead += 1
            removed += 1
        self.dead += removed
        return removed

    def live_chunks(self, which: Literal["ids", "vectors"]) -> Iterator[NDArray[Any]]:
        """Yield the ids or the vectors of live rows, segment by segment.

        Segments without tombstones yield views of their arrays; the others a copy of
        their live rows, so at most one segment is copied at a time.
        """
        for seg in self.segments:
            if seg.size == 0:
                continue
            data = seg.ids[: seg.size] if which == "ids" else seg.vectors[: seg.size]
            yield data[seg.ids[: seg.size] >= 0] if seg.dead else data

    def memory_bytes(self) -> int:
        # A dict entry with its int key and value costs about 100 bytes in CPython.
        return sum(s.memory_bytes() for s in self.segments) + 100 * len(self.rows)
