"""The inference pool's solo pipeline, on and off, against a live server.

    python -m benchmarks.pool [--quick]

A capture whose request is the only one in flight, with no other capture running or
waiting, runs on every core (the solo pipeline, `WAJAH_SOLO_INFERENCE_THREADS`, default 0 =
all usable cores); the others on one core each. This runs the same verify load twice
against uvicorn on loopback, once with the solo pipeline off (`WAJAH_SOLO_INFERENCE_THREADS=1`:
the baseline, every capture on one core) and once with the default, at 1, 2, 4 and 8
clients, and prints throughput, latency percentiles, errors and the server's CPU per request
for both, with the ratio on / off.
The claim it checks: lower latency when quiet, no loss under load.

Before that, the capture in-process on one thread and on the solo pipeline's threads, each
stage alone and summed, so the HTTP figures can be read against both.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.api import Server, enroll_capture, free_port, home_with_org, server_env
from benchmarks.common import print_table, summarise, time_calls, warm_for, write_results
from benchmarks.faces import augmented_captures
from benchmarks.load import run_cell
from benchmarks.pipeline import single_face_jpeg, stage_calls
from models.imaging import decode_image
from models.pipeline import FacePipeline
from models.prepare import prepare_default_pack

CLIENTS = (1, 2, 4, 8)


def in_process(pack: Any, data: bytes, threads: int, samples: int, warmup: int) -> dict[str, Any]:
    pipeline = FacePipeline.load(pack, threads=threads)
    warm_for(lambda: pipeline.capture(data), 3.0)
    stages = {
        name: summarise(time_calls(call, samples, warmup), warmup)
        for name, call in stage_calls(pipeline, data).items()
    }
    return {
        "threads": threads,
        "stages": stages,
        "stage_sum_p50_ms": round(sum(float(s["p50_ms"]) for s in stages.values()), 3),
        "capture": summarise(time_calls(lambda: pipeline.capture(data), samples, warmup), warmup),
    }


def verify_load(
    work: Path,
    models_dir: Path,
    solo_threads: int,
    enroll_jpeg: bytes,
    verify_jpeg: bytes,
    per: int,
) -> list[dict[str, Any]]:
    home = work / f"home-solo-{solo_threads}"
    root_key, key = home_with_org(home, models_dir, "Pool Benchmark Bank")
    env = {
        **server_env(home, root_key, models_dir),
        "WAJAH_SOLO_INFERENCE_THREADS": str(solo_threads),
    }
    server = Server(env, free_port(), work / f"server-solo-{solo_threads}.log")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"subject_id": "pool", "probe": {"image": base64.b64encode(verify_jpeg).decode()}}
    cells = []
    try:
        server.wait_ready(timeout_s=600)
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=60.0) as client:
            enroll_capture(client, "pool", enroll_jpeg)
            for _ in range(10):  # warm-up
                client.post("/v1/verify", json=body)
        process = psutil.Process(server.process.pid)
        for clients in CLIENTS:
            cells.append(
                run_cell(
                    server.base_url,
                    headers,
                    lambda c: c.post("/v1/verify", json=body),
                    200,
                    clients,
                    per * clients if clients > 1 else per * 2,
                    process,
                )
            )
    finally:
        server.stop()
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few requests (CI smoke)")
    args = parser.parse_args()
    samples, warmup, per = (20, 3, 8) if args.quick else (100, 10, 40)

    work = Path(tempfile.mkdtemp(prefix="wajah-bench-pool-"))
    pack = prepare_default_pack(work / "models")
    verify_jpeg = single_face_jpeg()
    enroll_jpeg = augmented_captures(decode_image(verify_jpeg))[1]
    from app.inference import usable_cores

    cores = usable_cores()
    alone = [in_process(pack, verify_jpeg, t, samples, warmup) for t in sorted({1, cores})]
    print_table(
        f"capture in-process ({samples} samples, {warmup} warm-up)",
        ["threads", "stage sum p50 ms", "capture p50 ms", "capture p99 ms"],
        [
            [a["threads"], a["stage_sum_p50_ms"], a["capture"]["p50_ms"], a["capture"]["p99_ms"]]
            for a in alone
        ],
    )
    off = verify_load(work, pack.directory.parent, 1, enroll_jpeg, verify_jpeg, per)
    on = verify_load(work, pack.directory.parent, 0, enroll_jpeg, verify_jpeg, per)
    rows = []
    ratios: dict[str, float] = {}
    for a, b in zip(off, on, strict=True):
        n = a["clients"]
        ratios[f"clients_{n}_p50_on_over_off"] = round(b["p50_ms"] / a["p50_ms"], 3)
        ratios[f"clients_{n}_per_s_on_over_off"] = round(b["per_s"] / a["per_s"], 3)
        for label, cell in (("off (baseline)", a), ("on", b)):
            rows.append(
                [
                    n,
                    label,
                    cell["requests"],
                    cell["errors"],
                    cell["per_s"],
                    cell["p50_ms"],
                    cell["p95_ms"],
                    cell["p99_ms"],
                    cell["server_cpu_ms_per_request"],
                ]
            )
    print_table(
        f"POST /v1/verify, solo pipeline off / on ({cores} cores)",
        ["clients", "solo", "n", "errors", "per s", "p50 ms", "p95 ms", "p99 ms", "CPU ms/req"],
        rows,
    )
    print(f"ratios on / off: {ratios}")
    write_results(
        "pool" + ("-quick" if args.quick else ""),
        {
            "quick": args.quick,
            "model_id": pack.model_id,
            "baseline": "the same server with WAJAH_SOLO_INFERENCE_THREADS=1 (no solo pipeline)",
            "cores": cores,
            "in_process": alone,
            "solo_off": off,
            "solo_on": on,
            "ratios": ratios,
            "errors": sum(c["errors"] for c in off + on),
        },
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
