"""End-to-end load against a live uvicorn on loopback: enroll, verify, search, screen.

    python -m benchmarks.load [--quick] [--galleries 10000,100000,1000000]
                              [--concurrency 1,8,32] [--watchlist 100000]

For each gallery size (default 10k, 100k, 1M synthetic enrollments of one org; --quick: 1k
and 3k), a fresh server process starts on the same home (snapshot + replay of the rows
added since), then every operation runs at each concurrency with a bounded number of
requests: ``clients`` threads, each with its own keep-alive connection, all released at once
by a barrier. Requests carry the same 640×480 single-face JPEG (`benchmarks.pipeline`):

* enroll  POST /v1/subjects/{new id}/enrollments (multipart, one frame; a new subject each)
* verify  POST /v1/verify against one subject enrolled from that JPEG
* search  POST /v1/search, top 5 of the org's gallery
* screen  POST /v1/watchlists/{id}/screen against a shared watchlist of ``--watchlist``
  synthetic entries (default 100k) that the org owns and contributes to

Galleries are synthesised (`benchmarks.gallery`: identity centres plus per-capture noise fitted
to the real model's genuine and impostor scores, measured on augmented t1.jpg captures at the
start of every run) and inserted with `subject_store.insert_enrollments_bulk` before the server
starts. Every non-2xx answer or transport error counts as an error (expected: 0).

CPU share at concurrency 1, per operation, from figures measured in the same cell:

* pipeline: `FacePipeline.capture` on the same JPEG, run in-process right after each request
  (alternating, so both see the same machine load), on as many threads as the server gives a
  lone request's capture (its solo pipeline: every usable core);
* search: the same request with a vector probe (no pipeline) minus the framework figure;
* framework: an authenticated trivial request (GET /v1/org/settings) — auth, routing,
  validation, JSON;
* other: the rest (database writes, audit rows, sealing frames for enroll).

At every concurrency the server's CPU seconds per request (user + system, from /proc) and the
benchmark client's own are reported: on a 2-core machine the client's threads compete with
the server for the same cores.
"""

from __future__ import annotations

import argparse
import base64
import os
import tempfile
import threading
import time
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.api import Server, free_port, server_env, solo_capture_threads
from benchmarks.common import percentile, print_table, write_results
from benchmarks.faces import measure_scores
from benchmarks.gallery import SynthesisParams, check, gallery_chunks, insert_gallery
from benchmarks.pipeline import single_face_jpeg

SEED = 20261127
WATCHLIST_SEED = SEED + 1
OPERATIONS = ("enroll", "verify", "search", "screen")
TARGETS = {  # issue 5 and issue 6, concurrency 1, gallery / watchlist 100k
    "enroll_p50_ms": 70.0,
    "verify_p50_ms": 60.0,
    "search_p50_ms_at_100k": 65.0,
    "screen_p50_ms_at_100k_watchlist": 70.0,
    "verify_per_s_at_8": 25.0,
    "verify_p99_ms_at_8": 400.0,
}


def requests_per_cell(concurrency: int, quick: bool) -> int:
    if quick:
        return {1: 5, 8: 8}.get(concurrency, concurrency)
    return {1: 60, 8: 160}.get(concurrency, 10 * concurrency)


def settings_for(work: Path, models_dir: Path, root_key: str, workers: int, threads: int) -> Any:
    from app.settings import Settings

    return Settings(
        home=work / "home",
        root_key=root_key,  # type: ignore[arg-type]
        model_cache_dir=models_dir,
        inference_workers=workers,
        inference_threads=threads,
        rate_limit_per_second=0,  # the load is the point, not admission
    )


