"""The embedded index's scan over many segments shared by the search threads.

Namespaces above a few MB are scanned by every search thread taking segments from one queue
(``SearchPool.share``); each thread folds its hits into a top k as it goes and the threads'
lists are merged. These tests use namespaces big enough to take that path, with ties, tombstones
and large k, against the numpy reference.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import faiss
import numpy as np
import pytest

from index import IndexRegistry, _scan
from index._concurrency import SearchPool
from index._kernels import heap_top_k, scan_top_k
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
        # Pool threads and the caller, nobody else.
        caller = threading.current_thread().name
        assert {name for name, _ in seen} <= {
            caller,
            *(f"wajah-index-search_{i}" for i in range(3)),
        }
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


def test_share_waits_for_its_helpers_when_the_callers_part_fails() -> None:
    pool = SearchPool(2)
    try:
        helper_done = threading.Event()

        def work(items: Iterator[int]) -> int:
            if threading.current_thread().name.startswith("wajah-index-search"):
                time.sleep(0.2)  # still reading when the caller fails
                helper_done.set()
                return sum(1 for _ in items)
            raise RuntimeError("the caller's part failed")

        with pytest.raises(RuntimeError, match="caller's part"):
            pool.share(work, [1, 2, 3], threads=2)
        assert helper_done.is_set()
    finally:
        pool.shutdown()


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


def test_c_scan_top_k_equals_faiss_flat_search() -> None:
    rng = np.random.default_rng(5)
    rows = unit_vectors(rng, 5000, 512)
    queries = unit_vectors(rng, 3, 512)
    want_scores, want_rows = faiss.knn(queries, rows, 25, metric=faiss.METRIC_INNER_PRODUCT)
    for batch in (queries[:1], queries):
        got_scores, got_rows = scan_top_k(batch, rows, 25)
        assert got_rows.tolist() == want_rows[: len(batch)].tolist()
        np.testing.assert_allclose(got_scores, want_scores[: len(batch)], atol=1e-5)
    everything = scan_top_k(queries[:1], rows[:7], 7)
    assert sorted(everything[1][0].tolist()) == list(range(7))


@pytest.fixture(params=["avx512", "avx2", "portable"])
def kernel(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each code path of the C scan that this CPU can run; the fastest is put back after."""
    chosen = _scan.kernel()
    try:
        _scan.set_kernel(request.param)
    except ValueError:
        pytest.skip(f"this CPU cannot run the {request.param} kernel")
    try:
        yield request.param
    finally:
        _scan.set_kernel(chosen)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_every_kernel_matches_float64_numpy_for_any_shape(kernel: str, dtype: type) -> None:
    # Dimensions around each path's vector widths (8, 16 lanes; 32, 64 unrolled) and tails.
    rng = np.random.default_rng(11)
    for d in (1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 128, 130, 512):
        for n, nq in ((1, 1), (5, 1), (130, 1), (3, 2), (70, 3), (200, 5)):
            rows = rng.standard_normal((n, d)).astype(dtype)
            queries = rng.standard_normal((nq, d)).astype(np.float32)
            out = np.full((nq, n), np.nan, dtype=np.float32)
            _scan.inner_products(rows, queries, out)
            want = queries.astype(np.float64) @ rows.astype(np.float64).T
            np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4 * np.sqrt(d))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_every_kernel_selects_the_top_k_ties_to_the_earlier_row(kernel: str, dtype: type) -> None:
    rng = np.random.default_rng(13)
    rows = unit_vectors(rng, 9000, 48).astype(dtype)  # 9000 rows: three chunks of the scan
    rows[6000:6100] = rows[:100]  # exact ties across chunks: the earlier row must win
    rows[8990:] = rows[10]
    queries = np.vstack([rows[:2].astype(np.float32), unit_vectors(rng, 3, 48)])
    exact = np.empty((len(queries), len(rows)), dtype=np.float32)
    _scan.inner_products(rows, queries, exact)
    for k in (1, 10, 150):
        got_scores, got_rows = scan_top_k(queries, rows, k)
        from_scores = heap_top_k(exact, k)  # the same selection over scores given
        for j in range(len(queries)):
            want = np.lexsort((np.arange(len(rows)), -exact[j]))[:k]  # by score, then row
            assert got_rows[j].tolist() == want.tolist() == from_scores[1][j].tolist()
            np.testing.assert_array_equal(got_scores[j], exact[j, want])
            np.testing.assert_array_equal(from_scores[0][j], exact[j, want])
        # FAISS's heap keeps the same rows (it orders equal scores its own way).
        heaps = faiss.float_minheap_array_t()
        faiss_scores = np.empty((len(queries), k), dtype=np.float32)
        faiss_rows = np.empty((len(queries), k), dtype=np.int64)
        heaps.nh, heaps.k = len(queries), k
        heaps.val, heaps.ids = faiss.swig_ptr(faiss_scores), faiss.swig_ptr(faiss_rows)
        heaps.heapify()
        heaps.addn(len(rows), faiss.swig_ptr(exact))
        heaps.reorder()
        assert [set(r) for r in faiss_rows.tolist()] == [set(r) for r in got_rows.tolist()]
    _, ties = scan_top_k(queries[:1], rows, 2)
    assert ties[0].tolist() == [0, 6000]  # row 0 and its copy: the copy comes second
    short_scores, short_rows = scan_top_k(queries[:1], rows[:3], 5)  # k > rows: padded
    assert short_rows[0, 3:].tolist() == [-1, -1]
    assert short_scores[0, 3:].tolist() == [-np.inf, -np.inf]


