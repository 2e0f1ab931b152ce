"""Where one HTTP verify spends its time: a timestamp at each step inside the server.

    python -m benchmarks.verify_trace [--requests 200]

Starts uvicorn with `create_app` wrapped so that the verify route, API-key authentication,
`verify_probe`, the capture, the start of inference and the audit row each record a
timestamp, enrolls the benchmark JPEG's augmented capture, sends `--requests` verifies at
concurrency 1 and prints the p50 time of each step since the request reached the app, next to
the client's p50. Diagnostic only: the wrapping costs a few microseconds per step, and the
figures are not part of `python -m benchmarks`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx

from benchmarks.api import Server, enroll_capture, free_port, home_with_org, server_env
from benchmarks.faces import augmented_captures
from benchmarks.pipeline import single_face_jpeg

Scope = MutableMapping[str, Any]
ASGI = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]

_marks: list[tuple[str, float]] = []
_steps: dict[str, list[float]] = {}
_lock = threading.Lock()


def _mark(name: str) -> None:
    with _lock:
        _marks.append((name, time.perf_counter()))


def _timed(owner: Any, attribute: str, name: str) -> None:
    original = getattr(owner, attribute)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _mark(f"{name} starts")
        try:
            return original(*args, **kwargs)
        finally:
            _mark(f"{name} ends")

    setattr(owner, attribute, wrapper)


def create_app() -> ASGI:
    """The service's app with timestamps at each step of `POST /v1/verify` (server side)."""
    import app.api.deps as deps
    import app.services.matching as matching
    from app.main import create_app as create_service
    from app.runtime import Runtime
    from models.pipeline import FacePipeline

    _timed(deps, "authenticate", "API key lookup")
    _timed(matching, "verify_probe", "verify_probe")
    _timed(matching, "record", "audit row")
    _timed(FacePipeline, "capture", "capture")
    _timed(Runtime, "infer_later", "inference submitted")
    service = create_service()
    out = Path(os.environ["WAJAH_TRACE_OUT"])

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/verify":
            return await service(scope, receive, send)  # type: ignore[no-any-return]
        with _lock:
            _marks.clear()
        _mark("request reaches the app")

        async def traced_receive() -> Any:
            message = await receive()
            if message.get("type") == "http.request" and not message.get("more_body"):
                _mark("body received")
            return message

        async def traced_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                _mark("response starts")
            await send(message)

        await service(scope, traced_receive, traced_send)
        _mark("response sent")
        with _lock:
            start = _marks[0][1]
            for name, moment in _marks:
                _steps.setdefault(name, []).append((moment - start) * 1000)
            out.write_text(json.dumps(_steps))
        return None

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    from models.imaging import decode_image
    from models.prepare import prepare_default_pack

    work = Path(tempfile.mkdtemp(prefix="wajah-verify-trace-"))
    pack = prepare_default_pack(work / "models")
    root_key, key = home_with_org(work / "home", pack.directory.parent, "Trace Bank")
    trace = work / "trace.json"
    env = {
        **server_env(work / "home", root_key, pack.directory.parent),
        "WAJAH_TRACE_OUT": str(trace),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), *sys.path]),
    }
    server = Server(env, free_port(), work / "server.log", app="benchmarks.verify_trace:create_app")
    jpeg = single_face_jpeg()
    enroll = augmented_captures(decode_image(jpeg))[1]
    client_ms: list[float] = []
    try:
        server.wait_ready(timeout_s=600)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=60.0) as client:
            enroll_capture(client, "trace", enroll)
            body = {"subject_id": "trace", "probe": {"image": base64.b64encode(jpeg).decode()}}
            for _ in range(args.requests):
                started = time.perf_counter()
                response = client.post("/v1/verify", json=body)
                client_ms.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise SystemExit(f"verify: {response.status_code} {response.text[:300]}")
    finally:
        server.stop()
    steps = json.loads(trace.read_text())
    warm = args.requests // 10
    print(f"one verify at concurrency 1, p50 of {args.requests - warm} requests (ms)")
    rows = sorted(
        ((name, statistics.median(times[warm:])) for name, times in steps.items()),
        key=lambda row: row[1],
    )
    previous = 0.0
    for name, at in rows:
        print(f"  {at:8.3f}  (+{at - previous:6.3f})  {name}")
        previous = at
    print(f"  client sees {statistics.median(client_ms[warm:]):.3f} ms p50 (httpx, loopback)")


if __name__ == "__main__":
    main()
