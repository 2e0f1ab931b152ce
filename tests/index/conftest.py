from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from index import IndexBackend, IndexRegistry

from .backends import BACKENDS, Milvus, OpenBackend

MODEL = "test-model-v1"


def unit_vectors(rng: np.random.Generator, n: int, d: int) -> NDArray[np.float32]:
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


class BruteForce:
    """The numpy reference: a dict of id -> vector and an exhaustive sort."""

    def __init__(self, storage: str = "float32") -> None:
        self.storage = storage
        self.vectors: dict[int, NDArray[np.float32]] = {}

    def add(self, ids: list[int], vectors: NDArray[np.float32]) -> None:
        for i, v in zip(ids, vectors, strict=True):
            stored = v.astype(np.float16).astype(np.float32) if self.storage == "float16" else v
            self.vectors[int(i)] = stored

    def remove(self, ids: list[int]) -> None:
        for i in ids:
            self.vectors.pop(int(i), None)

    def search(
        self, q: NDArray[np.float32], k: int, min_score: float | None = None
    ) -> list[list[tuple[int, float]]]:
        if not self.vectors:
            return [[] for _ in q]
        ids = np.array(sorted(self.vectors), dtype=np.int64)
        x = np.stack([self.vectors[i] for i in ids.tolist()])
        scores = (q.astype(np.float64) @ x.T.astype(np.float64)).astype(np.float32)
        out = []
        for row in scores:
            order = np.lexsort((ids, -row))[:k]
            hits = [(int(ids[j]), float(row[j])) for j in order]
            if min_score is not None:
                hits = [h for h in hits if h[1] >= min_score]
            out.append(hits)
        return out


def assert_same(got: list[list[tuple[int, float]]], want: list[list[tuple[int, float]]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert [i for i, _ in g] == [i for i, _ in w]
        np.testing.assert_allclose([s for _, s in g], [s for _, s in w], atol=1e-5)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[IndexRegistry]:
    with IndexRegistry(tmp_path / "snapshots", threads=2) as reg:
        yield reg


@pytest.fixture(params=BACKENDS, scope="session")
def open_backend(request: pytest.FixtureRequest) -> OpenBackend:
    """Each backend in turn (session-scoped: a factory holds no state, and hypothesis tests
    may take it)."""
    opener: OpenBackend = request.param
    if isinstance(opener, Milvus):  # the real server, started once per session
        return opener.bound(request.getfixturevalue("milvus_uri"))
    return opener


@pytest.fixture(autouse=True)
def _drop_test_collections(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test on the Milvus backend, drop the collections it made on the shared
    server (each keeps memory on the query node while loaded)."""
    yield
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or not isinstance(callspec.params.get("open_backend"), Milvus):
        return
    from pymilvus import MilvusClient

    client = MilvusClient(uri=request.getfixturevalue("milvus_uri"))
    try:
        for name in client.list_collections():
            if name.startswith(Milvus.test_prefix):
                client.drop_collection(name)
    finally:
        client.close()


@pytest.fixture
def backend(open_backend: OpenBackend, tmp_path: Path) -> Iterator[IndexBackend]:
    opened = open_backend(tmp_path)
    try:
        yield opened
    finally:
        opened.close()
