"""Namespaces share nothing: a search only ever returns ids its namespace holds."""

from __future__ import annotations

import tempfile
from contextlib import closing
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from index import IndexBackend, IndexRegistry

from .backends import OpenBackend
from .conftest import MODEL, unit_vectors


def test_search_never_returns_foreign_ids(open_backend: OpenBackend) -> None:
    # A heavy backend (Milvus: seconds per new collection) runs fewer, smaller examples.
    heavy = getattr(open_backend, "heavy", False)

    @settings(max_examples=3 if heavy else 20, deadline=None, derandomize=True)
    @given(
        namespaces=st.integers(2, 4 if heavy else 20),
        per_namespace=st.integers(1, 60),
        shared=st.integers(0, 20),
        seed=st.integers(0, 2**32 - 1),
    )
    def check(namespaces: int, per_namespace: int, shared: int, seed: int) -> None:
        never_returns_foreign_ids(open_backend, namespaces, per_namespace, shared, seed)

    check()


def never_returns_foreign_ids(
    open_backend: OpenBackend, namespaces: int, per_namespace: int, shared: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    d = 8
    common = unit_vectors(rng, shared, d)  # exact duplicates present in every namespace
    with tempfile.TemporaryDirectory() as tmp, closing(open_backend(Path(tmp))) as backend:
        held: dict[str, set[int]] = {}
        for n in range(namespaces):
            name = f"org-{n}"
            index = backend.get_or_create(name, dimension=d, model_id=MODEL)
            own = unit_vectors(rng, per_namespace, d)
            # Ids overlap in value across namespaces on purpose: id spaces are separate.
            ids = rng.choice(1000, size=per_namespace + shared, replace=False)
            index.add(ids, np.vstack([own, common]), model_id=MODEL)
            held[name] = set(ids.tolist())
        probes = np.vstack([common, unit_vectors(rng, 5, d)])
        for name, ids_held in held.items():
            result = backend.get(name).search(probes, model_id=MODEL, k=per_namespace + shared)
            returned = set(result.ids[result.ids >= 0].tolist())
            assert returned == ids_held  # k covers every row, so all and only its own come back
        assert backend.namespaces() == sorted(held)


def test_same_vector_in_two_namespaces_scores_only_locally(backend: IndexBackend) -> None:
    rng = np.random.default_rng(5)
    v = unit_vectors(rng, 1, 16)
    a = backend.get_or_create("a", dimension=16, model_id=MODEL)
    b = backend.get_or_create("b", dimension=16, model_id=MODEL)
    a.add([1], v, model_id=MODEL)
    b.add([2], v, model_id=MODEL)
    b.remove([2])
    assert a.search(v, model_id=MODEL, k=3).hits() == [
        (1, a.search(v, model_id=MODEL).scores[0, 0])
    ]
    assert b.search(v, model_id=MODEL, k=3).hits() == []
    assert b.search(v, model_id=MODEL, k=3, min_score=0.5).hits() == []


# -- the embedded index only ---------------------------------------------------------------


def test_memory_is_reported_per_namespace(registry: IndexRegistry) -> None:
    rng = np.random.default_rng(6)
    for n, name in enumerate(["org-b", "org-a", "org-c"]):
        index = registry.get_or_create(name, dimension=8, model_id=MODEL)
        if n:  # org-b stays empty
            index.add(np.arange(10 * n), unit_vectors(rng, 10 * n, 8), model_id=MODEL)
    report = registry.memory_bytes()
    assert sorted(report) == ["org-a", "org-b", "org-c"]
    for name, held in report.items():
        assert held == registry.get(name).memory_bytes()
