"""Segmented vector storage that FAISS scans in place.

Vectors live in fixed-capacity segments. Each segment is a FAISS flat index (``IndexFlatIP``
for float32, ``IndexScalarQuantizer`` QT_fp16 for float16) whose code buffer is allocated once
at full capacity; rows are written straight into that buffer through a numpy view and the
index's ``ntotal`` is advanced. So adding never reallocates or copies existing vectors (an
``IndexIDMap2`` doubling its storage stalled 8.8 s and peaked at 3x after 1M vectors), and
peak memory stays within one segment of the raw vector bytes.

Ids are kept beside the vectors (``-1`` marks a free or removed row) and in a dict from id to
row. Removing an id is O(1): the row's id becomes ``-1`` and its vector is zeroed. A zero
vector scores exactly 0 against any query, so a tombstone can only surface when a search asks
for scores <= 0; then the search asks FAISS for ``k + tombstones`` rows and drops them.
Compaction rewrites live rows into fresh segments.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import faiss
import numpy as np
from numpy.typing import NDArray

Storage = Literal["float32", "float16"]

# Rows are addressed as (segment << ROW_BITS) | row in the id dict: one int per id.
ROW_BITS = 32
_ROW_MASK = (1 << ROW_BITS) - 1
# Segments start small so that thousands of tiny namespaces stay cheap, then double up to a
# cap that keeps one zero-filled allocation short (64 MiB) and gives the search pool enough
# pieces to share a big namespace between cores.
FIRST_SEGMENT_ROWS = 1024
MAX_SEGMENT_BYTES = 64 << 20


def dtype_of(storage: Storage) -> type[np.floating[Any]]:
    return np.float32 if storage == "float32" else np.float16


class Segment:
    """One pre-allocated FAISS flat index plus the ids of its rows."""

    __slots__ = ("capacity", "dead", "faiss_index", "ids", "size", "vectors")

    def __init__(self, dimension: int, storage: Storage, capacity: int) -> None:
        index: Any
        if storage == "float32":
            index = faiss.IndexFlatIP(dimension)
        else:
            # QT_fp16 stores IEEE half floats, the same bytes numpy's float16 writes, and
            # computes inner products in float32 against the float32 query.
            index = faiss.IndexScalarQuantizer(
                dimension, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
        nbytes = capacity * index.code_size
        index.codes.resize(nbytes)
        raw = faiss.rev_swig_ptr(index.codes.data(), nbytes)
        self.faiss_index: Any = index
        self.vectors: NDArray[Any] = raw.view(dtype_of(storage)).reshape(capacity, dimension)
        self.ids: NDArray[np.int64] = np.full(capacity, -1, dtype=np.int64)
        self.capacity = capacity
        self.size = 0
        self.dead = 0

    def set_size(self, size: int) -> None:
        self.size = size
        self.faiss_index.ntotal = size

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

    def _next_capacity(self) -> int:
        if not self.segments:
            return FIRST_SEGMENT_ROWS
        return min(self.segments[-1].capacity * 2, self.max_segment_rows)

    def reserve(self, n: int) -> None:
        """Allocate segments so that ``n`` more rows fit without allocating later."""
        free = self.segments[-1].capacity - self.segments[-1].size if self.segments else 0
        while free < n:
            capacity = self._next_capacity()
            self.segments.append(Segment(self.dimension, self.storage, capacity))
            free += capacity

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

        Segments without tombstones yield views of the FAISS buffers; the others a copy of
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
