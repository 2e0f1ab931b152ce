"""The registry that hands out one :class:`VectorIndex` per namespace."""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from pathlib import Path

import faiss

from ._concurrency import SearchPool
from ._store import Storage
from .backend import IndexBackend, NamespaceIndex
from .errors import (
    DimensionMismatchError,
    ModelMismatchError,
    NamespaceNotFoundError,
    RegistryLockedError,
    StorageMismatchError,
)
from .vector_index import VectorIndex

SNAPSHOT_SUFFIX = ".widx"


class IndexRegistry:
    """One index per namespace, each pinned to a dimension, a model id and a storage layout:
    the embedded :class:`~index.backend.IndexBackend`.

    Namespaces share nothing but the search threads: each has its own vectors, ids, locks and
    snapshot file, and every operation is a method of exactly one namespace's index, so no
    code path can search two namespaces at once.

    ``snapshot_dir`` (optional) holds one file per namespace, named by the SHA-256 of the
    namespace so that any string is a safe name; the registry holds an exclusive ``flock`` on
    it so that two processes never write the same snapshots.

    ``threads`` search threads (default: all cores) share each scan of a big namespace (see
    ``index._kernels`` and ``SearchPool.share``).
    """

    def __init__(
        self,
        snapshot_dir: Path | None = None,
        *,
        threads: int | None = None,
        micro_batch: bool = True,
    ) -> None:
        self.threads = threads or os.cpu_count() or 1
        faiss.omp_set_num_threads(self.threads)
        self._pool = SearchPool(self.threads)
        self._micro_batch = micro_batch
        self._lock = threading.Lock()
        self._indexes: dict[str, VectorIndex] = {}
        self.snapshot_dir = snapshot_dir
        self._lock_fd: int | None = None
        if snapshot_dir is not None:
            snapshot_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(snapshot_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                self._pool.shutdown()
                raise RegistryLockedError(f"{snapshot_dir} is used by another process") from exc
            self._lock_fd = fd

    def snapshot_path(self, namespace: str) -> Path | None:
        if self.snapshot_dir is None:
            return None
        digest = hashlib.sha256(namespace.encode()).hexdigest()
        return self.snapshot_dir / f"{digest}{SNAPSHOT_SUFFIX}"

    def get_or_create(
        self,
        namespace: str,
        *,
        dimension: int,
        model_id: str,
        storage: Storage = "float32",
    ) -> VectorIndex:
        """Return the namespace's index, creating an empty one on first use.

        Raises :class:`DimensionMismatchError`, :class:`ModelMismatchError` or
        :class:`StorageMismatchError` if the namespace exists with other pins.
        """
        if not isinstance(namespace, str) or not namespace:
            raise ValueError("namespace must be a non-empty string")
        with self._lock:
            index = self._indexes.get(namespace)
            if index is None:
                index = VectorIndex(
                    namespace,
                    dimension=dimension,
                    model_id=model_id,
                    storage=storage,
                    snapshot_path=self.snapshot_path(namespace),
                    pool=self._pool,
                    micro_batch=self._micro_batch,
                )
                self._indexes[namespace] = index
                return index
        if index.dimension != dimension:
            raise DimensionMismatchError(
                f"namespace is pinned to dimension {index.dimension}, not {dimension}"
            )
        if index.model_id != model_id:
            raise ModelMismatchError(
                f"namespace is pinned to model {index.model_id!r}, not {model_id!r}"
            )
        if index.storage != storage:
            raise StorageMismatchError(f"namespace stores {index.storage}, not {storage}")
        return index

    def get(self, namespace: str) -> VectorIndex:
        """Return an existing namespace's index or raise :class:`NamespaceNotFoundError`."""
        with self._lock:
            index = self._indexes.get(namespace)
        if index is None:
            raise NamespaceNotFoundError(f"no index for namespace {namespace!r}")
        return index

    def __contains__(self, namespace: object) -> bool:
        with self._lock:
            return namespace in self._indexes

    def namespaces(self) -> list[str]:
        with self._lock:
            return sorted(self._indexes)

    def drop(self, namespace: str, *, delete_snapshot: bool = True) -> None:
        """Forget a namespace (e.g. for a model migration cut-over) and its snapshot."""
        with self._lock:
            index = self._indexes.pop(namespace, None)
        if index is None:
            raise NamespaceNotFoundError(f"no index for namespace {namespace!r}")
        if delete_snapshot and index.snapshot_path is not None:
            index.snapshot_path.unlink(missing_ok=True)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held per namespace, for metrics."""
        with self._lock:
            indexes = list(self._indexes.items())
        return {name: index.memory_bytes() for name, index in indexes}

    def close(self) -> None:
        """Stop the search threads and release the snapshot directory lock."""
        self._pool.shutdown()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> IndexRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The embedded index is one implementation of the backend contract; mypy fails here, not in
# the service, if either class drifts from its protocol.
_EMBEDDED_BACKEND: type[IndexBackend] = IndexRegistry
_EMBEDDED_NAMESPACE_INDEX: type[NamespaceIndex] = VectorIndex
