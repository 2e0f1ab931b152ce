"""The embedded index's scan over many segments shared by the search threads.

Namespaces above a few MB are scanned by every search thread taking segments from one queue
(``SearchPool.share``); each thread folds its hits into a top k as it goes and the threads'
lists are merged. These tests use namespaces big enough to take that path, with ties, tombstones
and large k, against the numpy reference.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import faiss
import numpy as np
import pytest

from index import IndexRegistry
from index._concurrency import SearchPool
from index._gemm import sgemv_top_k
from index.vector_index import _top_k

from .conftest import MODEL, BruteForce, assert_same, unit_vectors
from .test_congruence import hits

# 20,000 x 64 float32: 1.3M floats, above the one-thread cut-off (1M), in 5 segments
# (1024, 2048, 4096, 8192 and 16384 rows of at most 65,536).
N, D = 20_000, 64


def test_share_hands_every_item_to_exactly_one_thread() -> None:
    pool = SearchPool(3)
    try:
        seen: list[tuple[str, int]] = []
        lock = threading.Lock()

        def work(items: Iterator[int]) -> int:
            taken = 0
            for item in items:
                with lock:
                    seen.append((threading.current_thread().name, item))
                taken += 1
            return taken

        counts = pool.share(work, list(range(500)), threads=3)
        assert len(counts) == 3 and sum(counts) == 500
        assert sorted(item for _, item in seen) == list(range(500))
        assert all(name.startswith("wajah-index-search") for name, _ in seen)
        # Never more threads than items; one item runs on one thread.
        assert pool.share(work, [7], threads=3) == [1]
        # Two items, two threads; one may take both before the other starts.
        assert sorted(pool.share(work, [1, 2], threads=3)) in ([0, 2], [1, 1])
    finally:
        pool.shutdown()


@pytest.mark.parametrize("storage", ["float32", "float16"])
@pytest.mark.parametrize("min_score", [None, 0.2])
def test_many_segments_shared_by_two_threads_match_brute_force(
    registry: IndexRegistry, storage: str, min_score: float | None
) -> None:
    rng = np.random.default_rng(23)
    index = registry.get_or_create("big", dimension=D, model_id=MODEL, storage=storage)  # type: ignore[arg-type]
    ref = BruteForce(storage)
    x = unit_vectors(rng, N, D)
    # Exact duplicates under other ids, spread over segments: ties that only ids settle.
    x[N - 300 :] = x[:300]
    ids = rng.choice(10**12, size=N, replace=False)
    for start in range(0, N, 4000):
        index.add(ids[start : start + 4000], x[start : start + 4000], model_id=MODEL)
        ref.add(ids[start : start + 4000].tolist(), x[start : start + 4000])
    gone = ids[rng.choice(N, size=1500, replace=False)].tolist()
    index.remove(gone)
    ref.remove(gone)
    q = np.vstack([x[:3], x[150:151], unit_vectors(rng, 2, D)])
    # k = 100: each segment gives 100 + its tombstones, so the threads fold and the merge
    # preselects. (Far larger k would meet near-ties, scores 1e-7 apart, that float32 and the
    # float64 reference order differently.)
    for k in (1, 10, 100):
        for batch in (q, q[:1], q[3:4]):
            got = hits(index.search(batch, model_id=MODEL, k=k, min_score=min_score))
            assert_same(got, ref.search(batch, k, min_score))


def test_top_k_settles_ties_at_the_cut_off_by_id() -> None:
    # 100 columns, k = 3: the preselection keeps every column tied with the third best.
    scores = np.zeros((2, 100), dtype=np.float32)
    scores[0, [10, 20]] = 0.9
    scores[0, [30, 40, 50, 60]] = 0.5  # the cut-off falls inside this tie
    scores[1] = -0.25
    ids = np.arange(1000, 0, -10, dtype=np.int64)[None].repeat(2, axis=0)  # descending ids
    ids[1, 5] = -1  # a tombstone never comes back
    top_ids, top_scores = _top_k(ids, scores, 3)
    assert top_ids[0].tolist() == [800, 900, 400]  # of 700, 600, 500, 400 the smallest id
    assert top_scores[0].tolist() == pytest.approx([0.9, 0.9, 0.5])
    assert top_ids[1].tolist() == [10, 20, 30]
    assert top_scores[1].tolist() == [-0.25] * 3


def test_sgemv_scan_equals_faiss_scan() -> None:
    rng = np.random.default_rng(5)
    rows = unit_vectors(rng, 5000, 512)
    query = unit_vectors(rng, 1, 512)
    got = sgemv_top_k(query[0], rows, 25)
    if got is None:
        pytest.skip("this FAISS bundles no OpenMP OpenBLAS")
    want_scores, want_rows = faiss.knn(query, rows, 25, metric=faiss.METRIC_INNER_PRODUCT)
    assert got[1].tolist() == want_rows.tolist()
    np.testing.assert_allclose(got[0], want_scores, atol=1e-5)
    everything = sgemv_top_k(query[0], rows[:7], 7)
    assert everything is not None
    assert sorted(everything[1][0].tolist()) == list(range(7))
