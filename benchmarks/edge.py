"""The production edge (issue 18): TLS cost, metrics + logging cost, memory under large images.

    python -m benchmarks.edge [--quick] [--against REV] [--rounds N]

Three figures, each against its baseline in the same run, sample by sample:

1. HTTPS vs plain HTTP: one image verify per round on each of two `wajah serve` processes of
   this checkout (one with --tls-cert/--tls-key from a `trustme` CA, one plain), each over
   one keep-alive `http.client` connection, so the handshake is paid once and the figure is
   the per-request cost of TLS (record layer, AES-GCM) on a ~10 KB request.
2. Metrics, access log and headers: a vector verify (about a millisecond of work, so the
   edge's share shows) on `wajah serve` of this checkout against `wajah serve` of REV
   (default: the revision before the edge work), alternating. Both log each request at
   INFO to a file (this checkout: one JSON line; REV: uvicorn's access line); this
   checkout's rate limiter is on with a limit it never reaches, so its check is counted.
3. Peak RSS of a server while 16 concurrent searches each send a 40 MP PNG (7000×5700, a
   100 KB file), with the pixel budget effectively off (WAJAH_DECODE_PIXEL_BUDGET = 16 × 40
   MP) and at its default (80 MP), same checkout, one after the other.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks.api import enroll_capture, free_port, home_with_org, server_env
from benchmarks.common import print_table, time_alternating, write_results
from benchmarks.faces import augmented_captures
from benchmarks.pipeline import single_face_jpeg
from models.imaging import decode_image

REPO = Path(__file__).resolve().parent.parent
# The last revision before the edge work (issue 18).
BEFORE_EDGE = "9fe7efc"
SERVE = "from app.cli import main; main()"


class Serve:
    """`wajah serve` of the code in `source` in a subprocess, its log in a file."""

    def __init__(self, source: Path, env: dict[str, str], log: Path, *args: str) -> None:
        self.port = free_port()
        self.tls = "--tls-cert" in args
        scheme = "https" if self.tls else "http"
        self.base_url = f"{scheme}://127.0.0.1:{self.port}"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", SERVE, "serve", "--port", str(self.port), *args],
                env={**env, "PYTHONPATH": str(source)},
                cwd=log.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.log = log

    def wait_ready(self, context: ssl.SSLContext | None, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base_url}/readyz", verify=context or True).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise SystemExit("server not ready")

    def connection(self, context: ssl.SSLContext | None) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection("127.0.0.1", self.port, context=context)
        return http.client.HTTPConnection("127.0.0.1", self.port)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def side(work: Path, name: str, source: Path, extra: dict[str, str]) -> tuple[dict[str, str], str]:
    """A home with one org made by `source`'s own code: the server env and the admin key."""
    home, models = work / name / "home", work / name / "models"
    code = (
        "import json, sys; from pathlib import Path; from benchmarks.api import home_with_org; "
        "print(json.dumps(home_with_org(Path(sys.argv[1]), Path(sys.argv[2]), 'Edge Bank')))"
    )
    if source == REPO:
        root_key, key = home_with_org(home, models, "Edge Bank")
    else:
        made = subprocess.run(
            [sys.executable, "-c", code, str(home), str(models)],
            env={**os.environ, "PYTHONPATH": str(source)},
            cwd=work,
            capture_output=True,
            text=True,
            check=True,
        )
        root_key, key = json.loads(made.stdout.strip().splitlines()[-1])
    env = {**server_env(home, root_key, models), "WAJAH_LOG_FORMAT": "json", **extra}
    return env, key


def poster(
    connection: http.client.HTTPConnection, key: str, path: str, body: dict[str, Any]
) -> Callable[[], None]:
    payload = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def post() -> None:
        connection.request("POST", path, payload, headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"{path}: {response.status}")

    return post


@contextmanager
def servers(*started: Serve) -> Iterator[None]:
    try:
        yield
    finally:
        for server in started:
            server.stop()


