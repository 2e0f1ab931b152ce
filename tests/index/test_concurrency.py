"""Concurrent searches, one writer, snapshots and the micro-batcher."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from index import IndexRegistry
from index._concurrency import MicroBatcher
from index._kernels import GemmScorer

from .conftest import MODEL, unit_vectors


@pytest.mark.parametrize(
    ("d", "loaded"),
    # 512-d: concurrent single searches coalesce into batches scored by sgemm. Loaded: the
    # stable rows live in a mapped snapshot, which removes and compaction then act on.
    [(32, False), (512, False), (512, True)],
)
def test_searches_stay_correct_while_writer_and_snapshot_run(
    registry: IndexRegistry, d: int, loaded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    scored = GemmScorer.search

    def counted(self: GemmScorer, queries: Any, rows: Any, k: int) -> Any:
        batches.append(len(queries))
        return scored(self, queries, rows, k)

    monkeypatch.setattr(GemmScorer, "search", counted)
    rng = np.random.default_rng(21)
    index = registry.get_or_create("org", dimension=d, model_id=MODEL)
    stable = unit_vectors(rng, 2000, d)
    index.add(np.arange(2000), stable, model_id=MODEL)
    if loaded:
        index.snapshot(0)
        assert index.load_or_rebuild(lambda position: []).source == "snapshot"
        index.remove([0])
        index.add([0], stable[:1], model_id=MODEL)  # row 0 now lives outside the mapping
    churn = unit_vectors(rng, 3000, d)
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        for start in range(0, 3000, 100):
            ids = np.arange(10_000 + start, 10_000 + start + 100)
            index.add(ids, churn[start : start + 100], model_id=MODEL)
            index.remove(ids[::2])
            if start % 1000 == 0:
                index.snapshot(start)
                index.compact()
        stop.set()

    def searcher(seed: int) -> int:
        local = np.random.default_rng(seed)
        done = 0
        while not stop.is_set() or done < 20:
            i = int(local.integers(2000))
            result = index.search(stable[i], model_id=MODEL, k=3)
            if result.ids[0, 0] != i or abs(result.scores[0, 0] - 1.0) > 1e-5:
                errors.append(f"query {i} got {result.hits()}")
            if not set(result.ids[0].tolist()) <= set(range(2000)) | set(range(10_000, 13_000)):
                errors.append(f"unknown id in {result.hits()}")
            done += 1
        return done

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(searcher, s) for s in range(7)]
        pool.submit(writer).result()
        searched = sum(f.result() for f in futures)
    assert errors == []
    top = index.search(stable[:8], model_id=MODEL, k=1)
    np.testing.assert_array_equal(top.ids[:, 0], np.arange(8))
    assert bool(batches) == (d == 512)  # 8 queries of 512-d go to sgemm, of 32-d never
    assert searched >= 140
    assert index.count == 2000 + 1500
    assert index.tombstones == 9 * 50  # compacted at start=2000, then 9 batches of 50


def test_micro_batched_results_equal_direct_results(registry: IndexRegistry) -> None:
    rng = np.random.default_rng(8)
    index = registry.get_or_create("org", dimension=16, model_id=MODEL)
    index.add(np.arange(5000), unit_vectors(rng, 5000, 16), model_id=MODEL)
    queries = unit_vectors(rng, 64, 16)
    direct = index.search(queries, model_id=MODEL, k=5)
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(
                lambda i: index.search(queries[i], model_id=MODEL, k=1 + i % 5, min_score=0.2),
                range(64),
            )
        )
    for i, result in enumerate(results):
        k = 1 + i % 5
        want = direct.ids[i, :k]
        want = np.where(direct.scores[i, :k] >= 0.2, want, -1)
        np.testing.assert_array_equal(result.ids[0], want)


def test_micro_batcher_coalesces_and_propagates_errors() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        gate.wait(5)
        if -1 in items:
            raise ValueError("bad item")
        return [i * 2 for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch=8)
    with ThreadPoolExecutor(10) as pool:
        first = pool.submit(batcher.submit, 100)
        while not sizes:  # the first call leads a batch of one and blocks on the gate
            threading.Event().wait(0.001)
        rest = [pool.submit(batcher.submit, i) for i in range(9)]
        threading.Event().wait(0.2)  # let the nine queue up behind the leader
        gate.set()
        assert first.result() == 200
        assert [f.result() for f in rest] == [i * 2 for i in range(9)]
    assert sizes == [1, 8, 1]
    gate.clear()
    gate.set()
    try:
        batcher.submit(-1)
    except ValueError as exc:
        assert str(exc) == "bad item"
    else:
        raise AssertionError("error not propagated")


def test_micro_batcher_waits_briefly_for_the_rest_of_a_batch() -> None:
    """After a batch of two, a lone leader waits (a tenth of that batch's run time) for a
    second caller instead of scanning alone."""
    sizes: list[int] = []
    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if len(sizes) == 1:
            gate.wait(5)  # the first caller's batch holds the others back
        elif len(items) == 2:
            threading.Event().wait(1.0)  # a slow batch: the next leader may wait ~100 ms
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch=8, max_linger_s=10.0)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.submit, 0)
        while not sizes:
            threading.Event().wait(0.001)
        pair = [pool.submit(batcher.submit, i) for i in (1, 2)]
        threading.Event().wait(0.1)  # both queue behind the first batch
        gate.set()
        assert [first.result(), *(f.result() for f in pair)] == [0, 1, 2]
        assert sizes == [1, 2]
        lone = pool.submit(batcher.submit, 3)
        threading.Event().wait(0.02)
        late = pool.submit(batcher.submit, 4)
        assert (lone.result(), late.result()) == (3, 4)
    assert sizes == [1, 2, 2]
