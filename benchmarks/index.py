"""Index figures: exact and float16 search, add, removal, snapshots, mate recall, baselines.

    python -m benchmarks.index [--quick] [--sizes 10000,100000] [--dims 128,512]
                               [--load capture|none] [--samples N]

Full mode measures 10k, 100k and 1M vectors at 128-d (default pack) and 512-d (ArcFace) in one
namespace; --quick uses 2k and 20k vectors (under a minute). Prints a table and writes
benchmarks/results/index-<date>.json.

Single-query latency is measured against numpy fairly: wajah float32, wajah float16 and numpy
take turns sample by sample (the order rotated every round), so that all three see the same
machine, in two phases: idle, and while a capture loop runs beside them (``--load capture``,
the default): a separate process running ``FacePipeline.capture`` on one 640x480 JPEG of the
default pack in a loop with one onnxruntime thread, i.e. a real inference loop that keeps one
core busy, as the service's own inference does. The JSON keeps the idle phase under
``results[].float32.search_single``, ``results[].float16.search_single`` and
``results[].numpy_brute_force``, the loaded one under ``results[].under_load``, and both
phases' ratios under ``results[].search_vs_numpy``.

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
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss
import numpy as np
import psutil

from benchmarks.common import (
    RESULTS_DIR,
    emit,
    machine_info,
    percentile,
    print_table,
)
from index import IndexRegistry, VectorIndex, _scan

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


# A real inference loop in its own process: the default pack's capture of one JPEG, one
# onnxruntime thread, forever. PR_SET_PDEATHSIG kills it with this benchmark, even when paused.
CAPTURE_LOOP = """
import ctypes, signal, sys
from pathlib import Path
ctypes.CDLL(None).prctl(1, signal.SIGKILL)
from benchmarks.pipeline import single_face_jpeg
from models.pipeline import FacePipeline
from models.prepare import prepare_default_pack
pipeline = FacePipeline.load(prepare_default_pack(Path(sys.argv[1])), threads=1)
frame = single_face_jpeg()
pipeline.capture(frame)
print("ready", flush=True)
while True:
    pipeline.capture(frame)
"""
LOAD_DESCRIPTION = (
    "capture loop: a separate process running FacePipeline.capture (default pack, one "
    "onnxruntime thread) on one 640x480 JPEG back to back"
)


class CaptureLoad:
    """The capture loop, paused (SIGSTOP) except inside :meth:`running`."""

    def __init__(self, models_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CAPTURE_LOOP, str(models_dir)],
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError("the capture loop did not start")
        self.proc.send_signal(signal.SIGSTOP)
        self._ps = psutil.Process(self.proc.pid)

    def _cpu_s(self) -> float:
        t = self._ps.cpu_times()
        return float(t.user + t.system)

    @contextmanager
    def running(self) -> Iterator[dict[str, Any]]:
        """Resume the loop for the block; the dict gets the cores it used meanwhile."""
        record: dict[str, Any] = {"load": LOAD_DESCRIPTION}
        self.proc.send_signal(signal.SIGCONT)
        time.sleep(1.0)  # past its first frames, and the scheduler has placed it
        cpu, start = self._cpu_s(), time.perf_counter()
        try:
            yield record
        finally:
            record["load_cpu_cores"] = round(
                (self._cpu_s() - cpu) / (time.perf_counter() - start), 3
            )
            self.proc.send_signal(signal.SIGSTOP)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


# numpy's OpenBLAS keeps a worker thread spinning for about 0.1 s after each call (measured:
# 90 ms of CPU while the caller sleeps), which takes a core from whatever runs next. Every timed
# call therefore starts after a pause longer than that, as a request arriving alone would.
GAP_S = 0.12


def interleaved_search(
    indexes: dict[str, VectorIndex],
    x: np.ndarray,
    probes: np.ndarray,
    samples: int,
    gap_s: float,
    warmup: int = 3,
) -> dict[str, dict[str, float]]:
    """Single-query latency of wajah float32, float16 and numpy, taking turns each round
    (the order rotated by one each round), each call ``gap_s`` after the previous one.

    Rotated, not reversed: reversed every other round (a b c, c b a, a b c, ...), the first
    and last engine ran twice in a row every other round, and their second call found its
    array still partly in the last-level cache (480 MiB here, a 1M x 128 float16 gallery is
    256 MB), while the middle one never did. Rotated, no engine ever follows itself: each
    call finds the others' data in the cache, not its own."""
    turns = {name: iter(range(1 << 30)) for name in ("float32", "float16", "numpy")}

    def probe(name: str) -> np.ndarray:
        return probes[next(turns[name]) % len(probes)]

    def numpy_search() -> None:
        scores = x @ probe("numpy")
        top = np.argpartition(-scores, K)[:K]
        top[np.argsort(-scores[top])]

    calls: dict[str, Callable[[], object]] = {
        storage: lambda s=storage: indexes[s].search(probe(s), model_id=MODEL, k=K)
        for storage in ("float32", "float16")
    }
    calls["numpy"] = numpy_search
    order = list(calls)
    timings: dict[str, list[float]] = {name: [] for name in order}
    for round_ in range(warmup + samples):
        shift = round_ % len(order)
        for name in order[shift:] + order[:shift]:
            time.sleep(gap_s)
            started = time.perf_counter()
            calls[name]()
            if round_ >= warmup:
                timings[name].append((time.perf_counter() - started) * 1000)
    out: dict[str, dict[str, float]] = {name: stats(ms) for name, ms in timings.items()}
    # Each round's own ratio too: the three calls of a round ran within half a second of each
    # other, so the machine's drift over minutes cancels in it.
    for storage in ("float32", "float16"):
        paired = [w / n for w, n in zip(timings[storage], timings["numpy"], strict=True)]
        out[storage]["median_round_ratio_to_numpy"] = round(statistics.median(paired), 3)
    return out


