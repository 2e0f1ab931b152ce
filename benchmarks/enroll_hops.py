"""The walk of one enroll request through wajah's own modules, traced, not counted by hand.

    python -m benchmarks.enroll_hops [--json out.json]
    PYTHONPATH=/path/to/other/checkout python benchmarks/enroll_hops.py   # another revision

Runs the application in-process (FastAPI's TestClient) with a profiler on every thread,
enrolls one 640×480 capture with an `Idempotency-Key` (after a warm-up enrollment), and
records each call from a function of one wajah module into a function of another
(`app.*`, `models.*`, `index.*`, `crashsafe`). It prints:

* **hops**: the request's path through the service, in order of first entry. A hop enters
  a module of the layers that compose a request (`app.api`, `app.services`, `app.runtime`,
  `app.inference`) or one of the components they drive through a narrow surface, each
  counted as one: the libraries `models`, `index` and `crashsafe`, and the packages
  `app.crypto` (seal/open, hash/verify, API keys) and `app.storage` (one function per
  query; its engine, schema and ids are its own business). A unit entered again later is
  not a new hop;
* **calls**: the distinct call sites (caller function → callee function) that cross from one
  hop's unit into another's, each counted once however often it runs;
* **modules** and **edges**: every module touched (libraries split into their modules) and
  every distinct caller → callee module pair, the finer view.

A hop list, not a timing: it runs anywhere and always gives the same walk for one revision.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

OURS = ("app", "models", "index", "crashsafe")
# Entered through a narrow surface: what happens inside is the component's own business.
COMPONENTS = ("models", "index", "crashsafe", "app.crypto", "app.storage")


def _module(frame: Any) -> str | None:
    name = frame.f_globals.get("__name__", "") if frame is not None else ""
    return name if name.split(".")[0] in OURS else None


def _hop_unit(module: str) -> str:
    for component in COMPONENTS:
        if module == component or module.startswith(component + "."):
            return component
    return module


class CallTracer:
    """Records cross-module calls between wajah modules while `recording` is set."""

    def __init__(self) -> None:
        self.recording = False
        self.edges: list[tuple[str, str]] = []
        self.crossings: list[tuple[str, str]] = []  # (caller function, callee function)
        self._lock = threading.Lock()

    def __call__(self, frame: Any, event: str, _arg: Any) -> None:
        if not self.recording or event != "call":
            return
        callee = _module(frame)
        if callee is None:
            return
        caller = _module(frame.f_back)
        if caller is None or caller == callee:
            return
        with self._lock:
            self.edges.append((caller, callee))
            if _hop_unit(caller) != _hop_unit(callee):
                site = (
                    f"{caller}.{frame.f_back.f_code.co_name}",
                    f"{callee}.{frame.f_code.co_name}",
                )
                self.crossings.append(site)

    def walk(self) -> dict[str, Any]:
        edges = list(dict.fromkeys(self.edges))
        modules = list(dict.fromkeys(m for edge in edges for m in edge))
        hops = list(dict.fromkeys(_hop_unit(m) for m in modules))
        calls = list(dict.fromkeys(self.crossings))
        return {
            "hops": hops,
            "calls": [f"{a} -> {b}" for a, b in calls],
            "modules": modules,
            "edges": [f"{a} -> {b}" for a, b in edges],
        }


def trace_enroll(work: Path) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings
    from benchmarks.api import home_with_org
    from benchmarks.pipeline import single_face_jpeg

    models = Path(os.environ.get("WAJAH_MODEL_CACHE_DIR", work / "models"))
    root_key, key = home_with_org(work / "home", models, "Hop Bank")
    settings = Settings(home=work / "home", root_key=root_key, model_cache_dir=models)  # type: ignore[arg-type]
    jpeg = base64.b64encode(single_face_jpeg()).decode()
    tracer = CallTracer()
    threading.setprofile(tracer)
    sys.setprofile(tracer)
    try:
        with TestClient(create_app(settings)) as client:
            headers = {"Authorization": f"Bearer {key}"}
            for n, subject in enumerate(("warm-up", "traced")):
                tracer.recording = n == 1
                response = client.post(
                    f"/v1/subjects/{subject}/enrollments",
                    json={"frames": [jpeg]},
                    headers={**headers, "Idempotency-Key": f"hop-{subject}"},
                )
                tracer.recording = False
                if response.status_code != 201:
                    raise SystemExit(f"enroll answered {response.status_code}: {response.text}")
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    return tracer.walk()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the walk here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wajah-hops-") as tmp:
        walk = trace_enroll(Path(tmp))
    print(
        f"enroll: {len(walk['hops'])} hops, {len(walk['calls'])} calls between them, "
        f"{len(walk['modules'])} modules, {len(walk['edges'])} module-to-module call edges"
    )
    for n, hop in enumerate(walk["hops"], 1):
        print(f"  {n:2d}. {hop}")
    if args.json:
        args.json.write_text(json.dumps(walk, indent=2))


if __name__ == "__main__":
    main()
