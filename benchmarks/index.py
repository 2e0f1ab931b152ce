"""Index figures: exact and float16 search, add, removal, snapshots, mate recall, baselines.

    python benchmarks/index.py [--quick] [--sizes 10000,100000] [--dims 128,512]

Full mode measures 10k, 100k and 1M vectors at 128-d (default pack) and 512-d (ArcFace) in one
namespace; --quick uses 2k and 20k vectors (under a minute). Prints a table and writes
benchmarks/results/index-<date>.json.

Data is face-like, not uniform: N identity centres, one enrolled capture each and one probe
capture for a sample of identities, every capture the centre plus Gaussian noise whose size
is drawn per identity so that genuine cosine spans about 0.6-0.8 while impostors sit near 0.
Mate recall is the share of probes whose own enrolled vector comes back in the top 10 at or
above THRESHOLD, the question a KYC 1:N search asks.

Baselines in the same run: a plain FAISS IndexFlatIP (batch of one, default OpenMP), numpy
brute force (matrix-vector product + argpartition), and the memory-bandwidth limit: bytes one
query must scan divided by this machine's read bandwidth, measured here in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss
import numpy as np
import psutil

from benchmarks.common import RESULTS_DIR, emit, machine_info, percentile, print_table
from index import IndexRegistry, VectorIndex

MODEL = "bench-model"
THRESHOLD = 0.4
K = 10


def face_like(n: int, d: int, probes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Enrolled (n, d), probe vectors (probes, d) and the enrolled row of each probe's mate."""
    rng = np.random.default_rng(seed)
    enrolled = np.empty((n, d), dtype=np.float32)
    mates = np.linspace(0, n - 1, probes).astype(np.int64)
    probe = np.empty((probes, d), dtype=np.float32)
    # Cosine of two captures with noise of squared norm s2 each is about 1 / (1 + s2).
    genuine = rng.uniform(0.6, 0.8, size=n).astype(np.float32)
    sigma = np.sqrt(1 / genuine - 1) / np.sqrt(d)
    chunk = 65536
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        centres = rng.standard_normal((stop - start, d), dtype=np.float32) / np.float32(np.sqrt(d))
        s = sigma[start:stop, None]
        v = centres + s * rng.standard_normal((stop - start, d), dtype=np.float32)
        enrolled[start:stop] = v / np.linalg.norm(v, axis=1, keepdims=True)
        sel = (mates >= start) & (mates < stop)
        rows = mates[sel] - start
        p = centres[rows] + s[rows] * rng.standard_normal((len(rows), d), dtype=np.float32)
        probe[sel] = p / np.linalg.norm(p, axis=1, keepdims=True)
    return enrolled, probe, mates


def read_bandwidth(threads: int) -> float:
    """Best-of-3 read bandwidth in GB/s over 1 GiB with ``threads`` threads."""
    data = np.ones(1 << 28, dtype=np.float32)
    parts = np.array_split(data, threads * 8)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(3):
            start = time.perf_counter()
            list(pool.map(np.add.reduce, parts))
            best = max(best, data.nbytes / (time.perf_counter() - start) / 1e9)
    return best


