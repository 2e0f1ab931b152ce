"""The Milvus index backend beside the embedded exact index, on the same vectors.

    python -m benchmarks.milvus [--sizes 100000,1000000] [--dim 512] [--quick]
    python -m benchmarks.milvus --uri http://host:19530      (an existing server or cluster)

Without ``--uri`` it starts the ``milvus`` wheel's standalone 2.3.5 server in a temporary
directory with its default settings (the proxy's 200 ms time tick included) and stops it at
the end. Per gallery size, for both backends through the same ``NamespaceIndex`` calls:

* **rebuild**: ``load_or_rebuild`` of an empty namespace from rows held in memory (the rows a
  database would stream), i.e. the insert rate; Milvus then flushes (seals its segments and
  builds their FLAT index: timed on its own);
* **single query**: p50 / p99 of one probe at a time, the two backends interleaved sample by
  sample so that both see the same machine;
* **16 in flight**: 16 threads searching at once: queries per second and p50 latency;
* **mate recall**: the share of probes whose mate (another capture of the same identity) is
  the top hit, on face-like vectors (a shared direction plus per-identity noise, genuine
  cosine 0.5-0.8 like SFace across sessions; see ``benchmarks.gallery``).

The embedded index runs in this process with 2 search threads; Milvus runs on the same two
cores as its own process (standalone: proxy, coordinators, one query node). Writes JSON like
every suite.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from benchmarks.common import print_table, summarise, time_alternating, write_results
from index import IndexRegistry, NamespaceIndex

MODEL = "bench-model"
IN_FLIGHT = 16


def face_like(n: int, d: int, probes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A gallery of ``n`` unit vectors, ``probes`` other captures of gallery identities, and
    the gallery row of each probe's mate."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(d).astype(np.float32)
    shared /= np.linalg.norm(shared)
    a = 0.4  # impostor cosine about a²/(1+a²) ≈ 0.14, as measured for the default pack

    def centres(count: int) -> np.ndarray:
        c = a * shared + rng.standard_normal((count, d)).astype(np.float32) / np.sqrt(d)
        return c / np.linalg.norm(c, axis=1, keepdims=True)

    def capture(c: np.ndarray, genuine: np.ndarray) -> np.ndarray:
        s = np.sqrt(1 / genuine - 1)[:, None]  # two captures: cosine ≈ genuine
        x = c + s * rng.standard_normal(c.shape).astype(np.float32) / np.sqrt(d)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    gallery = np.empty((n, d), dtype=np.float32)
    mates = rng.choice(n, size=probes, replace=False)
    probe_centres: dict[int, np.ndarray] = {}
    for start in range(0, n, 50_000):
        c = centres(min(50_000, n - start))
        gallery[start : start + len(c)] = capture(c, np.full(len(c), 0.9, dtype=np.float32))
        for m in mates[(mates >= start) & (mates < start + len(c))]:
            probe_centres[int(m)] = c[m - start]
    genuine = rng.uniform(0.5, 0.8, size=probes).astype(np.float32)
    probe_vectors = capture(np.stack([probe_centres[int(m)] for m in mates]), genuine)
    return gallery, probe_vectors, mates


@contextmanager
def milvus_server(uri: str | None) -> Iterator[str]:
    if uri:
        yield uri
        return
    from milvus import MilvusServer, MilvusServerConfig

    with tempfile.TemporaryDirectory(prefix="wajah-bench-milvus-") as base:
        server = MilvusServer(MilvusServerConfig())
        server.set_base_dir(base)
        try:
            server.start()
            yield f"http://127.0.0.1:{server.listen_port}"
        finally:
            server.stop()


def rows(gallery: np.ndarray) -> Callable[[int], Iterator[tuple[int, np.ndarray]]]:
    def rows_since(_position: int) -> Iterator[tuple[int, np.ndarray]]:
        for i in range(len(gallery)):
            yield i, gallery[i]

    return rows_since


def in_flight(index: NamespaceIndex, probes: np.ndarray, total: int) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        started = time.perf_counter()
        index.search(probes[i % len(probes)], model_id=MODEL, k=10)
        with lock:
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        list(pool.map(one, range(total)))
    seconds = time.perf_counter() - started
    latencies.sort()
    return {
        "qps": round(total / seconds, 1),
        "p50_ms": round(latencies[len(latencies) // 2], 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 2),
    }


def mate_recall(index: NamespaceIndex, probes: np.ndarray, mates: np.ndarray) -> float:
    found = index.search(probes, model_id=MODEL, k=1).ids[:, 0]
    return float(np.mean(found == mates))


def bench_size(uri: str, n: int, d: int, samples: int, probes_n: int) -> dict[str, Any]:
    from index.milvus import MilvusBackend

    gallery, probes, mates = face_like(n, d, probes_n, seed=n)
    result: dict[str, Any] = {"n": n, "d": d}
    local_backend = IndexRegistry(None, threads=2)
    remote_backend = MilvusBackend(uri, prefix=f"bench{n}", timeout_s=600)
    try:
        backends = {"local": local_backend, "milvus": remote_backend}
        indexes: dict[str, NamespaceIndex] = {}
        for name, backend in backends.items():
            if name == "milvus" and "org" in backend:
                backend.drop("org")
            index = backend.get_or_create("org", dimension=d, model_id=MODEL)
            started = time.perf_counter()
            report = index.load_or_rebuild(rows(gallery))
            seconds = time.perf_counter() - started
            assert report.count == n, (name, report)
            result[name] = {"rebuild_s": round(seconds, 2), "insert_per_s": round(n / seconds)}
            indexes[name] = index
        started = time.perf_counter()
        remote_backend.client.flush(indexes["milvus"].collection)  # type: ignore[attr-defined]
        result["milvus"]["flush_s"] = round(time.perf_counter() - started, 2)
        # Let the sealed segments' index builds and the query node's handoff finish.
        time.sleep(3)

        probe_at = iter(range(10**9))
        calls = {
            name: (lambda ix=ix: ix.search(probes[next(probe_at) % len(probes)], model_id=MODEL))
            for name, ix in indexes.items()
        }
        timed = time_alternating(calls, samples=samples, warmup=5)
        for name, ix in indexes.items():
            result[name]["search_single"] = summarise(timed[name], 5)
            result[name]["in_flight_16"] = in_flight(ix, probes, total=max(64, samples * 4))
            result[name]["mate_recall"] = mate_recall(ix, probes, mates)
            exact = indexes["local"].search(probes, model_id=MODEL, k=10).ids
            got = ix.search(probes, model_id=MODEL, k=10).ids
            result[name]["top10_equal_to_local"] = float(np.mean(np.all(got == exact, axis=1)))
    finally:
        remote_backend.drop("org") if "org" in remote_backend else None
        remote_backend.close()
        local_backend.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--uri", default=None, help="an existing Milvus (default: start one)")
    parser.add_argument("--quick", action="store_true", help="smoke size: 5,000 × 512")
    args = parser.parse_args()
    sizes = [5_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    samples = 15 if args.quick else args.samples
    results = []
    with milvus_server(args.uri) as uri:
        for n in sizes:
            print(f"\n{n} × {args.dim}: building both backends ...", flush=True)
            results.append(bench_size(uri, n, args.dim, samples, probes_n=min(200, n // 10)))
    rows_out = []
    for r in results:
        for name in ("local", "milvus"):
            s = r[name]
            rows_out.append([
                f"{r['n']:,} × {r['d']}", name,
                s["search_single"]["p50_ms"], s["search_single"]["p99_ms"],
                s["in_flight_16"]["qps"], s["in_flight_16"]["p50_ms"],
                f"{s['insert_per_s']:,}", s["rebuild_s"], s.get("flush_s", "-"),
                f"{s['mate_recall']:.4f}", f"{s['top10_equal_to_local']:.3f}",
            ])  # fmt: skip
    print_table(
        "Milvus (standalone 2.3.5, FLAT/IP) vs the embedded exact index, same vectors",
        ["gallery", "backend", "p50 ms", "p99 ms", "16-in-flight q/s", "16-in-flight p50",
         "insert/s", "rebuild s", "flush s", "mate recall", "top-10 = exact"],
        rows_out,
    )  # fmt: skip
    write_results(
        "milvus",
        {"quick": args.quick, "results": results, "baseline": "the embedded exact index"},
    )


if __name__ == "__main__":
    main()
