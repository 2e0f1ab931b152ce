"""`apply`: change rows from the source of truth, applied to a live index, idempotently."""

from __future__ import annotations

import numpy as np

from index import IndexBackend

from .conftest import MODEL, BruteForce, assert_same, unit_vectors
from .test_congruence import hits


def test_apply_adds_replaces_and_removes_like_a_replay(backend: IndexBackend) -> None:
    rng = np.random.default_rng(17)
    index = backend.get_or_create("org-a", dimension=8, model_id=MODEL)
    x = unit_vectors(rng, 6, 8)
    index.add([1, 2, 3], x[:3], model_id=MODEL)
    rows = [(2, x[3]), (3, None), (4, x[4]), (9, None), (5, x[5])]

    assert index.apply(rows) == 5
    want = BruteForce()
    want.add([1, 2, 4, 5], np.stack([x[0], x[3], x[4], x[5]]))
    assert index.count == 4
    assert_same(hits(index.search(x, model_id=MODEL, k=6)), want.search(x, 6))

    # The same changes again (a catch-up that overlaps the last one) change nothing.
    assert index.apply(rows) == 5
    assert index.count == 4
    assert_same(hits(index.search(x, model_id=MODEL, k=6)), want.search(x, 6))


def test_apply_nothing_is_a_no_op(backend: IndexBackend) -> None:
    index = backend.get_or_create("org-b", dimension=8, model_id=MODEL)
    assert index.apply([]) == 0
    assert index.count == 0