def test_half_floats_widen_exactly(kernel: str) -> None:
    # Every finite half float, one per column (subnormals, the extremes, both zeros), times 1.
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = every[np.isfinite(every)]
    rows = finite.reshape(-1, 1)
    out = np.empty((1, len(rows)), dtype=np.float32)
    _scan.inner_products(rows, np.ones((1, 1), dtype=np.float32), out)
    assert out[0].tolist() == finite.astype(np.float32).tolist()


def test_scan_refuses_what_it_cannot_read() -> None:
    rows = np.zeros((4, 8), dtype=np.float32)
    query = np.zeros((1, 8), dtype=np.float32)
    out = np.zeros((1, 4), dtype=np.float32)
    cases = [
        (rows.astype(np.float64), query, out, "rows must be float32 or float16"),
        (rows, query.astype(np.float16), out, "queries and out must be float32"),
        (rows, np.zeros((1, 9), dtype=np.float32), out, "differ in dimension"),
        (rows, query, np.zeros((1, 5), dtype=np.float32), "out must have shape"),
        (rows[0], query, out, "must be 2-dimensional"),
    ]
    for r, q, o, message in cases:
        with pytest.raises(ValueError, match=message):
            _scan.inner_products(r, q, o)
    with pytest.raises(ValueError, match="not C-contiguous"):
        _scan.inner_products(rows[:, ::2], query[:, :4], out)
    frozen = out.copy()
    frozen.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _scan.inner_products(rows, query, frozen)
    with pytest.raises(ValueError, match="cannot run"):
        _scan.set_kernel("sse1")
    top = (np.zeros((1, 3), dtype=np.float32), np.zeros((1, 3), dtype=np.int64))
    top_cases = [
        ((rows.astype(np.float64), query, *top), "rows must be float32 or float16"),
        ((rows, query, top[0], top[1].astype(np.int32)), "top_rows must be int64"),
        ((rows, query, top[0], np.zeros((1, 4), dtype=np.int64)), "must both have shape"),
        ((rows, np.zeros((2, 8), dtype=np.float32), *top), "must both have shape"),
        ((rows, np.zeros((1, 7), dtype=np.float32), *top), "differ in dimension"),
    ]
    for arguments, message in top_cases:
        with pytest.raises(ValueError, match=message):
            _scan.top_k(*arguments)
    scores = np.zeros((1, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="must be float32"):
        _scan.top_k_of_scores(scores.astype(np.float64), *top)
    with pytest.raises(ValueError, match="must both have shape"):
        _scan.top_k_of_scores(np.zeros((2, 4), dtype=np.float32), *top)
    empty = np.zeros((0, 8), dtype=np.float32)
    _scan.inner_products(empty, query, np.zeros((1, 0), dtype=np.float32))  # nothing to do
