"""Per-namespace vector indexes: a library that knows nothing of HTTP, orgs or crypto.

The service depends on two protocols (``index.backend``): an :class:`IndexBackend` hands out
one :class:`NamespaceIndex` per namespace. The embedded exact index (a C scan, FAISS heaps),
:class:`IndexRegistry` of :class:`VectorIndex`, implements them; a second backend (Milvus) is
to keep the same contract and pass the same tests (``tests/index/backends.py``).

Typical use by the service::

    registry: IndexBackend = IndexRegistry(Path("/var/lib/wajah/index"))
    index = registry.get_or_create("org-42", dimension=128, model_id="sface-2021dec")
    index.load_or_rebuild(lambda position: db.embedding_changes_since(position))
    index.add([1001], [vector], model_id="sface-2021dec")
    result = index.search(probe, model_id="sface-2021dec", k=5, min_score=0.363)
    index.snapshot(position=db.head_position())
"""

from .backend import (
    BEGINNING,
    Hit,
    IndexBackend,
    LoadReport,
    NamespaceIndex,
    RowsSince,
    SearchResult,
    SnapshotInfo,
)
from .errors import (
    DimensionMismatchError,
    DuplicateIdError,
    IndexUnavailableError,
    InvalidIdError,
    InvalidQueryError,
    InvalidVectorError,
    ModelMismatchError,
    NamespaceNotFoundError,
    RegistryLockedError,
    SnapshotError,
    SnapshotWriteError,
    StorageMismatchError,
    VectorIndexError,
)
from .registry import IndexRegistry
from .snapshot import FORMAT_VERSION, SnapshotHeader
from .vector_index import VectorIndex

__all__ = [
    "BEGINNING",
    "FORMAT_VERSION",
    "DimensionMismatchError",
    "DuplicateIdError",
    "Hit",
    "IndexBackend",
    "IndexRegistry",
    "IndexUnavailableError",
    "InvalidIdError",
    "InvalidQueryError",
    "InvalidVectorError",
    "LoadReport",
    "ModelMismatchError",
    "NamespaceIndex",
    "NamespaceNotFoundError",
    "RegistryLockedError",
    "RowsSince",
    "SearchResult",
    "SnapshotError",
    "SnapshotHeader",
    "SnapshotInfo",
    "SnapshotWriteError",
    "StorageMismatchError",
    "VectorIndex",
    "VectorIndexError",
]
