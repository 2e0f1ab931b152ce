"""Bad input is a clear domain error and changes nothing.

Tests taking ``backend`` run on every backend; the last section is the embedded index's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index import (
    DimensionMismatchError,
    DuplicateIdError,
    IndexBackend,
    IndexRegistry,
    InvalidIdError,
    InvalidQueryError,
    InvalidVectorError,
    ModelMismatchError,
    NamespaceNotFoundError,
    RegistryLockedError,
    StorageMismatchError,
    VectorIndexError,
)

from .conftest import MODEL, unit_vectors


@pytest.fixture
def index(backend: IndexBackend):  # type: ignore[no-untyped-def]
    ix = backend.get_or_create("org", dimension=4, model_id=MODEL)
    ix.add([1, 2], unit_vectors(np.random.default_rng(0), 2, 4), model_id=MODEL)
    return ix


def test_error_codes_are_stable() -> None:
    assert DimensionMismatchError.code == "dimension_mismatch"
    assert issubclass(DuplicateIdError, VectorIndexError)
    assert not issubclass(VectorIndexError, IndexError)


@pytest.mark.parametrize(
    ("ids", "vectors", "error"),
    [
        ([3], np.ones((1, 5)) / np.sqrt(5), DimensionMismatchError),
        ([3], [[np.nan, 0, 0, 0]], InvalidVectorError),
        ([3], [[np.inf, 0, 0, 0]], InvalidVectorError),
        ([3], [[1.0, 1.0, 0, 0]], InvalidVectorError),  # not normalised
        ([3], [[0.0, 0, 0, 0]], InvalidVectorError),
        ([3, 4], [[1.0, 0, 0, 0]], InvalidVectorError),  # count mismatch
        ([2], [[1.0, 0, 0, 0]], DuplicateIdError),  # already present
        ([3, 3], [[1.0, 0, 0, 0], [0, 1.0, 0, 0]], DuplicateIdError),
        ([-1], [[1.0, 0, 0, 0]], InvalidIdError),
        ([1.5], [[1.0, 0, 0, 0]], InvalidIdError),
        ([[3]], [[1.0, 0, 0, 0]], InvalidIdError),
        ([3], [["a", "b", "c", "d"]], InvalidVectorError),
    ],
)
def test_bad_add_changes_nothing(index, ids, vectors, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        index.add(ids, vectors, model_id=MODEL)
    assert index.count == 2
    assert not index.contains(3)


def test_wrong_model_is_refused(index) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelMismatchError):
        index.add([3], [[1.0, 0, 0, 0]], model_id="other")
    with pytest.raises(ModelMismatchError):
        index.search([1.0, 0, 0, 0], model_id="other")


@pytest.mark.parametrize(
    ("query", "k", "min_score", "error"),
    [
        ([1.0, 0, 0], 1, None, DimensionMismatchError),
        ([1.0, 0, 0, 0], 0, None, InvalidQueryError),
        ([1.0, 0, 0, 0], 10_001, None, InvalidQueryError),
        ([1.0, 0, 0, 0], 1, float("nan"), InvalidQueryError),
        ([np.nan, 0, 0, 0], 1, None, InvalidVectorError),
    ],
)
def test_bad_search(index, query, k, min_score, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        index.search(query, model_id=MODEL, k=k, min_score=min_score)


def test_namespace_is_pinned(backend: IndexBackend) -> None:
    backend.get_or_create("org", dimension=4, model_id=MODEL)
    with pytest.raises(DimensionMismatchError):
        backend.get_or_create("org", dimension=8, model_id=MODEL)
    with pytest.raises(ModelMismatchError):
        backend.get_or_create("org", dimension=4, model_id="other")
    with pytest.raises(NamespaceNotFoundError):
        backend.get("nobody")
    with pytest.raises(ValueError, match="namespace"):
        backend.get_or_create("", dimension=4, model_id=MODEL)
    assert "org" in backend
    backend.drop("org")
    assert "org" not in backend
    assert backend.namespaces() == []
    with pytest.raises(NamespaceNotFoundError):
        backend.drop("org")


def test_remove_unknown_ids_is_a_no_op(index) -> None:  # type: ignore[no-untyped-def]
    assert index.remove([99, 100]) == 0
    assert index.remove([1, 1]) == 1
    assert index.remove([1]) == 0  # already gone: removing is idempotent
    assert index.count == 1


# -- the embedded index only ---------------------------------------------------------------


def test_namespace_storage_is_pinned(registry: IndexRegistry) -> None:
    registry.get_or_create("org", dimension=4, model_id=MODEL)
    with pytest.raises(StorageMismatchError):
        registry.get_or_create("org", dimension=4, model_id=MODEL, storage="float16")


def test_snapshot_dir_is_locked(tmp_path: Path) -> None:
    with IndexRegistry(tmp_path, threads=1), pytest.raises(RegistryLockedError):
        IndexRegistry(tmp_path, threads=1)
    IndexRegistry(tmp_path, threads=1).close()  # released on close
