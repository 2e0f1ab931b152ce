"""The exact scan's arithmetic: scores of queries against a segment's rows, and their top k.

* One query, or any batch over float16 rows: ``index._scan`` (C, ``index/_scan.c``), which
  reads each row once, front to back, into four accumulators, and widens half floats in
  registers. FAISS's own scans (the flat one, the QT_fp16 quantizer's) fold a row into a
  single accumulator, and OpenBLAS's sgemv came to it only through a ctypes lookup of the
  library FAISS bundles; see benchmarks/index.py for the figures.
* A float32 batch of a few queries or more: a skinny matrix product. onnxruntime's MLAS
  kernels do it faster than FAISS's BLAS on this machine (2 cores, AVX-512, one thread
  each, 32768 x 512 rows, top-10 included): 16 queries 7.9-9.2 ms against 13.8-16.1 ms, 4
  queries 8.1 against 11.4; at 128-d the two are level. So those batches go through a
  one-node ONNX graph (rows @ queries^T, transposed) run by onnxruntime on the calling thread.

Either way the top k of each query keeps, of equal scores, the earlier row, as FAISS's
search does, and selects in C without the GIL (the scan as it goes, sgemm's scores after).
Scores may differ from a scalar scan's in the last bits of a float.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import TensorProto, helper

from . import _scan

#: Below this many queries, or this many query floats, the C scan is faster than sgemm.
GEMM_MIN_QUERIES = 3
GEMM_MIN_QUERY_FLOATS = 1024

_lock = threading.Lock()
_scorers: dict[int, GemmScorer] = {}


def use_gemm(queries: int, dimension: int) -> bool:
    """Whether a float32 batch is scored by sgemm rather than by the C scan.

    The cut-offs were measured against FAISS's scan, before the C scan replaced it, per 64 MiB
    segment: 512-d, 3 queries 8.3 ms, sgemm 7.9; 128-d, 8 queries 19.9 ms, sgemm 15.3.
    """
    return queries >= GEMM_MIN_QUERIES and queries * dimension >= GEMM_MIN_QUERY_FLOATS


def scorer_for(dimension: int) -> GemmScorer:
    """The process's scorer for ``dimension`` (one onnxruntime session per dimension)."""
    with _lock:
        scorer = _scorers.get(dimension)
        if scorer is None:
            scorer = _scorers[dimension] = GemmScorer(dimension)
        return scorer


def scan_top_k(
    queries: NDArray[np.float32], rows: NDArray[Any], k: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Scores and row numbers of the ``k`` best ``rows`` per query, best first, ties to the
    earlier row, by the C scan (scores and selection in one pass, without the GIL).

    ``queries`` is C-contiguous float32 (q, d), ``rows`` C-contiguous float32 or float16
    (n, d), ``k`` <= n.
    """
    top_scores = np.empty((len(queries), k), dtype=np.float32)
    top_rows = np.empty((len(queries), k), dtype=np.int64)
    _scan.top_k(rows, queries, top_scores, top_rows)
    return top_scores, top_rows


def heap_top_k(
    scores: NDArray[np.float32], k: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The ``k`` best (scores, column numbers) of each row of ``scores``, best first, ties to
    the earlier column: the C scan's selection over scores computed elsewhere."""
    top_scores = np.empty((len(scores), k), dtype=np.float32)
    top_rows = np.empty((len(scores), k), dtype=np.int64)
    _scan.top_k_of_scores(scores, top_scores, top_rows)
    return top_scores, top_rows


class GemmScorer:
    """Top-k inner products of query batches against row blocks of one dimension."""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        graph = helper.make_graph(
            [
                helper.make_node("MatMul", ["rows", "queries_t"], ["scores_t"]),
                helper.make_node("Transpose", ["scores_t"], ["scores"], perm=[1, 0]),
            ],
            "batch_inner_product",
            [
                helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["n", dimension]),
                helper.make_tensor_value_info("queries_t", TensorProto.FLOAT, [dimension, "q"]),
            ],
            [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["q", "n"])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        options = ort.SessionOptions()
        # Each call runs on the thread scanning the segment, alone: the search threads are
        # the parallelism.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    def search(
        self, queries: NDArray[np.float32], rows: NDArray[np.float32], k: int
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Scores and row numbers of the ``k`` best rows per query, best first (k <= rows)."""
        scores: NDArray[np.float32] = self._session.run(
            None, {"rows": rows, "queries_t": np.ascontiguousarray(queries.T)}
        )[0]
        return heap_top_k(scores, k)