def https_vs_http(work: Path, rounds: int) -> dict[str, Any]:
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key_file = work / "cert.pem", work / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key_file))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    verify_jpeg = single_face_jpeg()
    enroll_jpeg = augmented_captures(decode_image(verify_jpeg))[1]
    body = {"subject_id": "edge", "probe": {"image": base64.b64encode(verify_jpeg).decode()}}
    calls: dict[str, Callable[[], None]] = {}
    started: list[Serve] = []
    for name, args in (
        ("http", ()),
        ("https", ("--tls-cert", str(cert), "--tls-key", str(key_file))),
    ):
        env, key = side(work, f"tls-{name}", REPO, {"WAJAH_RATE_LIMIT_PER_SECOND": "0"})
        server = Serve(REPO, env, work / f"tls-{name}.log", *args)
        started.append(server)
        server.wait_ready(context)
        with httpx.Client(
            base_url=server.base_url,
            verify=context,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ) as client:
            enroll_capture(client, "edge", enroll_jpeg)
        connection = server.connection(context)
        calls[name] = poster(connection, key, "/v1/verify", body)
    with servers(*started):
        timings = time_alternating(calls, rounds, warmup=10)
        version = started[1].connection(context)
        version.request("GET", "/healthz")
        version.getresponse().read()
        negotiated = version.sock.version()  # type: ignore[union-attr]
    p50 = {name: round(statistics.median(t), 3) for name, t in timings.items()}
    return {"p50_ms": p50, "tls_version": negotiated, "rounds": rounds}


def worktree(rev: str, work: Path) -> Path:
    other = work / "other-tree"
    added = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(other), rev],
        capture_output=True,
        text=True,
    )
    if added.returncode != 0:
        raise SystemExit(f"cannot check out {rev!r}: {added.stderr.strip()}")
    return other


def edge_overhead(work: Path, rev: str, rounds: int) -> dict[str, Any]:
    other = worktree(rev, work)
    calls: dict[str, Callable[[], None]] = {}
    started: list[Serve] = []
    try:
        for name, source in (("this checkout", REPO), (rev, other)):
            # A limit no benchmark reaches: the check runs, nothing is refused.
            env, key = side(work, name.replace(" ", "-"), source, {})
            env["WAJAH_RATE_LIMIT_PER_SECOND"] = "1000000"
            env["WAJAH_RATE_LIMIT_BURST"] = "1000000"
            server = Serve(source, env, work / f"ab-{name.replace(' ', '-')}.log")
            started.append(server)
            server.wait_ready(None)
            with httpx.Client(
                base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
            ) as client:
                enroll_capture(
                    client, "edge", augmented_captures(decode_image(single_face_jpeg()))[1]
                )
                model_id = client.get("/readyz").json()["model_id"]
            probe = {"vector": [1.0] + [0.0] * 127, "model_id": model_id}  # the default pack's
            calls[name] = poster(
                server.connection(None), key, "/v1/verify", {"subject_id": "edge", "probe": probe}
            )
        with servers(*started):
            timings = time_alternating(calls, rounds, warmup=50)
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(other)],
            check=False,
            capture_output=True,
        )
    p50 = {name: round(statistics.median(t), 4) for name, t in timings.items()}
    lines = (work / "ab-this-checkout.log").read_text().splitlines()
    access = [line for line in lines if '"logger":"wajah.access"' in line]
    return {
        "p50_ms": p50,
        "overhead_ms": round(p50["this checkout"] - p50[rev], 4),
        "against": rev,
        "rounds": rounds,
        "access_lines_logged": len(access),
    }


