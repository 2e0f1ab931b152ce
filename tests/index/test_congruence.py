"""FAISS results equal a numpy brute-force reference: ids exactly, scores to 1e-5."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from index import IndexRegistry, SearchResult, VectorIndex

from .conftest import MODEL, BruteForce, assert_same, unit_vectors


def hits(result: SearchResult) -> list[list[tuple[int, float]]]:
    return [[(h.id, h.score) for h in result.hits(i)] for i in range(len(result.ids))]


@pytest.mark.parametrize("storage", ["float32", "float16"])
@pytest.mark.parametrize("min_score", [None, -1.0, 0.0, 0.15])
@pytest.mark.parametrize("d", [32, 128])  # 25 queries of 128-d are scored by sgemm
def test_add_remove_search_reload_matches_brute_force(
    registry: IndexRegistry, storage: str, min_score: float | None, d: int
) -> None:
    rng = np.random.default_rng(1234)
    index = registry.get_or_create("org-a", dimension=d, model_id=MODEL, storage=storage)  # type: ignore[arg-type]
    ref = BruteForce(storage)
    # 9000 rows span several growing segments (1024, 2048, 4096, ...).
    x = unit_vectors(rng, 9000, d)
    ids = rng.choice(10**12, size=9000, replace=False)
    for start in range(0, 9000, 1500):
        index.add(ids[start : start + 1500], x[start : start + 1500], model_id=MODEL)
        ref.add(ids[start : start + 1500].tolist(), x[start : start + 1500])
    gone = ids[rng.choice(9000, size=2500, replace=False)].tolist()
    assert index.remove(gone) == 2500
    ref.remove(gone)
    q = np.vstack([x[:5], unit_vectors(rng, 20, d)])
    for k in (1, 7, 40):
        got = hits(index.search(q, model_id=MODEL, k=k, min_score=min_score))
        assert_same(got, ref.search(q, k, min_score))
    assert index.count == 6500
    assert index.tombstones == 2500

    index.snapshot(position=99)
    reloaded = VectorIndex(
        "org-a",
        dimension=d,
        model_id=MODEL,
        storage=storage,
        snapshot_path=index.snapshot_path,  # type: ignore[arg-type]
    )
    report = reloaded.load_or_rebuild(lambda position: [])
    assert (report.source, report.position, report.count) == ("snapshot", 99, 6500)
    assert_same(hits(reloaded.search(q, model_id=MODEL, k=10, min_score=min_score)),
                ref.search(q, 10, min_score))  # fmt: skip

    assert index.compact() == 2500
    assert index.tombstones == 0
    assert_same(hits(index.search(q, model_id=MODEL, k=10, min_score=min_score)),
                ref.search(q, 10, min_score))  # fmt: skip
    for gone_id in gone[:50]:
        assert gone_id not in index
        assert gone_id not in reloaded


@pytest.mark.parametrize("d", [16, 512])  # 12 queries of 512-d are scored by sgemm
def test_single_and_batched_queries_agree(registry: IndexRegistry, d: int) -> None:
    from index._gemm import use_gemm

    assert use_gemm(12, d) == (d == 512) and not use_gemm(1, d)
    rng = np.random.default_rng(7)
    index = registry.get_or_create("org-b", dimension=d, model_id=MODEL)
    x = unit_vectors(rng, 3000, d)
    index.add(np.arange(3000), x, model_id=MODEL)
    index.remove(np.arange(0, 3000, 7))
    q = np.vstack([x[1:4], unit_vectors(rng, 9, d)])
    for min_score in (None, 0.0, 0.1):
        batch = index.search(q, model_id=MODEL, k=5, min_score=min_score)
        for i in range(12):
            one = index.search(q[i], model_id=MODEL, k=5, min_score=min_score)
            np.testing.assert_array_equal(one.ids[0], batch.ids[i])
            np.testing.assert_allclose(one.scores[0], batch.scores[i], atol=1e-6)


def test_k_larger_than_count_pads(registry: IndexRegistry) -> None:
    rng = np.random.default_rng(3)
    index = registry.get_or_create("org-c", dimension=8, model_id=MODEL)
    x = unit_vectors(rng, 3, 8)
    index.add([5, 6, 7], x, model_id=MODEL)
    index.remove([6])
    result = index.search(x[0], model_id=MODEL, k=4)
    assert result.ids[0].tolist()[:2] == [5, 7] or result.ids[0].tolist()[:2] == [7, 5]
    assert result.ids[0].tolist()[2:] == [-1, -1]
    assert result.ids[0, 0] == 5
    assert np.isneginf(result.scores[0, 2:]).all()


class IndexMachine(RuleBasedStateMachine):
    """Random add / remove / compact / snapshot+reload / search against the reference."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.default_rng(0)
        self.d = 8
        self.ref = BruteForce()
        self.next_id = 0
        self.position = 0

    @initialize(storage=st.sampled_from(["float32", "float16"]))
    def setup(self, storage: str) -> None:
        import tempfile
        from pathlib import Path

        self.tmp = tempfile.TemporaryDirectory()
        self.ref.storage = storage
        self.index = VectorIndex(
            "ns", dimension=self.d, model_id=MODEL, storage=storage,  # type: ignore[arg-type]
            snapshot_path=Path(self.tmp.name) / "ns.widx",
        )  # fmt: skip

    def teardown(self) -> None:
        if hasattr(self, "tmp"):
            self.tmp.cleanup()

    @rule(n=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
    def add(self, n: int, seed: int) -> None:
        # Seeded by the first id too, so that no two rows are the same vector: exact ties
        # at the top-k cut-off may resolve either way.
        x = unit_vectors(np.random.default_rng((seed, self.next_id)), n, self.d)
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        self.index.add(ids, x, model_id=MODEL)
        self.ref.add(ids, x)
        self.position += 1

    @rule(fraction=st.floats(0, 1), seed=st.integers(0, 2**32 - 1))
    def remove(self, fraction: float, seed: int) -> None:
        present = sorted(self.ref.vectors)
        rng = np.random.default_rng(seed)
        chosen = [i for i in present if rng.random() < fraction] + [self.next_id + 5]
        self.index.remove(chosen)
        self.ref.remove(chosen)
        self.position += 1

    @rule()
    def compact(self) -> None:
        self.index.compact()

    @rule()
    def snapshot_and_reload(self) -> None:
        self.index.snapshot(self.position)
        report = self.index.load_or_rebuild(lambda position: [])
        assert report.source == "snapshot"
        assert report.position == self.position

    @rule(
        k=st.integers(1, 20), min_score=st.sampled_from([None, 0.0, 0.3]), seed=st.integers(0, 99)
    )
    def search(self, k: int, min_score: float | None, seed: int) -> None:
        q = unit_vectors(np.random.default_rng(seed), 3, self.d)
        got = hits(self.index.search(q, model_id=MODEL, k=k, min_score=min_score))
        assert_same(got, self.ref.search(q, k, min_score))

    @invariant()
    def counts_agree(self) -> None:
        if hasattr(self, "index"):
            assert self.index.count == len(self.ref.vectors)


TestIndexMachine = IndexMachine.TestCase
TestIndexMachine.settings = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