def vs_numpy(timed: dict[str, dict[str, float]]) -> dict[str, float]:
    numpy = timed["numpy"]["p50_ms"]
    return {
        "float32_over_numpy": round(timed["float32"]["p50_ms"] / numpy, 3),
        "float16_over_numpy_float32": round(timed["float16"]["p50_ms"] / numpy, 3),
        "float32_over_numpy_median_of_rounds": timed["float32"]["median_round_ratio_to_numpy"],
        "float16_over_numpy_median_of_rounds": timed["float16"]["median_round_ratio_to_numpy"],
    }


def build(
    registry: IndexRegistry, storage: str, x: np.ndarray
) -> tuple[VectorIndex, dict[str, Any]]:
    """A namespace of ``x``: bulk adds, then single adds; their rates and the memory used."""
    n, d = x.shape
    ids = np.arange(n, dtype=np.int64)
    index = registry.get_or_create(
        f"bench-{n}-{d}-{storage}",
        dimension=d,
        model_id=MODEL,
        storage=storage,  # type: ignore[arg-type]
    )
    r: dict[str, Any] = {}
    singles = min(2000, n // 10)
    bulk = n - singles
    with PeakRss() as rss:
        start = time.perf_counter()
        for s in range(0, bulk, 10_000):
            index.add(ids[s : min(bulk, s + 10_000)], x[s : min(bulk, s + 10_000)], model_id=MODEL)
        r["add_bulk_vectors_per_s"] = round(bulk / (time.perf_counter() - start))
        # Single-row adds after the bulk load: the case that stalled an IndexIDMap2.
        single = latencies(
            lambda i: index.add(
                ids[bulk + i : bulk + i + 1], x[bulk + i : bulk + i + 1], model_id=MODEL
            ),
            singles,
            warmup=0,
        )
    r["add_single"] = stats(single)
    r["peak_rss_over_raw"] = round(rss.peak / (x.nbytes // (2 if storage == "float16" else 1)), 3)
    r["memory_bytes_per_vector"] = round(index.memory_bytes() / index.count, 1)
    return index, r


def upkeep(
    index: VectorIndex, probes: np.ndarray, mates: np.ndarray, q_samples: int, flight: int
) -> dict[str, Any]:
    """Throughput in flight, mate recall, snapshot write/load, removals, compaction."""
    n, n_probes = index.count, len(probes)
    r: dict[str, Any] = {}
    index.set_micro_batch(False)
    r["qps_16_in_flight_unbatched"] = round(in_flight(index, probes, flight // 2), 1)
    index.set_micro_batch(True)
    r["qps_16_in_flight_micro_batched"] = round(in_flight(index, probes, flight), 1)
    r["mate_recall"] = mate_recall(index, probes, mates)
    info = index.snapshot(position=n)
    r["snapshot_write_s"] = round(info.seconds, 3)
    r["snapshot_bytes"] = info.bytes
    os.posix_fadvise(os.open(info.path, os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)
    report = index.load_or_rebuild(lambda position: [])
    assert report.source == "snapshot", report
    r["snapshot_load_s"] = round(report.seconds, 3)
    # Removal: one id per call, then a search with the tombstones, then compaction.
    victims = np.random.default_rng(1).choice(n, size=1000, replace=False)
    r["remove_one"] = stats(latencies(lambda i: index.remove([int(victims[i])]), 1000, 0))
    r["search_single_with_1000_tombstones"] = stats(
        latencies(lambda i: index.search(probes[i % n_probes], model_id=MODEL, k=K), q_samples // 2)
    )
    start = time.perf_counter()
    index.compact()
    r["compact_s"] = round(time.perf_counter() - start, 3)
    return r


def bench_one(
    registry: IndexRegistry,
    n: int,
    d: int,
    bandwidth: dict[str, float],
    quick: bool,
    load: CaptureLoad | None,
    samples: int | None,
) -> dict[str, Any]:
    n_probes = 200 if quick else 500
    x, probes, mates = face_like(n, d, n_probes, seed=n + d)
    out: dict[str, Any] = {"n": n, "d": d, "raw_vector_bytes": x.nbytes}
    scale = max(1, n // 100_000)
    q_samples = samples or (30 if quick else 60)
    flight_total = max(160, 640 // scale)

    indexes: dict[str, VectorIndex] = {}
    for storage in ("float32", "float16"):
        indexes[storage], out[storage] = build(registry, storage, x)
    # Quick mode is a smoke test: no pauses, fewer samples.
    gap_s = 0.0 if quick else GAP_S
    idle = interleaved_search(indexes, x, probes, q_samples, gap_s)
    for storage in ("float32", "float16"):
        out[storage]["search_single"] = idle[storage]
    out["numpy_brute_force"] = idle["numpy"]
    out["search_vs_numpy"] = {"idle": vs_numpy(idle)}
    if load is not None:
        with load.running() as loaded:
            timed = interleaved_search(indexes, x, probes, q_samples, gap_s)
        loaded.update({s: {"search_single": timed[s]} for s in ("float32", "float16")})
        out["under_load"] = {**loaded, "numpy_brute_force": timed["numpy"]}
        out["search_vs_numpy"]["capture_loop"] = vs_numpy(timed)
    for storage, index in indexes.items():
        out[storage].update(upkeep(index, probes, mates, q_samples, flight_total))
        registry.drop(index.namespace)
    del indexes

    # Baselines in the same process and run.
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    out["faiss_flat_batch1"] = stats(
        latencies(lambda i: flat.search(probes[i % n_probes : i % n_probes + 1], K), q_samples)
    )
    out.update(bandwidth_limits(n, d, bandwidth))
    return out


def print_comparison(results: list[dict[str, Any]]) -> None:
    """The interleaved single-query comparison with numpy, idle and under the capture loop."""
    rows = []
    for r in results:
        phases = [("idle", r, None)]
        if "under_load" in r:
            phases.append(("capture loop", r["under_load"], r["under_load"]["load_cpu_cores"]))
        for phase, timed, cores in phases:
            numpy = timed["numpy_brute_force"]
            f32, f16 = timed["float32"]["search_single"], timed["float16"]["search_single"]
            rows.append(
                [
                    f"{r['n']:,}x{r['d']}",
                    phase,
                    "-" if cores is None else cores,
                    numpy["samples"],
                    numpy["p50_ms"],
                    f32["p50_ms"],
                    f16["p50_ms"],
                    round(f32["p50_ms"] / numpy["p50_ms"], 3),
                    round(f16["p50_ms"] / numpy["p50_ms"], 3),
                    f32["median_round_ratio_to_numpy"],
                    f16["median_round_ratio_to_numpy"],
                    numpy["p99_ms"],
                    f32["p99_ms"],
                    f16["p99_ms"],
                ]
            )
    header = "size phase load-cores samples numpy-p50 f32-p50 f16-p50 f32/numpy f16/numpy"
    header += " f32/numpy-rounds f16/numpy-rounds numpy-p99 f32-p99 f16-p99"
    print_table(
        "single query, interleaved with numpy x @ q + argpartition (ms; x/numpy: ratio of p50s,"
        " -rounds: median of each round's ratio; goal f32 <= 1.05, f16 <= 0.55)",
        header.split(),
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--sizes", help="comma-separated vector counts")
    parser.add_argument("--dims", default="128,512", help="comma-separated dimensions")
    parser.add_argument(
        "--load",
        choices=("capture", "none"),
        default="capture",
        help="the loaded phase of the search comparison: a capture loop beside it, or none",
    )
    parser.add_argument("--samples", type=int, help="search samples per phase and engine")
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
    print(f"read bandwidth: {bandwidth}; scan kernel: {_scan.kernel()}")
    results = []
    with (
        tempfile.TemporaryDirectory(dir=RESULTS_DIR.parent) as tmp,
        IndexRegistry(Path(tmp), threads=threads) as registry,
    ):
        load = CaptureLoad(Path(tmp) / "models") if args.load == "capture" else None
        try:
            for d in dims:
                for n in sizes:
                    started = time.perf_counter()
                    results.append(
                        bench_one(registry, n, d, bandwidth, args.quick, load, args.samples)
                    )
                    print(f"  {n} x {d} done in {time.perf_counter() - started:.1f} s", flush=True)
        finally:
            if load is not None:
                load.close()

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
    print_comparison(results)
    payload = {
        "suite": "index",
        "load": LOAD_DESCRIPTION if args.load == "capture" else None,
        "when": datetime.now(UTC).isoformat(),
        "machine": machine_info(),
        "mode": "quick" if args.quick else "full",
        "threads": threads,
        "scan_kernel": _scan.kernel(),
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
