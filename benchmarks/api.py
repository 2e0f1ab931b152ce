"""HTTP latency and throughput of the service against a live uvicorn on loopback.

    python -m benchmarks.api [--quick] [--gallery N] [--workers N] [--threads N]

With the default pack and one 640×480 single-face JPEG per request (`benchmarks.pipeline`'s
`single_face_jpeg`): enroll, verify and search p50 at concurrency 1, search against a
gallery of `--gallery` enrolled vectors (default 100,000), and verify throughput with p99 at
concurrency 8. The gallery is synthetic (seeded random unit vectors, one subject each),
inserted through the storage layer with valid hashed references before the server starts,
so the server's start-up replay keeps every row (bulk path:
`subject_store.insert_enrollments_bulk`); how long the insert and the replay took is
reported. Each figure is shown beside `FacePipeline.capture` on the same JPEG, timed
in-process in alternation with the requests (so both see the same machine load) on the
threads the server gives a lone request's capture (`solo_capture_threads`), and beside
a trivial authenticated request (`GET /v1/org/settings`): the framework's own overhead.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.inference import usable_cores
from benchmarks.common import percentile, print_table, summarise, write_results
from benchmarks.pipeline import single_face_jpeg

SEED = 20261127
TARGETS = {
    "enroll_p50_ms": 70.0,
    "verify_p50_ms": 60.0,
    "search_p50_ms": 65.0,
    "concurrent_verify_per_s": 25.0,
    "concurrent_verify_p99_ms": 400.0,
}
GALLERY_BATCH = 10_000  # rows per committed transaction


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fill_gallery(settings: Any, size: int) -> tuple[str, str, dict[str, float]]:
    """Create an org and `size` enrolled subjects; returns (org id, admin key, timings).

    Seeded random unit vectors, one subject each, through the storage layer's bulk path
    (`subject_store.insert_subjects_bulk` + `insert_enrollments_bulk`) with valid hashed references.
    """
    from app.services.lifecycle import start_runtime, stop_runtime
    from app.services.orgs import create_org
    from app.storage import subjects as subject_store

    started = time.perf_counter()
    runtime = start_runtime(settings, serving=False)
    try:
        org_id, key = create_org(runtime, "Benchmark Bank")
        dimension, model_id = runtime.pipeline.dimension, runtime.model_id
        rng = np.random.default_rng(SEED)
        insert_started = time.perf_counter()
        for first in range(0, size, GALLERY_BATCH):
            count = min(GALLERY_BATCH, size - first)
            vectors = rng.standard_normal((count, dimension)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            ids = [f"emb_gallery{first + n:07d}" for n in range(count)]
            refs = [
                runtime.hasher.reference(
                    org_id=org_id, model_id=model_id, enrollment_id=row_id, vector=vector
                )
                for row_id, vector in zip(ids, vectors, strict=True)
            ]
            with runtime.engine.begin() as conn:
                pks = subject_store.insert_subjects_bulk(
                    conn,
                    org_id=org_id,
                    subject_ids=[f"gallery-{first + n:07d}" for n in range(count)],
                )
                subject_store.insert_enrollments_bulk(
                    conn,
                    org_id=org_id,
                    subject_pks=pks,
                    vectors=[vector.astype("<f4").tobytes() for vector in vectors],
                    dimension=dimension,
                    model_id=model_id,
                    hashed_refs=refs,
                    enrollment_ids=ids,
                )
        inserted = time.perf_counter()
    finally:
        stop_runtime(runtime)
    return (
        org_id,
        key.plaintext,
        {
            "gallery_insert_s": round(inserted - insert_started, 2),
            "gallery_setup_s": round(time.perf_counter() - started, 2),
        },
    )


def solo_capture_threads(inference_threads: int) -> int:
    """The threads a server on its defaults gives a lone request's capture (`app.inference`):
    what an in-process reference for concurrency 1 should run with."""
    return max(inference_threads, usable_cores())


def server_env(
    home: Path, root_key: str, models_dir: Path, workers: int = 2, threads: int = 1
) -> dict[str, str]:
    """This process's environment plus the `WAJAH_*` settings a benchmark server runs with."""
    return {
        **os.environ,
        "WAJAH_HOME": str(home),
        "WAJAH_ROOT_KEY": root_key,
        "WAJAH_MODEL_CACHE_DIR": str(models_dir),
        "WAJAH_INFERENCE_WORKERS": str(workers),
        "WAJAH_INFERENCE_THREADS": str(threads),
        # Benchmarks measure the service flat out, not admission (older revisions ignore it).
        "WAJAH_RATE_LIMIT_PER_SECOND": "0",
    }


