"""Every backend's results equal a numpy brute-force reference: ids exactly, scores to 1e-5.

The tests that take ``backend`` or ``open_backend`` run on every backend through the
protocol surface alone; the last section checks what only the embedded index has (storage
layouts, tombstones, compaction, its sgemm path).
"""

from __future__ import annotations

import tempfile
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from numpy.typing import NDArray

from index import IndexBackend, IndexRegistry, NamespaceIndex, SearchResult, VectorIndex

from .backends import OpenBackend, embedded
from .conftest import MODEL, BruteForce, assert_same, unit_vectors


def hits(result: SearchResult) -> list[list[tuple[int, float]]]:
    return [[(h.id, h.score) for h in result.hits(i)] for i in range(len(result.ids))]


def add_then_remove(
    index: NamespaceIndex, ref: BruteForce, rng: np.random.Generator, d: int
) -> tuple[NDArray[np.float32], list[int]]:
    """Add 9000 rows in batches, remove 2500 of them; return the vectors and removed ids."""
    # 9000 rows span several growing segments (1024, 2048, 4096, ...) in the embedded index.
    x = unit_vectors(rng, 9000, d)
    ids = rng.choice(10**12, size=9000, replace=False)
    for start in range(0, 9000, 1500):
        index.add(ids[start : start + 1500], x[start : start + 1500], model_id=MODEL)
        ref.add(ids[start : start + 1500].tolist(), x[start : start + 1500])
    gone = ids[rng.choice(9000, size=2500, replace=False)].tolist()
    assert index.remove(gone) == 2500
    ref.remove(gone)
    return x, gone


@pytest.mark.parametrize("min_score", [None, -1.0, 0.0, 0.15])
@pytest.mark.parametrize("d", [32, 128])  # the embedded index scores 25 128-d queries by sgemm
def test_add_remove_search_reload_matches_brute_force(
    open_backend: OpenBackend, tmp_path: Path, min_score: float | None, d: int
) -> None:
    rng = np.random.default_rng(1234)
    ref = BruteForce()
    with closing(open_backend(tmp_path)) as backend:
        index = backend.get_or_create("org-a", dimension=d, model_id=MODEL)
        x, gone = add_then_remove(index, ref, rng, d)
        q = np.vstack([x[:5], unit_vectors(rng, 20, d)])
        for k in (1, 7, 40):
            got = hits(index.search(q, model_id=MODEL, k=k, min_score=min_score))
            assert_same(got, ref.search(q, k, min_score))
        assert index.count == 6500
        info = index.snapshot(position=99)
        assert (info.count, info.position) == (6500, 99)
        for gone_id in gone[:50]:
            assert not index.contains(gone_id)

    with closing(open_backend(tmp_path)) as backend:  # a restart: the snapshot comes back
        reloaded = backend.get_or_create("org-a", dimension=d, model_id=MODEL)
        report = reloaded.load_or_rebuild(lambda position: [])
        assert (report.source, report.position, report.count) == ("snapshot", 99, 6500)
        assert_same(hits(reloaded.search(q, model_id=MODEL, k=10, min_score=min_score)),
                    ref.search(q, 10, min_score))  # fmt: skip
        for gone_id in gone[:50]:
            assert not reloaded.contains(gone_id)
        for live_id in sorted(ref.vectors)[:50]:
            assert reloaded.contains(live_id)


@pytest.mark.parametrize("d", [16, 512])  # see test_only_512d_batches_take_the_sgemm_path
def test_single_and_batched_queries_agree(backend: IndexBackend, d: int) -> None:
    rng = np.random.default_rng(7)
    index = backend.get_or_create("org-b", dimension=d, model_id=MODEL)
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


def test_k_larger_than_count_pads(backend: IndexBackend) -> None:
    rng = np.random.default_rng(3)
    index = backend.get_or_create("org-c", dimension=8, model_id=MODEL)
    x = unit_vectors(rng, 3, 8)
    index.add([5, 6, 7], x, model_id=MODEL)
    index.remove([6])
    result = index.search(x[0], model_id=MODEL, k=4)
    assert result.ids[0].tolist()[:2] == [5, 7] or result.ids[0].tolist()[:2] == [7, 5]
    assert result.ids[0].tolist()[2:] == [-1, -1]
    assert result.ids[0, 0] == 5
    assert np.isneginf(result.scores[0, 2:]).all()


class IndexMachine(RuleBasedStateMachine):
    """Random add / remove / snapshot+reload / search against the reference."""

    def __init__(self, open_backend: OpenBackend) -> None:
        super().__init__()
        self.d = 8
        self.ref = BruteForce()
        self.next_id = 0
        self.position = 0
        self.tmp = tempfile.TemporaryDirectory()
        self.backend = open_backend(Path(self.tmp.name))

    @initialize()
    def setup(self) -> None:
        self.index: NamespaceIndex = self.backend.get_or_create(
            "ns", dimension=self.d, model_id=MODEL
        )

    def teardown(self) -> None:
        self.backend.close()
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
        assert self.index.count == len(self.ref.vectors)


MACHINE_SETTINGS = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_random_operations_match_brute_force(open_backend: OpenBackend) -> None:
    chosen = MACHINE_SETTINGS
    if getattr(open_backend, "heavy", False):  # a collection per example takes seconds
        chosen = settings(MACHINE_SETTINGS, max_examples=4)
    run_state_machine_as_test(lambda: IndexMachine(open_backend), settings=chosen)


# -- the embedded index only ---------------------------------------------------------------


@pytest.mark.parametrize("storage", ["float32", "float16"])
@pytest.mark.parametrize("min_score", [None, -1.0, 0.0, 0.15])
@pytest.mark.parametrize("d", [32, 128])  # 25 queries of 128-d are scored by sgemm
def test_storage_layouts_and_compaction_match_brute_force(
    registry: IndexRegistry, storage: str, min_score: float | None, d: int
) -> None:
    rng = np.random.default_rng(1234)
    index = registry.get_or_create("org-a", dimension=d, model_id=MODEL, storage=storage)  # type: ignore[arg-type]
    ref = BruteForce(storage)
    x, gone = add_then_remove(index, ref, rng, d)
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
        storage=storage,  # type: ignore[arg-type]
        snapshot_path=index.snapshot_path,
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


def test_only_512d_batches_take_the_sgemm_path() -> None:
    """test_single_and_batched_queries_agree compares FAISS's scan with sgemm at 512-d."""
    from index._kernels import use_gemm

    for d in (16, 512):
        assert use_gemm(12, d) == (d == 512) and not use_gemm(1, d)


class EmbeddedIndexMachine(IndexMachine):
    """The same operations over either storage layout, with compaction between them."""

    def __init__(self) -> None:
        super().__init__(embedded)

    @initialize(storage=st.sampled_from(["float32", "float16"]))
    def setup(self, storage: str) -> None:  # type: ignore[override]
        assert isinstance(self.backend, IndexRegistry)
        self.ref.storage = storage
        self.embedded = self.backend.get_or_create(
            "ns",
            dimension=self.d,
            model_id=MODEL,
            storage=storage,  # type: ignore[arg-type]
        )
        self.index = self.embedded

    @rule()
    def compact(self) -> None:
        self.embedded.compact()


def test_random_operations_over_storage_layouts_and_compaction() -> None:
    run_state_machine_as_test(EmbeddedIndexMachine, settings=MACHINE_SETTINGS)
