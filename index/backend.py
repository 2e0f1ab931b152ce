"""The index backend contract: what the service relies on, whichever backend holds the vectors.

An :class:`IndexBackend` is a set of namespaces (one per org and per shared watchlist); each
namespace is a :class:`NamespaceIndex` of caller-chosen int64 ids and L2-normalised vectors.
The embedded exact index (:class:`index.IndexRegistry` over :class:`index.VectorIndex`) is one
implementation; a remote one (Milvus) is another. Both are rebuilt from the database, which is
the source of truth: an index is a cache that records the database position it includes.

The value types below (hits, results, reports, rows) belong to the contract, not to one
backend, so that no backend has to import another to speak it. One test suite
(``tests/index``, the ``backend`` fixture) runs against every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import (
    DimensionMismatchError,
    InvalidIdError,
    InvalidQueryError,
    InvalidVectorError,
    ModelMismatchError,
)

# A row from the source of truth: (id, vector) adds or replaces, (id, None) removes.
Row = tuple[int, ArrayLike | None]
RowsSince = Callable[[int], Iterable[Row]]

#: ``rows_since(BEGINNING)`` must yield every live row: the position of an empty index.
BEGINNING = 0
#: Largest ``k`` a search accepts; the embedded index allocates k results per query and segment.
MAX_K = 10_000
# Float32 rounding leaves |norm - 1| around 1e-7; anything beyond this was not normalised.
NORM_TOLERANCE = 1e-3


def check_search(pinned_model: str, model_id: str, k: object, min_score: float | None) -> None:
    """A search's arguments as the contract takes them: the namespace's model, an integer
    ``k`` in 1..`MAX_K`, a finite ``min_score`` or none."""
    if model_id != pinned_model:
        raise ModelMismatchError(f"namespace is pinned to model {pinned_model!r}, got {model_id!r}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
        raise InvalidQueryError(f"k must be between 1 and {MAX_K}")
    if min_score is not None and not np.isfinite(min_score):
        raise InvalidQueryError("min_score must be finite")


def validate_ids(ids: ArrayLike) -> NDArray[np.int64]:
    """Ids as the contract takes them: non-negative int64s, one or a 1-D sequence
    (:class:`~index.errors.InvalidIdError` otherwise)."""
    raw = np.asarray(ids)
    if raw.ndim == 0:
        raw = raw[None]
    if raw.ndim != 1 or (raw.size and raw.dtype.kind not in "iu"):
        raise InvalidIdError("ids must be a 1-D sequence of integers")
    if raw.dtype.kind == "u" and raw.size and int(raw.max()) > np.iinfo(np.int64).max:
        raise InvalidIdError("id out of int64 range")
    out = raw.astype(np.int64)
    if out.size and int(out.min()) < 0:
        raise InvalidIdError("ids must be non-negative")
    return out


def validate_vectors(vectors: ArrayLike, dimension: int, what: str) -> NDArray[np.float32]:
    """Vectors as the contract takes them: one (d,) or a batch (n, d) of finite, L2-normalised
    float32 rows of the namespace's ``dimension``, as a C-contiguous (n, d) array."""
    try:
        v = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidVectorError(f"{what} is not numeric") from exc
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2:
        raise InvalidVectorError(f"{what} must be 1-D or 2-D, got {v.ndim}-D")
    if v.shape[1] != dimension:
        raise DimensionMismatchError(
            f"namespace is pinned to dimension {dimension}, got {v.shape[1]}"
        )
    if len(v) == 0:
        raise InvalidVectorError(f"no {what}")
    if not np.isfinite(v).all():
        raise InvalidVectorError(f"{what} has non-finite values")
    if np.abs(np.linalg.norm(v, axis=1) - 1).max() > NORM_TOLERANCE:
        raise InvalidVectorError(f"{what} is not L2-normalised")
    return np.ascontiguousarray(v)


class Hit(NamedTuple):
    id: int
    score: float


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Top-k ids and scores, one row per query, best first.

    ``ids`` is int64 of shape (queries, k) padded with -1; ``scores`` is float32 of the same
    shape padded with -inf. Ties in score are ordered by ascending id.
    """

    ids: NDArray[np.int64]
    scores: NDArray[np.float32]

    def hits(self, query: int = 0) -> list[Hit]:
        row_ids, row_scores = self.ids[query], self.scores[query]
        keep = row_ids >= 0
        return [Hit(int(i), float(s)) for i, s in zip(row_ids[keep], row_scores[keep], strict=True)]


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    path: Path
    count: int
    position: int
    bytes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What :meth:`NamespaceIndex.load_or_rebuild` did.

    ``source`` is ``"snapshot"`` when a verified snapshot was loaded and newer rows replayed on
    top, ``"rebuild"`` when the index was rebuilt from ``BEGINNING``; ``reason`` says why the
    snapshot was not used.
    """

    source: str
    position: int
    loaded: int
    replayed: int
    count: int
    seconds: float
    reason: str | None = None


