"""One namespace's vector index: exact inner-product search over L2-normalised vectors.

Inner product equals cosine similarity on L2-normalised vectors, which every vector added
here must be. The vectors are scanned exactly, as float32 or, opt-in, as IEEE half floats at
half the memory and half the bytes per scan; the benchmark measures its mate recall. No
approximate layout (HNSW, IVF) is offered: on face-like 512-d data HNSW missed far too many
mates at a useful efSearch.

Search path: the search-pool threads take a namespace's segments (16 MiB each at most) one
at a time from a shared queue until none is left, so a thread on a busy core simply takes
fewer; each segment is scanned for the whole batch of queries, by the C scan
(``index/_scan.c``, each row read once for every query of the batch) or, for float32 batches
of a few queries or more, by one sgemm (see ``index._kernels``); each thread folds its hits
into one top k as it goes, and those are merged by score, ties by id.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._concurrency import MicroBatcher, RWLock, SearchPool
from ._kernels import scorer_for, use_gemm
from ._store import Segment, Storage, Store
from .backend import (
    BEGINNING,
    LoadReport,
    Row,
    RowsSince,
    SearchResult,
    SnapshotInfo,
    check_search,
    validate_ids,
    validate_vectors,
)
from .errors import (
    DuplicateIdError,
    InvalidVectorError,
    ModelMismatchError,
    SnapshotError,
)
from .snapshot import SnapshotHeader, read_snapshot, write_snapshot

_REPLAY_BATCH = 4096
# A scanning thread folds its hits into one top k once it holds this many times k of them.
_FOLD_COLUMNS = 8


@dataclass(frozen=True, slots=True)
class _Query:
    vectors: NDArray[np.float32]
    k: int
    min_score: float | None


class VectorIndex:
    """Ids and vectors of one namespace, pinned to a dimension and a model id: the embedded
    :class:`~index.backend.NamespaceIndex`.

    Thread-safety: searches run concurrently with each other and with snapshots; adds,
    removes, compaction, snapshots and loads are serialised, and an add or remove waits only
    for the searches already running. Snapshots read the vectors in place while searches go
    on; writers wait for a running snapshot.
    """

    def __init__(
        self,
        namespace: str,
        *,
        dimension: int,
        model_id: str,
        storage: Storage = "float32",
        snapshot_path: Path | None = None,
        pool: SearchPool | None = None,
        micro_batch: bool = True,
        max_batch: int = 64,
    ) -> None:
        if dimension < 1:
            raise ValueError("dimension must be >= 1")
        if not model_id:
            raise ValueError("model_id must be non-empty")
        if storage not in ("float32", "float16"):
            raise ValueError("storage must be 'float32' or 'float16'")
        self.namespace = namespace
        self.dimension = dimension
        self.model_id = model_id
        self.storage: Storage = storage
        self.snapshot_path = snapshot_path
        self._pool = pool
        self._store = Store(dimension, storage)
        self._rw = RWLock()
        self._writer = threading.Lock()
        self._batcher: MicroBatcher[_Query, SearchResult] | None = (
            MicroBatcher(self._search_batch, max_batch) if micro_batch else None
        )

    def set_micro_batch(self, enabled: bool, max_batch: int = 64) -> None:
        """Turn coalescing of concurrent single-query searches on or off."""
        self._batcher = MicroBatcher(self._search_batch, max_batch) if enabled else None

    # -- reading ---------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Number of live ids."""
        return self._store.count

    def __len__(self) -> int:
        return self._store.count

    def contains(self, id_: int) -> bool:
        return int(id_) in self._store.rows

    __contains__ = contains

    @property
    def tombstones(self) -> int:
        """Removed rows still occupying memory until :meth:`compact` runs."""
        return self._store.dead

    def memory_bytes(self) -> int:
        """Bytes held by vectors, ids and the id map (allocated capacity included)."""
        return self._store.memory_bytes()

    def search(
        self,
        queries: ArrayLike,
        *,
        model_id: str,
        k: int = 10,
        min_score: float | None = None,
    ) -> SearchResult:
        """Return the ``k`` best ids by inner product for each query, best first.

        ``queries`` is one vector (d,) or a batch (q, d) of L2-normalised vectors from
        ``model_id``. Hits scoring below ``min_score`` are left out. A batch is scanned in one
        pass over the vectors; concurrent single-query calls are micro-batched into one.
        """
        check_search(self.model_id, model_id, k, min_score)
        q = validate_vectors(queries, self.dimension, "query")
        query = _Query(q, int(k), None if min_score is None else float(min_score))
        if self._batcher is not None and len(q) == 1:
            return self._batcher.submit(query)
        return self._search_batch([query])[0]

    def _search_batch(self, queries: list[_Query]) -> list[SearchResult]:
        vectors = (
            queries[0].vectors
            if len(queries) == 1
            else np.concatenate([q.vectors for q in queries])
        )
        k = max(q.k for q in queries)
        floors = [q.min_score for q in queries]
        floor = None if None in floors else min(f for f in floors if f is not None)
        with self._rw.read():
            ids, scores = self._scan(vectors, k, floor)
        results = []
        row = 0
        for q in queries:
            n = len(q.vectors)
            qi, qs = ids[row : row + n, : q.k], scores[row : row + n, : q.k]
            if q.min_score is not None:
                below = qs < q.min_score
                qi = np.where(below, -1, qi)
                qs = np.where(below, np.float32(-np.inf), qs)
            results.append(SearchResult(np.ascontiguousarray(qi), np.ascontiguousarray(qs)))
            row += n
        return results

    def _scan(
        self, q: NDArray[np.float32], k: int, floor: float | None
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        # Biggest first, so that the last pieces taken are the small ones (less straggling).
        segments = sorted((s for s in self._store.segments if s.size), key=lambda s: -s.size)
        if not segments:
            return (
                np.full((len(q), k), -1, dtype=np.int64),
                np.full((len(q), k), -np.inf, dtype=np.float32),
            )
        # A tombstone is a zero vector scoring exactly 0, so it can only take the place of a
        # live hit when scores <= 0 are wanted; only then ask for extra rows.
        include_dead = floor is None or floor <= 0
        gemm = (
            scorer_for(self.dimension)
            if self.storage == "float32" and use_gemm(len(q), self.dimension)
            else None
        )

        def scan(pieces: Iterator[Segment]) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
            """The top k of the segments this thread takes, folded as it goes."""
            parts_i: list[NDArray[np.int64]] = []
            parts_s: list[NDArray[np.float32]] = []
            columns = 0
            for seg in pieces:
                kk = min(k + (seg.dead if include_dead else 0), seg.size)
                if gemm is not None:
                    scores, rows = gemm.search(q, seg.vectors[: seg.size], kk)
                else:
                    scores, rows = seg.search(q, kk)
                parts_i.append(np.where(rows >= 0, seg.ids[rows], -1))
                parts_s.append(scores)
                columns += kk
                if len(parts_i) > 1 and columns >= _FOLD_COLUMNS * k:
                    ids, best = _top_k(np.hstack(parts_i), np.hstack(parts_s), k)
                    parts_i, parts_s, columns = [ids], [best], k
            if not parts_i:  # a helper that found every piece taken
                return np.empty((len(q), 0), dtype=np.int64), np.empty((len(q), 0), np.float32)
            return _top_k(np.hstack(parts_i), np.hstack(parts_s), k)

        if self._pool is None:
            return scan(iter(segments))
        # Below a few MB a second thread costs more in hand-off than it saves in scanning.
        small = sum(s.size for s in segments) * self.dimension < (1 << 20)
        parts = self._pool.share(scan, segments, 1 if small else self._pool.threads)
        if len(parts) == 1:
            return parts[0]
        return _top_k(np.hstack([p[0] for p in parts]), np.hstack([p[1] for p in parts]), k)

    # -- writing ---------------------------------------------------------------------------

    def add(self, ids: ArrayLike, vectors: ArrayLike, *, model_id: str) -> None:
        """Add new ids with their L2-normalised vectors from ``model_id``; all or nothing.

        Raises :class:`DuplicateIdError` if an id is already present or repeated.
        """
        self._check_model(model_id)
        id_array = validate_ids(ids)
        v = validate_vectors(vectors, self.dimension, "vector")
        if len(v) != len(id_array):
            raise InvalidVectorError(f"{len(id_array)} ids but {len(v)} vectors")
        if len(np.unique(id_array)) != len(id_array):
            raise DuplicateIdError("an id appears twice in the batch")
        with self._writer:
            rows = self._store.rows
            present = [i for i in id_array.tolist() if i in rows]
            if present:
                raise DuplicateIdError(f"{len(present)} id(s) already present, e.g. {present[0]}")
            self._store.reserve(len(id_array))  # allocate before blocking searches
            with self._rw.write():
                self._store.append(id_array, v)

    def remove(self, ids: ArrayLike) -> int:
        """Remove ids; unknown ids are ignored. Returns how many were removed.

        O(1) per id: the row becomes a tombstone until :meth:`compact`.
        """
        id_list = validate_ids(ids).tolist()
        with self._writer, self._rw.write():
            return self._store.remove(id_list)

    def apply(self, rows: Iterable[Row]) -> int:
        """Apply change rows to the live index, as `load_or_rebuild` replays them: ``(id,
        vector)`` adds or replaces, ``(id, None)`` removes (unknown ids are ignored). Applying
        the same rows twice leaves the same contents. Returns how many rows it applied."""
        with self._writer, self._rw.write():
            return self._replay(self._store, rows)

    def compact(self) -> int:
        """Rewrite live rows into fresh segments, dropping tombstones; returns rows freed.

        Searches continue while the copy is built (it briefly needs memory for both copies);
        they pause only for the swap.
        """
        with self._writer:
            old = self._store
            if old.dead == 0:
                return 0
            fresh = self._copy_store(old)
            with self._rw.write():
                self._store = fresh
            return old.dead

    def _copy_store(self, old: Store) -> Store:
        fresh = Store(self.dimension, self.storage)
        fresh.reserve(old.count)
        for ids, vectors in zip(old.live_chunks("ids"), old.live_chunks("vectors"), strict=True):
            fresh.append(ids, vectors)
        return fresh

    # -- persistence -----------------------------------------------------------------------

    def snapshot(self, position: int) -> SnapshotInfo:
        """Write every live row atomically to ``snapshot_path``, labelled with ``position``.

        ``position`` is the source-of-truth position that the index includes: every change
        at or before it must already be applied. Changes after it may be included too; replay
        is idempotent. Raises :class:`SnapshotWriteError` and leaves the previous snapshot
        readable if the write fails (e.g. a full disk).
        """
        if self.snapshot_path is None:
            raise ValueError("this index has no snapshot_path")
        start = time.perf_counter()
        header = SnapshotHeader(
            namespace=self.namespace,
            dimension=self.dimension,
            model_id=self.model_id,
            storage=self.storage,
            count=0,
            position=int(position),
        )
        # Holding only the writer lock: searches keep running while the vectors stream out.
        with self._writer:
            written = write_snapshot(self.snapshot_path, header, self._store)
        return SnapshotInfo(
            path=self.snapshot_path,
            count=written.count,
            position=written.position,
            bytes=self.snapshot_path.stat().st_size,
            seconds=time.perf_counter() - start,
        )

    def load_or_rebuild(self, rows_since: RowsSince) -> LoadReport:
        """Replace the contents with the snapshot plus newer rows, or rebuild from scratch.

        Loads ``snapshot_path`` if it verifies (format version, namespace, dimension, model,
        storage, size, checksums), then applies ``rows_since(snapshot.position)``. If the
        snapshot is absent or fails any check, everything comes from
        ``rows_since(BEGINNING)``. Rows are ``(id, vector)`` to add or replace and
        ``(id, None)`` to remove. The new contents are built aside and swapped in at the end,
        so a failure (also inside ``rows_since``) leaves the index as it was.
        """
        start = time.perf_counter()
        reason: str | None = None
        loaded = 0
        position = BEGINNING
        store: Store | None = None
        if self.snapshot_path is None:
            reason = "no snapshot path"
        else:
            try:
                header, store = read_snapshot(
                    self.snapshot_path,
                    namespace=self.namespace,
                    dimension=self.dimension,
                    model_id=self.model_id,
                    storage=self.storage,
                )
                position, loaded = header.position, header.count
            except SnapshotError as exc:
                reason = str(exc)
        if store is None:
            store = Store(self.dimension, self.storage)
        with self._writer:
            replayed = self._replay(store, rows_since(position))
            with self._rw.write():
                self._store = store
        return LoadReport(
            source="snapshot" if reason is None else "rebuild",
            position=position,
            loaded=loaded,
            replayed=replayed,
            count=store.count,
            seconds=time.perf_counter() - start,
            reason=reason,
        )

    def _replay(self, store: Store, rows: Iterable[Row]) -> int:
        replayed = 0
        batch: dict[int, NDArray[np.float32]] = {}

        def flush() -> None:
            if batch:
                ids = np.fromiter(batch.keys(), dtype=np.int64, count=len(batch))
                store.remove(ids.tolist())  # replace semantics
                store.append(ids, np.stack(list(batch.values())))
                batch.clear()

        for id_, vector in rows:
            replayed += 1
            key = int(validate_ids([id_])[0])
            if vector is None:
                flush()
                store.remove([key])
                continue
            batch.pop(key, None)
            batch[key] = validate_vectors(vector, self.dimension, "vector")[0]
            if len(batch) >= _REPLAY_BATCH:
                flush()
        flush()
        return replayed

    # -- validation ------------------------------------------------------------------------

    def _check_model(self, model_id: str) -> None:
        if model_id != self.model_id:
            raise ModelMismatchError(
                f"namespace is pinned to model {self.model_id!r}, got {model_id!r}"
            )


def _top_k(
    ids: NDArray[np.int64], scores: NDArray[Any], k: int
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Best ``k`` per row by score, ties by ascending id; pad with -1 / -inf."""
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32, copy=False)
    n = ids.shape[1]
    if n > 2 * k:
        # Only columns scoring at least the k-th best can be in the top k (ties at the cut-off
        # included, so that ids settle them): select those in linear time, sort only them.
        kth = np.partition(scores, n - k, axis=1)[:, n - k : n - k + 1]
        keep = int((scores >= kth).sum(axis=1).max())
        if keep < n:
            cut = np.argpartition(scores, n - keep, axis=1)[:, n - keep :]
            ids = np.take_along_axis(ids, cut, axis=1)
            scores = np.take_along_axis(scores, cut, axis=1)
            n = keep
    # lexsort's last key is primary.
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    ids = np.take_along_axis(ids, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    if n < k:
        pad = k - n
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return ids.astype(np.int64, copy=False), scores