class PeakRss:
    """Samples RSS every 5 ms; ``peak`` is the maximum above the RSS at start."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss - self.base)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss - self.base)


def bandwidth_limits(n: int, d: int, bandwidth: dict[str, float]) -> dict[str, dict[str, float]]:
    """Milliseconds one query needs to read n x d vectors at the measured read bandwidth."""
    out = {}
    for storage, itemsize in (("float32", 4), ("float16", 2)):
        scanned = n * d * itemsize
        out[f"bandwidth_limit_ms_{storage}"] = {
            "one_core": round(scanned / (bandwidth["one_core_gb_s"] * 1e9) * 1000, 3),
            "all_cores": round(scanned / (bandwidth["all_cores_gb_s"] * 1e9) * 1000, 3),
        }
    return out


def latencies(fn: Callable[[int], object], samples: int, warmup: int = 3) -> list[float]:
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(samples):
        start = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


def in_flight(index: VectorIndex, probes: np.ndarray, total: int, concurrency: int = 16) -> float:
    """Queries per second with ``concurrency`` callers each issuing single queries.

    ``total`` queries are timed after ``concurrency`` warm-up queries (thread start-up).
    """
    warmup = concurrency
    counter = iter(range(warmup + total))
    started = threading.Event()
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            if i == warmup:
                marks.append(time.perf_counter())
                started.set()
            index.search(probes[i % len(probes)], model_id=MODEL, k=K)

    marks: list[float] = []
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    assert started.is_set()
    return total / (time.perf_counter() - marks[0])


def mate_recall(index: VectorIndex, probes: np.ndarray, mates: np.ndarray) -> float:
    found = 0
    for start in range(0, len(probes), 64):
        result = index.search(probes[start : start + 64], model_id=MODEL, k=K, min_score=THRESHOLD)
        found += int((result.ids == mates[start : start + 64, None]).any(axis=1).sum())
    return found / len(probes)


def stats(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "samples": len(ms),
    }


def bench_one(
    registry: IndexRegistry, n: int, d: int, bandwidth: dict[str, float], quick: bool
) -> dict[str, Any]:
    n_probes = 200 if quick else 500
    x, probes, mates = face_like(n, d, n_probes, seed=n + d)
    ids = np.arange(n, dtype=np.int64)
    raw_bytes = x.nbytes
    out: dict[str, Any] = {"n": n, "d": d, "raw_vector_bytes": raw_bytes}
    scale = max(1, n // 100_000)
    q_samples = max(30, 300 // scale)
    flight_total = max(160, 640 // scale)

    for storage in ("float32", "float16"):
        name = f"bench-{n}-{d}-{storage}"
        index = registry.get_or_create(name, dimension=d, model_id=MODEL, storage=storage)  # type: ignore[arg-type]
        r: dict[str, Any] = {}
        singles = min(2000, n // 10)
        bulk = n - singles
        with PeakRss() as rss:
            start = time.perf_counter()
            for s in range(0, bulk, 10_000):
                index.add(
                    ids[s : min(bulk, s + 10_000)], x[s : min(bulk, s + 10_000)], model_id=MODEL
                )
            r["add_bulk_vectors_per_s"] = round(bulk / (time.perf_counter() - start))
            # Single-row adds after the bulk load: the case that stalled an IndexIDMap2.
            single = latencies(
                lambda i, index=index, b=bulk: index.add(
                    ids[b + i : b + i + 1], x[b + i : b + i + 1], model_id=MODEL
                ),
                singles,
                warmup=0,
            )
        r["add_single"] = stats(single)
        r["peak_rss_over_raw"] = round(
            rss.peak / (raw_bytes // (2 if storage == "float16" else 1)), 3
        )
        r["memory_bytes_per_vector"] = round(index.memory_bytes() / index.count, 1)
        r["search_single"] = stats(
            latencies(
                lambda i, index=index: index.search(probes[i % n_probes], model_id=MODEL, k=K),
                q_samples,
            )
        )
        index.set_micro_batch(False)
        r["qps_16_in_flight_unbatched"] = round(in_flight(index, probes, flight_total // 2), 1)
        index.set_micro_batch(True)
        r["qps_16_in_flight_micro_batched"] = round(in_flight(index, probes, flight_total), 1)
        r["mate_recall"] = mate_recall(index, probes, mates)
        # Snapshot write and load.
        info = index.snapshot(position=n)
        r["snapshot_write_s"] = round(info.seconds, 3)
        r["snapshot_bytes"] = info.bytes
        os.posix_fadvise(os.open(info.path, os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)
        with PeakRss() as rss:
            report = index.load_or_rebuild(lambda position: [])
        assert report.source == "snapshot", report
        r["snapshot_load_s"] = round(report.seconds, 3)
        # Removal: one id per call, then a search with the tombstones, then compaction.
        victims = np.random.default_rng(1).choice(n, size=1000, replace=False)
        r["remove_one"] = stats(
            latencies(lambda i, index=index, v=victims: index.remove([int(v[i])]), 1000, 0)
        )
        r["search_single_with_1000_tombstones"] = stats(
            latencies(
                lambda i, index=index: index.search(probes[i % n_probes], model_id=MODEL, k=K),
                q_samples // 2,
            )
        )
        start = time.perf_counter()
        index.compact()
        r["compact_s"] = round(time.perf_counter() - start, 3)
        out[storage] = r
        registry.drop(name)

    # Baselines in the same process and run.
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    out["faiss_flat_batch1"] = stats(
        latencies(lambda i: flat.search(probes[i % n_probes : i % n_probes + 1], K), q_samples)
    )

    def numpy_search(i: int) -> None:
        scores = x @ probes[i % n_probes]
        top = np.argpartition(-scores, K)[:K]
        top[np.argsort(-scores[top])]

    out["numpy_brute_force"] = stats(latencies(numpy_search, max(10, q_samples // 3)))
    out.update(bandwidth_limits(n, d, bandwidth))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--sizes", help="comma-separated vector counts")
    parser.add_argument("--dims", default="128,512", help="comma-separated dimensions")
    args = parser.parse_args()
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([2_000, 20_000] if args.quick else [10_000, 100_000, 1_000_000])
    )
    dims = [int(s) for s in args.dims.split(",")]
    threads = os.cpu_count() or 1
    bandwidth = {
        "one_core_gb_s": round(read_bandwidth(1), 2),
        "all_cores_gb_s": round(read_bandwidth(threads), 2),
    }
    print(f"read bandwidth: {bandwidth}")
    results = []
    with (
        tempfile.TemporaryDirectory(dir=RESULTS_DIR.parent) as tmp,
        IndexRegistry(Path(tmp), threads=threads) as registry,
    ):
        for d in dims:
            for n in sizes:
                started = time.perf_counter()
                results.append(bench_one(registry, n, d, bandwidth, args.quick))
                print(f"  {n} x {d} done in {time.perf_counter() - started:.1f} s", flush=True)

    rows = []
    for r in results:
        for storage in ("float32", "float16"):
            s = r[storage]
            limit = r[f"bandwidth_limit_ms_{storage}"]
            rows.append(
                [
                    f"{r['n']:,}x{r['d']}",
                    storage,
                    s["search_single"]["p50_ms"],
                    s["search_single"]["p99_ms"],
                    s["qps_16_in_flight_unbatched"],
                    s["qps_16_in_flight_micro_batched"],
                    f"{s['mate_recall']:.4f}",
                    s["memory_bytes_per_vector"],
                    s["peak_rss_over_raw"],
                    s["add_bulk_vectors_per_s"],
                    s["add_single"]["p99_ms"],
                    s["add_single"]["max_ms"],
                    s["remove_one"]["p99_ms"],
                    s["snapshot_write_s"],
                    s["snapshot_load_s"],
                    s["compact_s"],
                    r["faiss_flat_batch1"]["p50_ms"],
                    r["numpy_brute_force"]["p50_ms"],
                    limit["one_core"],
                    limit["all_cores"],
                ]
            )
    header = "size storage p50 p99 qps16 qps16-mb mate-rec B/vec peak/raw add/s add-p99 add-max"
    header += " rm-p99 snap-w-s snap-r-s compact-s flat-p50 numpy-p50 bw-1core bw-all"
    print_table(
        "index figures (ms unless noted; qps16 = queries/s, 16 in flight)", header.split(), rows
    )
    payload = {
        "suite": "index",
        "when": datetime.now(UTC).isoformat(),
        "machine": machine_info(),
        "mode": "quick" if args.quick else "full",
        "threads": threads,
        "read_bandwidth": bandwidth,
        "threshold": THRESHOLD,
        "k": K,
        "results": results,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    if args.sizes or args.dims != "128,512":  # a partial run never overwrites the full one
        suffix += f"-n{'_'.join(map(str, sizes))}-d{'_'.join(map(str, dims))}"
    path = RESULTS_DIR / f"index-{datetime.now(UTC).strftime('%Y-%m-%d')}{suffix}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    print(f"\nwrote {path}")
    emit(payload)


if __name__ == "__main__":
    main()
