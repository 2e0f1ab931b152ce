"""Domain errors raised by the index library.

Every error carries a stable, machine-readable ``code`` so that the service can map it to an
HTTP status in one place without parsing messages.
"""

from __future__ import annotations


class VectorIndexError(Exception):
    """Base class of every error raised by :mod:`index`."""

    code = "index_error"


class DimensionMismatchError(VectorIndexError):
    """A vector, query or snapshot has another dimension than the namespace is pinned to."""

    code = "dimension_mismatch"


class ModelMismatchError(VectorIndexError):
    """A vector or query comes from another model than the namespace is pinned to."""

    code = "model_mismatch"


class StorageMismatchError(VectorIndexError):
    """A namespace was requested with another storage layout than it already has."""

    code = "storage_mismatch"


class InvalidVectorError(VectorIndexError):
    """A vector is malformed: wrong shape, non-finite values, or not L2-normalised."""

    code = "invalid_vector"


class InvalidIdError(VectorIndexError):
    """An id is not a non-negative int64."""

    code = "invalid_id"


class DuplicateIdError(VectorIndexError):
    """An id is already in the namespace, or appears twice in one batch."""

    code = "duplicate_id"


class InvalidQueryError(VectorIndexError):
    """A search was asked with invalid parameters (for example ``k < 1``)."""

    code = "invalid_query"


class NamespaceNotFoundError(VectorIndexError):
    """The registry holds no index for the namespace."""

    code = "namespace_not_found"


class SnapshotError(VectorIndexError):
    """A snapshot file is missing, truncated, corrupt, or does not match the namespace."""

    code = "snapshot_invalid"


class SnapshotWriteError(VectorIndexError):
    """Writing a snapshot failed (disk full, I/O error); the previous snapshot is intact."""

    code = "snapshot_write_failed"


class RegistryLockedError(VectorIndexError):
    """Another process holds the snapshot directory of a registry."""

    code = "registry_locked"


class IndexUnavailableError(VectorIndexError):
    """A remote index (Milvus) cannot be reached or did not answer in time; nothing the
    caller was told succeeded is lost (the database holds it), so a retry later works."""

    code = "index_unavailable"
