"""Per-namespace vector indexes over FAISS: a library that knows nothing of HTTP, orgs or crypto.

Typical use by the service::

    registry = IndexRegistry(Path("/var/lib/wajah/index"))
    index = registry.get_or_create("org-42", dimension=128, model_id="sface-2021dec")
    index.load_or_rebuild(lambda position: db.embedding_changes_since(position))
    index.add([1001], [vector], model_id="sface-2021dec")
    result = index.search(probe, model_id="sface-2021dec", k=5, min_score=0.363)
    index.snapshot(position=db.head_position())
"""

from .errors import (
    DimensionMismatchError,
    DuplicateIdError,
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
from .vector_index import (
    BEGINNING,
    Hit,
    LoadReport,
    RowsSince,
    SearchResult,
    SnapshotInfo,
    VectorIndex,
)

__all__ = [
    "BEGINNING",
    "FORMAT_VERSION",
    "DimensionMismatchError",
    "DuplicateIdError",
    "Hit",
    "IndexRegistry",
    "InvalidIdError",
    "InvalidQueryError",
    "InvalidVectorError",
    "LoadReport",
    "ModelMismatchError",
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
