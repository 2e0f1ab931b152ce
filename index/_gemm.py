"""Exact top-k of a batch of queries over float32 rows: onnxruntime's sgemm, FAISS's heaps.

A batch of a few queries against a 64 MiB segment is a skinny matrix product. FAISS scores
it with the OpenBLAS it bundles; onnxruntime's MLAS kernels do the same product faster on
this machine (2 cores, AVX-512, one thread each, 32768 x 512 rows, top-10 included): 16
queries 7.9-9.2 ms against FAISS's 13.8-16.1 ms, 4 queries 8.1 against 11.4. At 128-d the two
are level. So batches go through a one-node ONNX graph (rows @ queries^T, transposed) run by
onnxruntime on the calling thread, and FAISS's own heap keeps the top k of each query: the
same selection FAISS's search makes (scores may differ from the scalar scan's in the last
bits of a float, as FAISS's own BLAS path does).
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import TensorProto, helper

#: Below this many queries, or this many query floats, FAISS's scalar scan is faster.
GEMM_MIN_QUERIES = 3
GEMM_MIN_QUERY_FLOATS = 1024

_lock = threading.Lock()
_scorers: dict[int, GemmScorer] = {}


def use_gemm(queries: int, dimension: int) -> bool:
    """Whether a float32 batch is scored by sgemm rather than one scalar pass per query.

    Measured per 64 MiB segment: 512-d, scalar 8.3 ms for 3 queries, sgemm 7.9; 128-d,
    scalar 19.9 ms for 8 queries, sgemm 15.3.
    """
    return queries >= GEMM_MIN_QUERIES and queries * dimension >= GEMM_MIN_QUERY_FLOATS


def scorer_for(dimension: int) -> GemmScorer:
    """The process's scorer for ``dimension`` (one onnxruntime session per dimension)."""
    with _lock:
        scorer = _scorers.get(dimension)
        if scorer is None:
            scorer = _scorers[dimension] = GemmScorer(dimension)
        return scorer


def _find_sgemv() -> Any:
    """``cblas_sgemv`` of the OpenBLAS that the FAISS wheel bundles, if it runs on OpenMP.

    FAISS loads it already; an OpenMP build runs a call on the calling thread alone when that
    thread's OpenMP thread count is 1, as on the search-pool threads. (numpy's OpenBLAS is a
    pthreads build whose thread count is process-wide: every call of it would start its
    own workers, which then spin for 0.1 s.) None where there is no such library, e.g. a FAISS
    built on MKL: the search then uses FAISS's own scan.
    """
    libs = Path(faiss.__file__).resolve().parents[1] / "faiss_cpu.libs"
    for path in sorted(libs.glob("libopenblas*.so*")):
        try:
            lib = ctypes.CDLL(str(path))
            sgemv = lib.cblas_sgemv
            parallel = lib.openblas_get_parallel()
        except (OSError, AttributeError):
            continue
        if parallel != 2:  # 0 sequential would do too, but no wheel ships one; 1 is pthreads
            continue
        sgemv.restype = None
        sgemv.argtypes = [ctypes.c_int] * 4 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
        sgemv.argtypes += [ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_void_p]
        sgemv.argtypes += [ctypes.c_int]
        return sgemv
    return None


_sgemv = _find_sgemv()
_ROW_MAJOR, _NO_TRANS = 101, 111


def sgemv_top_k(
    query: NDArray[np.float32], rows: NDArray[np.float32], k: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]] | None:
    """Scores and row numbers of the ``k`` best rows for one query, best first; None if this
    FAISS has no usable sgemv (then FAISS's own scan serves).

    OpenBLAS's sgemv reads rows several at a time; FAISS's flat scan reads one row after the
    other and ran 8-15 % slower per core here (1M rows, 512-d and 128-d, one thread each).
    With a core busy, where the search gets little more than one core, that was the whole
    gap to numpy's ``x @ q``. FAISS's heap keeps the top k, so ties keep the earlier row, as
    FAISS's scan does. ``query`` is (d,) and ``rows`` C-contiguous (n, d), ``k`` <= n.
    """
    if _sgemv is None:
        return None
    n, d = rows.shape
    scores = np.empty((1, n), dtype=np.float32)
    # ctypes releases the GIL for the call.
    _sgemv(_ROW_MAJOR, _NO_TRANS, n, d, 1.0, rows.ctypes.data, d, query.ctypes.data, 1, 0.0,
           scores.ctypes.data, 1)  # fmt: skip
    top_scores = np.empty((1, k), dtype=np.float32)
    top_rows = np.empty((1, k), dtype=np.int64)
    heaps = faiss.float_minheap_array_t()
    heaps.nh, heaps.k = 1, k
    heaps.val, heaps.ids = faiss.swig_ptr(top_scores), faiss.swig_ptr(top_rows)
    heaps.heapify()
    heaps.addn(n, faiss.swig_ptr(scores))
    heaps.reorder()
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
        # Each call runs on the calling search-pool thread, like FAISS with one OpenMP thread.
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
        scores: NDArray[Any] = self._session.run(
            None, {"rows": rows, "queries_t": np.ascontiguousarray(queries.T)}
        )[0]
        n_queries = len(queries)
        top_scores = np.empty((n_queries, k), dtype=np.float32)
        top_rows = np.empty((n_queries, k), dtype=np.int64)
        heaps = faiss.float_minheap_array_t()
        heaps.nh, heaps.k = n_queries, k
        heaps.val, heaps.ids = faiss.swig_ptr(top_scores), faiss.swig_ptr(top_rows)
        heaps.heapify()
        heaps.addn(len(rows), faiss.swig_ptr(scores))  # row numbers 0.., every heap
        heaps.reorder()
        return top_scores, top_rows