def setup_org(settings: Any, params_seed: int, watchlist_size: int) -> dict[str, Any]:
    """Org with sharing on, a watchlist it owns with `watchlist_size` entries; measured scores."""
    from app.crypto import Scope
    from app.services.lifecycle import start_runtime, stop_runtime
    from app.services.orgs import create_org, update_org_settings
    from app.services.principal import Principal
    from app.services.watchlists import create_watchlist
    from app.storage import new_id
    from app.storage.schema import utcnow, watchlist_entries, watchlists

    runtime = start_runtime(settings, serving=False)
    try:
        scores = measure_scores(runtime.pipeline)
        params = SynthesisParams.from_scores(scores, scores.mean_direction)
        org_id, key = create_org(runtime, "Load Benchmark Bank")
        principal = Principal(org_id=org_id, key_id=key.key_id, scopes=frozenset({Scope.ADMIN}))
        update_org_settings(runtime, principal, {"watchlist_sharing": True})
        watchlist = create_watchlist(runtime, principal, "benchmark watchlist", None)
        watchlist_id = str(watchlist["watchlist_id"])
        started = time.perf_counter()
        number = 0
        model_id = runtime.model_id
        for vectors in gallery_chunks(params, watchlist_size, params_seed):
            rows = []
            now = utcnow()
            for vector in vectors:
                number += 1
                entry_id = new_id("wle")
                rows.append(
                    {
                        "id": entry_id,
                        "watchlist_id": watchlist_id,
                        "contributor_org_id": org_id,
                        "vector_id": number,
                        "vector": vector.astype("<f4").tobytes(),
                        "dimension": params.dimension,
                        "model_id": model_id,
                        "hashed_ref": runtime.hasher.reference(
                            org_id=org_id, model_id=model_id, enrollment_id=entry_id, vector=vector
                        ),
                        "reason_code": "benchmark",
                        "source": "capture",
                        "source_embedding_id": None,
                        "status": "active",
                        "created_at": now,
                    }
                )
            with runtime.engine.begin() as conn:
                conn.execute(watchlist_entries.insert(), rows)
                conn.execute(
                    watchlists.update()
                    .where(watchlists.c.id == watchlist_id)
                    .values(entry_seq=number)
                )
        watchlist_insert_s = time.perf_counter() - started
    finally:
        stop_runtime(runtime)
    return {
        "org_id": org_id,
        "api_key": key.plaintext,
        "watchlist_id": watchlist_id,
        "params": params,
        "scores": scores,
        "watchlist_insert_s": round(watchlist_insert_s, 2),
    }