@runtime_checkable
class NamespaceIndex(Protocol):
    """One namespace's ids and vectors, pinned to a dimension and a model id.

    Ids are non-negative int64 chosen by the caller (the database's vector ids); the index
    never invents one. Vectors are L2-normalised (``|norm - 1| <= NORM_TOLERANCE``), and a
    score is their inner product: inner product equals cosine on normalised vectors.

    Safe to call from many threads at once. Every add or remove that returned before a search
    began is visible to it. Bad input raises a :class:`~index.errors.VectorIndexError`
    subclass and changes nothing: a vector of the wrong size
    :class:`~index.errors.DimensionMismatchError`, a malformed one (wrong shape, non-finite,
    not normalised, not one per id) :class:`~index.errors.InvalidVectorError`, an id that is
    not a non-negative integer :class:`~index.errors.InvalidIdError`, another model's vector
    or query :class:`~index.errors.ModelMismatchError`.
    """

    @property
    def count(self) -> int:
        """Number of live ids."""
        ...

    def contains(self, id_: int) -> bool:
        """Whether ``id_`` is live (added and not removed since)."""
        ...

    def add(self, ids: ArrayLike, vectors: ArrayLike, *, model_id: str) -> None:
        """Add new ids, one vector each, from ``model_id``; all or nothing.

        Raises :class:`~index.errors.DuplicateIdError` if an id is already present or appears
        twice in the batch.
        """
        ...

    def remove(self, ids: ArrayLike) -> int:
        """Remove ids and return how many were live; unknown ids are ignored.

        Idempotent: removing an id twice, or repeating it in one call, removes it once.
        """
        ...

    def apply(self, rows: Iterable[Row]) -> int:
        """Apply change rows from the source of truth, with `load_or_rebuild`'s replay
        semantics: ``(id, vector)`` adds or replaces, ``(id, None)`` removes (unknown ids are
        ignored). Idempotent. Returns how many rows were applied."""
        ...

    def search(
        self,
        queries: ArrayLike,
        *,
        model_id: str,
        k: int = 10,
        min_score: float | None = None,
    ) -> SearchResult:
        """Return, for each query, the ``k`` best ids by score, best first.

        ``queries`` is one vector (d,) or a batch (q, d) from ``model_id``. Only hits scoring
        ``>= min_score`` are returned; ties in score are ordered by ascending id; rows are
        padded with -1 / -inf (see :class:`SearchResult`). Raises
        :class:`~index.errors.InvalidQueryError` if ``k`` is outside 1..``MAX_K`` or
        ``min_score`` is not finite.
        """
        ...

    def snapshot(self, position: int) -> SnapshotInfo:
        """Record every live row, labelled with the database ``position`` it includes.

        Every change at or before ``position`` must already be applied; changes after it may
        be included too, since replaying them is idempotent. Raises
        :class:`~index.errors.SnapshotWriteError` if the snapshot cannot be written, and the
        previous snapshot stays loadable.
        """
        ...

    def load_or_rebuild(self, rows_since: RowsSince) -> LoadReport:
        """Replace the contents with the newest snapshot plus ``rows_since(its position)``.

        Without a usable snapshot, everything comes from ``rows_since(BEGINNING)``. A row
        ``(id, vector)`` adds or replaces, ``(id, None)`` is a removal. A failure, also one
        raised inside ``rows_since``, leaves the index as it was.
        """
        ...


@runtime_checkable
class IndexBackend(Protocol):
    """The set of namespaces, each a :class:`NamespaceIndex`.

    Namespaces share nothing: ids are per namespace (the same id may live in two), and a
    search of one namespace only ever returns ids that namespace holds.
    """

    def get_or_create(self, namespace: str, *, dimension: int, model_id: str) -> NamespaceIndex:
        """Return the namespace's index, creating an empty one on first use.

        Raises :class:`ValueError` for an empty namespace, and
        :class:`~index.errors.DimensionMismatchError` or
        :class:`~index.errors.ModelMismatchError` if it exists with other pins.
        """
        ...

    def get(self, namespace: str) -> NamespaceIndex:
        """Return an existing namespace's index or raise
        :class:`~index.errors.NamespaceNotFoundError`."""
        ...

    def __contains__(self, namespace: object) -> bool: ...

    def namespaces(self) -> list[str]:
        """The namespaces held, sorted."""
        ...

    def drop(self, namespace: str) -> None:
        """Forget a namespace and its snapshot (e.g. at a model migration's cut-over).

        Raises :class:`~index.errors.NamespaceNotFoundError` if it is not held.
        """
        ...

    def close(self) -> None:
        """Release threads, locks and connections; the backend is unusable afterwards."""
        ...