def large_png(width: int, height: int) -> bytes:
    """A flat PNG with a little texture: ~100 KB on the wire, `width`×`height` decoded."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (128, 120, 110))
    draw = ImageDraw.Draw(image)
    for x in range(0, width, 500):
        draw.line([(x, 0), (x, height)], fill=(40, 40, 40), width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def peak_rss(work: Path, concurrent: int, budget: int | None, png: bytes) -> dict[str, Any]:
    import psutil

    label = "off" if budget is None else str(budget)
    extra = {"WAJAH_RATE_LIMIT_PER_SECOND": "0"}
    extra["WAJAH_DECODE_PIXEL_BUDGET"] = str(budget or concurrent * 40_000_000)
    env, key = side(work, f"rss-{label}", REPO, extra)
    server = Serve(REPO, env, work / f"rss-{label}.log")
    with servers(server):
        server.wait_ready(None)
        process = psutil.Process(server.process.pid)
        # A search decodes the probe whatever the gallery holds (a verify of an unknown
        # subject stops before); the flat image then has no face: 422 after the decode.
        body = {"probe": {"image": base64.b64encode(png).decode()}}
        baseline = process.memory_info().rss
        peak, done = baseline, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        statuses: list[int] = []
        started = time.perf_counter()

        def one() -> None:
            with httpx.Client(timeout=600, headers={"Authorization": f"Bearer {key}"}) as c:
                statuses.append(c.post(f"{server.base_url}/v1/search", json=body).status_code)

        threads = [threading.Thread(target=one) for _ in range(concurrent)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        done.set()
        sampler.join()
    return {
        "budget_pixels": budget,
        "baseline_mb": round(baseline / 2**20, 1),
        "peak_mb": round(peak / 2**20, 1),
        "added_mb": round((peak - baseline) / 2**20, 1),
        "wall_s": round(elapsed, 2),
        "statuses": sorted(set(statuses)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--against", default=None, help="revision for the A/B (default: before the edge)"
    )
    parser.add_argument("--only", default="tls,overhead,rss", help="parts to run")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    rounds = args.rounds or (20 if args.quick else 300)
    against = args.against or BEFORE_EDGE
    work = Path(tempfile.mkdtemp(prefix="wajah-bench-edge-"))
    results: dict[str, Any] = {"quick": args.quick}

    if "tls" in parts:
        tls(work, rounds, results)
    if "overhead" in parts:
        overhead(work, against, rounds, results)
    if "rss" in parts:
        rss(work, 4 if args.quick else 16, results)
    write_results("edge", results)


def tls(work: Path, rounds: int, results: dict[str, Any]) -> None:
    results["tls"] = https_vs_http(work, rounds)
    p50 = results["tls"]["p50_ms"]
    print_table(
        f"verify over one keep-alive connection, {rounds} alternating rounds",
        ["side", "p50 ms", "/ http"],
        [[name, v, round(v / p50["http"], 3)] for name, v in p50.items()],
    )


def overhead(work: Path, against: str, rounds: int, results: dict[str, Any]) -> None:
    results["edge_overhead"] = edge_overhead(work, against, rounds * 3)
    ab = results["edge_overhead"]
    print_table(
        f"vector verify, this checkout against {against} (metrics, JSON log, headers, limiter)",
        ["side", "p50 ms"],
        [[name, v] for name, v in ab["p50_ms"].items()],
    )
    print(f"overhead per request: {ab['overhead_ms']} ms p50 (goal <= 0.2 ms)")


def rss(work: Path, concurrent: int, results: dict[str, Any]) -> None:
    width, height = (7000, 5700)
    png = large_png(width, height)
    results["rss"] = {
        "image": {"width": width, "height": height, "bytes": len(png)},
        "concurrent": concurrent,
        "before": peak_rss(work, concurrent, None, png),
        "after": peak_rss(work, concurrent, 80_000_000, png),
    }
    rss = results["rss"]
    print_table(
        f"{concurrent} concurrent searches of a {width}x{height} PNG ({len(png) // 1024} KB)",
        ["pixel budget", "baseline MB", "peak MB", "added MB", "wall s", "statuses"],
        [
            [
                name,
                r["baseline_mb"],
                r["peak_mb"],
                r["added_mb"],
                r["wall_s"],
                ",".join(map(str, r["statuses"])),
            ]
            for name, r in (("off", rss["before"]), ("80 MP", rss["after"]))
        ],
    )


if __name__ == "__main__":
    main()