def grow_gallery(
    settings: Any, org_id: str, params: SynthesisParams, size: int, first: int
) -> float:
    from app.services.lifecycle import start_runtime, stop_runtime

    runtime = start_runtime(settings, serving=False)
    try:
        return insert_gallery(runtime, org_id, params, size, SEED, first)
    finally:
        stop_runtime(runtime)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def run_cell(
    base_url: str,
    headers: dict[str, str],
    call: Callable[[httpx.Client], httpx.Response],
    expected: int,
    clients: int,
    total: int,
    server: psutil.Process,
    paired: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """`total` requests from `clients` threads; latency, throughput, errors, CPU per request."""
    per_client = [total // clients + (1 if n < total % clients else 0) for n in range(clients)]
    timings: list[list[float]] = [[] for _ in range(clients)]
    paired_ms: list[float] = []
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def work(slot: int) -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=120.0) as client:
            try:
                client.get("/v1/org/settings")  # open the connection
            finally:
                barrier.wait()
            for _ in range(per_client[slot]):
                started = time.perf_counter()
                try:
                    response = call(client)
                    if response.status_code != expected:
                        errors.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                timings[slot].append((time.perf_counter() - started) * 1000)
                if paired is not None:
                    started = time.perf_counter()
                    paired()
                    paired_ms.append((time.perf_counter() - started) * 1000)

    me = psutil.Process()
    threads = [threading.Thread(target=work, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    server_cpu, client_cpu = cpu_seconds(server), cpu_seconds(me)
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    server_cpu, client_cpu = cpu_seconds(server) - server_cpu, cpu_seconds(me) - client_cpu
    flat = [t for slot in timings for t in slot]
    done = len(flat)
    out: dict[str, Any] = {
        "clients": clients,
        "requests": done,
        "errors": len(errors),
        "per_s": round(done / wall, 2),
        "p50_ms": round(percentile(flat, 50), 2),
        "p95_ms": round(percentile(flat, 95), 2),
        "p99_ms": round(percentile(flat, 99), 2),
        "server_cpu_ms_per_request": round(1000 * server_cpu / done, 2),
        "client_cpu_ms_per_request": round(1000 * client_cpu / done, 2),
        "wall_s": round(wall, 2),
    }
    if errors:
        out["first_errors"] = errors[:3]
    if paired_ms:
        out["pipeline_paired_p50_ms"] = round(percentile(paired_ms, 50), 2)
        # When pairing, the client also spent the pipeline's CPU: not the server's.
        out["client_cpu_ms_per_request"] = None
    return out


def bench_gallery(
    server: Server,
    setup: dict[str, Any],
    concurrency: list[int],
    quick: bool,
    gallery: int,
    pipeline: Any,
) -> dict[str, Any]:
    jpeg = single_face_jpeg()
    image = base64.b64encode(jpeg).decode()
    headers = {"Authorization": f"Bearer {setup['api_key']}"}
    probe_vector = [float(x) for x in pipeline.capture(jpeg).embedding]
    model_id = pipeline.model_id
    watchlist = setup["watchlist_id"]
    fresh = count()
    tag = f"g{gallery}"

    with httpx.Client(base_url=server.base_url, headers=headers, timeout=120.0) as client:
        response = client.post(
            f"/v1/subjects/probe-{tag}/enrollments",
            files=[("frames", ("capture.jpg", jpeg, "image/jpeg"))],
        )
        if response.status_code != 201:
            raise SystemExit(f"enrolling the verify subject failed: {response.text[:300]}")

    def enroll(c: httpx.Client) -> httpx.Response:
        return c.post(
            f"/v1/subjects/load-{tag}-{next(fresh):06d}/enrollments",
            files=[("frames", ("capture.jpg", jpeg, "image/jpeg"))],
        )

    calls: dict[str, tuple[Callable[[httpx.Client], httpx.Response], int]] = {
        "enroll": (enroll, 201),
        "verify": (
            lambda c: c.post(
                "/v1/verify", json={"subject_id": f"probe-{tag}", "probe": {"image": image}}
            ),
            200,
        ),
        "search": (
            lambda c: c.post("/v1/search", json={"probe": {"image": image}, "top_k": 5}),
            200,
        ),
        "screen": (
            lambda c: c.post(
                f"/v1/watchlists/{watchlist}/screen", json={"probe": {"image": image}, "top_k": 10}
            ),
            200,
        ),
    }
    vector_probe = {"vector": probe_vector, "model_id": model_id}
    reference_calls: dict[str, tuple[Callable[[httpx.Client], httpx.Response], int]] = {
        "framework (GET /v1/org/settings)": (lambda c: c.get("/v1/org/settings"), 200),
        "search (vector probe)": (
            lambda c: c.post("/v1/search", json={"probe": vector_probe, "top_k": 5}),
            200,
        ),
        "screen (vector probe)": (
            lambda c: c.post(
                f"/v1/watchlists/{watchlist}/screen", json={"probe": vector_probe, "top_k": 10}
            ),
            200,
        ),
    }
    process = psutil.Process(server.process.pid)

    def capture() -> None:
        pipeline.capture(jpeg)

    cells: dict[str, dict[str, Any]] = {}
    for name, (call, expected) in calls.items():
        # Warm-up: a few untimed requests per operation (the first search builds caches).
        run_cell(server.base_url, headers, call, expected, 1, 3, process)
        cells[name] = {}
        for clients in concurrency:
            total = requests_per_cell(clients, quick)
            paired = capture if clients == 1 else None
            cells[name][str(clients)] = run_cell(
                server.base_url, headers, call, expected, clients, total, process, paired
            )
            print(
                f"    {name:7s} c={clients:<3d} {cells[name][str(clients)]['p50_ms']:8.1f} ms p50"
                f" {cells[name][str(clients)]['per_s']:7.1f}/s"
                f" errors {cells[name][str(clients)]['errors']}",
                flush=True,
            )
    references = {
        name: run_cell(
            server.base_url, headers, call, expected, 1, requests_per_cell(1, quick), process
        )
        for name, (call, expected) in reference_calls.items()
    }
    framework = float(references["framework (GET /v1/org/settings)"]["p50_ms"])
    shares: dict[str, dict[str, float]] = {}
    for name in OPERATIONS:
        cell = cells[name]["1"]
        total = float(cell["p50_ms"])
        pipe = float(cell["pipeline_paired_p50_ms"])
        search = 0.0
        if name in ("search", "screen"):
            search = max(0.0, float(references[f"{name} (vector probe)"]["p50_ms"]) - framework)
        other = max(0.0, total - pipe - search - framework)
        shares[name] = {
            "pipeline": round(pipe / total, 3),
            "search": round(search / total, 3),
            "framework": round(framework / total, 3),
            "other": round(other / total, 3),
        }
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=120.0) as client:
        found = client.post("/v1/search", json={"probe": {"image": image}, "top_k": 5}).json()
    return {
        "gallery_at_end": int(found["gallery_size"]),
        "cells": cells,
        "references": references,
        "cpu_share_at_concurrency_1": shares,
        "server_rss_mb": round(process.memory_info().rss / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small galleries, few requests")
    parser.add_argument("--galleries", help="comma-separated gallery sizes, increasing")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--watchlist", type=int, help="watchlist entries (default 100000)")
    parser.add_argument("--workers", type=int, default=2, help="WAJAH_INFERENCE_WORKERS")
    parser.add_argument("--threads", type=int, default=1, help="WAJAH_INFERENCE_THREADS")
    args = parser.parse_args()
    galleries = (
        [int(s) for s in args.galleries.split(",")]
        if args.galleries
        else ([1_000, 3_000] if args.quick else [10_000, 100_000, 1_000_000])
    )
    if galleries != sorted(galleries):
        raise SystemExit("--galleries must increase (each run adds to the previous gallery)")
    concurrency = [int(s) for s in args.concurrency.split(",")]
    watchlist_size = args.watchlist or (3_000 if args.quick else 100_000)

    from models.pipeline import FacePipeline
    from models.prepare import prepare_default_pack

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="wajah-bench-load-"))
    models_dir = work / "models"
    pack = prepare_default_pack(models_dir)
    root_key = base64.b64encode(os.urandom(32)).decode()
    settings = settings_for(work, models_dir, root_key, args.workers, args.threads)
    env = server_env(work / "home", root_key, models_dir, args.workers, args.threads)
    print(f"setting up an org and a watchlist of {watchlist_size} entries ...", flush=True)
    setup = setup_org(settings, WATCHLIST_SEED, watchlist_size)
    params: SynthesisParams = setup["params"]
    measured = setup["scores"].summary()
    synthetic = check(params)
    print(f"  real model on augmented t1.jpg captures: {measured}")
    print(f"  synthesis {params.describe()} gives {synthetic}")
    # The paired capture runs like the server's at concurrency 1: on the solo pipeline.
    pipeline = FacePipeline.load(pack, threads=solo_capture_threads(args.threads))

    runs: dict[str, Any] = {}
    inserted = 0
    for gallery in galleries:
        print(f"gallery {gallery}: inserting {gallery - inserted} enrollments ...", flush=True)
        insert_s = grow_gallery(settings, setup["org_id"], params, gallery, inserted)
        inserted = gallery
        started = time.perf_counter()
        server = Server(env, free_port(), work / f"server-{gallery}.log")
        try:
            ready = server.wait_ready(timeout_s=1800)
            start_s = time.perf_counter() - started
            print(
                f"  {insert_s:.1f} s insert, server ready in {start_s:.1f} s "
                f"({ready['index']['vectors']} vectors)",
                flush=True,
            )
            run = bench_gallery(server, setup, concurrency, args.quick, gallery, pipeline)
        finally:
            server.stop()
        run["insert_s"] = round(insert_s, 2)
        run["server_start_s"] = round(start_s, 2)
        run["index_vectors_at_start"] = ready["index"]["vectors"]
        runs[str(gallery)] = run

    rows = []
    for gallery, run in runs.items():
        for name in OPERATIONS:
            for clients, cell in run["cells"][name].items():
                rows.append(
                    [
                        f"{int(gallery):,}",
                        name,
                        clients,
                        cell["requests"],
                        cell["per_s"],
                        cell["p50_ms"],
                        cell["p95_ms"],
                        cell["p99_ms"],
                        cell["errors"],
                        cell["server_cpu_ms_per_request"],
                    ]
                )
    print_table(
        f"load on loopback ({args.workers} inference worker(s) × {args.threads} thread(s); "
        f"watchlist {watchlist_size:,} entries)",
        ["gallery", "op", "clients", "n", "req/s", "p50", "p95", "p99", "errors", "srv CPU ms/req"],
        rows,
    )
    share_rows = []
    for gallery, run in runs.items():
        for name, share in run["cpu_share_at_concurrency_1"].items():
            share_rows.append(
                [f"{int(gallery):,}", name]
                + [f"{100 * share[k]:.0f}%" for k in ("pipeline", "search", "framework", "other")]
            )
    print_table(
        "share of p50 at concurrency 1",
        ["gallery", "op", "pipeline", "search", "framework", "other"],
        share_rows,
    )
    print_table(
        "setup",
        ["gallery", "insert s (bulk)", "server start s (snapshot + replay)", "server RSS MB"],
        [
            [f"{int(g):,}", r["insert_s"], r["server_start_s"], r["server_rss_mb"]]
            for g, r in runs.items()
        ],
    )
    load = {"before": load_before[0], "after": os.getloadavg()[0], "cores": os.cpu_count()}
    print(f"\n1-min load average {load['before']:.2f} before, {load['after']:.2f} after")

    met: dict[str, bool | None] = {}
    headline = runs.get("100000")
    if headline is not None:
        cells = headline["cells"]
        met = {
            "enroll_p50_ms": cells["enroll"]["1"]["p50_ms"] <= TARGETS["enroll_p50_ms"],
            "verify_p50_ms": cells["verify"]["1"]["p50_ms"] <= TARGETS["verify_p50_ms"],
            "search_p50_ms_at_100k": cells["search"]["1"]["p50_ms"]
            <= TARGETS["search_p50_ms_at_100k"],
            "screen_p50_ms_at_100k_watchlist": cells["screen"]["1"]["p50_ms"]
            <= TARGETS["screen_p50_ms_at_100k_watchlist"]
            if watchlist_size == 100_000
            else None,
            "verify_per_s_at_8": cells["verify"].get("8", {}).get("per_s", 0)
            >= TARGETS["verify_per_s_at_8"],
            "verify_p99_ms_at_8": cells["verify"].get("8", {}).get("p99_ms", 1e9)
            <= TARGETS["verify_p99_ms_at_8"],
        }
    errors = sum(
        cell["errors"]
        for run in runs.values()
        for op in run["cells"].values()
        for cell in op.values()
    )
    write_results(
        "load" + ("-quick" if args.quick else ""),
        {
            "quick": args.quick,
            "model_id": pack.model_id,
            "baseline": "pipeline.capture in-process (paired) and GET /v1/org/settings",
            "inference_workers": args.workers,
            "inference_threads": args.threads,
            "watchlist_entries": watchlist_size,
            "watchlist_insert_s": setup["watchlist_insert_s"],
            "measured_scores": measured,
            "synthesis": params.describe(),
            "synthetic_scores": synthetic,
            "galleries": runs,
            "errors_total": errors,
            "load_average_1min": load,
            "targets": TARGETS,
            "targets_met": met,
        },
    )


if __name__ == "__main__":
    main()