class Server:
    """uvicorn with `create_app` as factory; settings come from the `WAJAH_*` environment."""

    def __init__(
        self,
        env: dict[str, str],
        port: int,
        log_path: Path,
        app: str = "app.main:create_app",
        cwd: Path | None = None,
    ) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    app,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise SystemExit(f"server exited:\n{self.log_path.read_text()[-4000:]}")
                try:
                    response = client.get("/readyz")
                    if response.status_code == 200:
                        return dict(response.json())
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise SystemExit(f"server not ready after {timeout_s}s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def home_with_org(home: Path, models_dir: Path, name: str) -> tuple[str, str]:
    """A new service home holding one org: its root key and the org's admin API key."""
    from app.services.lifecycle import start_runtime, stop_runtime
    from app.services.orgs import create_org
    from app.settings import Settings

    root_key = base64.b64encode(os.urandom(32)).decode()
    settings = Settings(home=home, root_key=root_key, model_cache_dir=models_dir)  # type: ignore[arg-type]
    runtime = start_runtime(settings, serving=False)
    try:
        _, key = create_org(runtime, name)
    finally:
        stop_runtime(runtime)
    return root_key, key.plaintext


class LeanClient:
    """POST JSON over one keep-alive `http.client` connection: the least client work the
    standard library allows. The benchmark client shares the server's cores and caches, and
    httpx spent about 1 ms more per request here, so figures about the service itself use
    this one."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self._connection = http.client.HTTPConnection(host, int(port), timeout=60)
        self._headers = {**headers, "Content-Type": "application/json"}

    def post_json(self, path: str, body: Any) -> int:
        self._connection.request("POST", path, json.dumps(body).encode(), self._headers)
        response = self._connection.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self._connection.close()


def enroll_capture(client: httpx.Client, subject_id: str, jpeg: bytes) -> None:
    """Enroll one frame for `subject_id` over HTTP; anything but 201 ends the benchmark."""
    expect(
        client.post(
            f"/v1/subjects/{subject_id}/enrollments",
            files=[("frames", ("capture.jpg", jpeg, "image/jpeg"))],
        ),
        201,
    )


def expect(response: httpx.Response, status: int) -> httpx.Response:
    if response.status_code != status:
        raise SystemExit(f"{response.request.url}: {response.status_code} {response.text[:300]}")
    return response


def paired(
    request: Callable[[], object], capture: Callable[[], object], samples: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Alternate one request and one in-process pipeline run; milliseconds of each.

    Alternating keeps both series under the same machine load, so the pipeline's share of a
    figure is not skewed by whatever else the machine did while one series ran.
    """
    for _ in range(warmup):
        request()
        capture()
    request_ms, capture_ms = [], []
    for _ in range(samples):
        started = time.perf_counter()
        request()
        request_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        capture()
        capture_ms.append((time.perf_counter() - started) * 1000)
    return request_ms, capture_ms


def concurrent_verify(
    base_url: str, headers: dict[str, str], body: dict[str, Any], clients: int, per_client: int
) -> tuple[float, list[float]]:
    """`clients` threads, each with its own connection, `per_client` verifies each."""
    timings: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def work(slot: int) -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=60.0) as client:
            expect(client.post("/v1/verify", json=body), 200)  # open the connection, warm up
            barrier.wait()
            for _ in range(per_client):
                started = time.perf_counter()
                expect(client.post("/v1/verify", json=body), 200)
                timings[slot].append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    flat = [t for slot in timings for t in slot]
    return len(flat) / wall, flat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small gallery, few samples")
    parser.add_argument("--gallery", type=int, help="enrolled vectors (default 100000)")
    parser.add_argument("--workers", type=int, default=2, help="WAJAH_INFERENCE_WORKERS")
    parser.add_argument("--threads", type=int, default=1, help="WAJAH_INFERENCE_THREADS")
    args = parser.parse_args()
    gallery = args.gallery if args.gallery is not None else (2_000 if args.quick else 100_000)
    samples, warmup = (20, 3) if args.quick else (200, 20)
    clients, per_client = (8, 5) if args.quick else (8, 60)

    from app.settings import Settings
    from models.pipeline import FacePipeline
    from models.prepare import prepare_default_pack

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="wajah-bench-api-"))
    models_dir = work / "models"
    pack = prepare_default_pack(models_dir)
    root_key = base64.b64encode(os.urandom(32)).decode()
    env = server_env(work / "home", root_key, models_dir, args.workers, args.threads)
    settings = Settings(
        home=work / "home",
        root_key=root_key,  # type: ignore[arg-type]
        model_cache_dir=models_dir,
        inference_workers=args.workers,
        inference_threads=args.threads,
    )
    print(f"filling a gallery of {gallery} enrolled vectors ...", flush=True)
    org_id, api_key, setup = fill_gallery(settings, gallery)
    print(f"  {setup['gallery_insert_s']} s to insert ({setup['gallery_setup_s']} s in all)")

    jpeg = single_face_jpeg()
    # The reference capture runs like the server's at concurrency 1: on the solo pipeline.
    pipeline = FacePipeline.load(pack, threads=solo_capture_threads(args.threads))
    probe_vector = [float(x) for x in pipeline.capture(jpeg).embedding]

    started = time.perf_counter()
    server = Server(env, free_port(), work / "server.log")
    try:
        ready = server.wait_ready(timeout_s=600)
        setup["server_start_s"] = round(time.perf_counter() - started, 2)
        print(f"  server ready in {setup['server_start_s']} s, index {ready['index']}")
        if ready["index"]["vectors"] != gallery:
            raise SystemExit(f"replay kept {ready['index']['vectors']} of {gallery} vectors")

        def capture() -> None:
            pipeline.capture(jpeg)

        pipeline_ms: list[float] = []
        headers = {"Authorization": f"Bearer {api_key}"}
        image = base64.b64encode(jpeg).decode()
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=60.0) as client:
            enrolled = iter(range(samples + warmup + 1))

            def enroll() -> None:
                expect(
                    client.post(
                        f"/v1/subjects/bench-{next(enrolled):05d}/enrollments",
                        files=[("frames", ("capture.jpg", jpeg, "image/jpeg"))],
                    ),
                    201,
                )

            verify_body = {"subject_id": "bench-00000", "probe": {"image": image}}
            calls: dict[str, Callable[[], object]] = {
                "enroll": enroll,
                "verify": lambda: expect(client.post("/v1/verify", json=verify_body), 200),
                "search": lambda: expect(
                    client.post("/v1/search", json={"probe": {"image": image}, "top_k": 5}), 200
                ),
                "search (vector probe)": lambda: expect(
                    client.post(
                        "/v1/search",
                        json={"probe": {"vector": probe_vector, "model_id": pack.model_id}},
                    ),
                    200,
                ),
                "GET /v1/org/settings": lambda: expect(client.get("/v1/org/settings"), 200),
            }
            figures: dict[str, dict[str, float | int]] = {}
            shares: dict[str, float] = {}
            for name, fn in calls.items():
                request_ms, capture_ms = paired(fn, capture, samples, warmup)
                figures[name] = summarise(request_ms, warmup)
                shares[name] = round(percentile(capture_ms, 50) / percentile(request_ms, 50), 3)
                pipeline_ms.extend(capture_ms)
            searched = client.post("/v1/search", json={"probe": {"image": image}}).json()
            gallery_size = int(searched["gallery_size"])
        throughput, latencies = concurrent_verify(
            server.base_url, headers, verify_body, clients, per_client
        )
    finally:
        server.stop()

    concurrent = {
        "clients": clients,
        "requests": len(latencies),
        "verify_per_s": round(throughput, 2),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
    }
    overhead = float(figures["GET /v1/org/settings"]["p50_ms"])
    capture_stats = summarise(pipeline_ms, warmup)
    targets = {"enroll": "≤ 70", "verify": "≤ 60", "search": "≤ 65"}
    rows: list[list[Any]] = []
    for name, stats in figures.items():
        p50 = float(stats["p50_ms"])
        uses_pipeline = name in ("enroll", "verify", "search")
        rows.append(
            [
                name,
                stats["p50_ms"],
                stats["p95_ms"],
                stats["p99_ms"],
                targets.get(name, "-"),
                f"{100 * shares[name]:.0f}%" if uses_pipeline else "-",
                f"{100 * overhead / p50:.0f}%",
            ]
        )
    rows.append(
        [
            "pipeline.capture (in-process, interleaved)",
            capture_stats["p50_ms"],
            capture_stats["p95_ms"],
            capture_stats["p99_ms"],
            "-",
            "100%",
            "-",
        ]
    )
    print_table(
        f"wajah API on loopback, gallery {gallery_size} enrolled, concurrency 1, "
        f"{samples} samples, {args.workers} inference worker(s) × {args.threads} thread(s)",
        ["request", "p50 ms", "p95 ms", "p99 ms", "target p50", "pipeline share", "overhead"],
        rows,
    )
    print_table(
        f"verify at concurrency {clients} ({len(latencies)} requests)",
        ["measure", "value", "target"],
        [
            ["verify/s", concurrent["verify_per_s"], "≥ 25"],
            ["p50 ms", concurrent["p50_ms"], "-"],
            ["p99 ms", concurrent["p99_ms"], "≤ 400"],
        ],
    )
    print_table(
        "setup",
        ["step", "seconds"],
        [
            [f"insert {gallery} enrollments (storage layer)", setup["gallery_insert_s"]],
            ["server start incl. index replay", setup["server_start_s"]],
        ],
    )
    # Other work on the machine inflates every figure; say how busy it was.
    load = {"before": load_before[0], "after": os.getloadavg()[0], "cores": os.cpu_count()}
    print(
        f"\n1-min load average {load['before']:.2f} before, {load['after']:.2f} after, "
        f"{load['cores']} cores"
    )
    met = {
        "enroll_p50_ms": float(figures["enroll"]["p50_ms"]) <= TARGETS["enroll_p50_ms"],
        "verify_p50_ms": float(figures["verify"]["p50_ms"]) <= TARGETS["verify_p50_ms"],
        "search_p50_ms": float(figures["search"]["p50_ms"]) <= TARGETS["search_p50_ms"],
        "concurrent_verify_per_s": throughput >= TARGETS["concurrent_verify_per_s"],
        "concurrent_verify_p99_ms": concurrent["p99_ms"] <= TARGETS["concurrent_verify_p99_ms"],
    }
    write_results(
        "api" + ("-quick" if args.quick else ""),
        {
            "quick": args.quick,
            "gallery": gallery_size,
            "org_id": org_id,
            "model_id": pack.model_id,
            "inference_workers": args.workers,
            "inference_threads": args.threads,
            "concurrency_1": figures,
            "pipeline_capture": capture_stats,
            "pipeline_share_of_p50": {
                name: shares[name] for name in ("enroll", "verify", "search")
            },
            "framework_overhead_p50_ms": overhead,
            "concurrency_8": concurrent,
            "setup": setup,
            "load_average_1min": load,
            "targets": TARGETS,
            "targets_met": met,
        },
    )


if __name__ == "__main__":
    main()
