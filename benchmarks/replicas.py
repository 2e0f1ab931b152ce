"""Replicas over PostgreSQL: how fast a change reaches another replica, what read-your-writes
costs a search, what a trivial authenticated request costs, and verify with 1 and 2 replicas.

    python -m benchmarks.replicas [--quick] [--against 045d28c] [--changes 300]
                                  [--gallery 10000] [--clients 8]

Everything runs on the local PostgreSQL (``$WAJAH_BENCH_POSTGRES_URL``, default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``), in fresh databases made for the run
and dropped after it. Compared variants take turns sample by sample (`time_alternating`,
or round by round for throughput), so the shared VM's drift reaches them alike.

1. **Change-to-visible lag.** Two serving runtimes in this process (`start_runtime`), A and
   B, on one database, each following the change feed. A commits a vector-only enrollment
   (`subjects.insert_enrollment` with a valid hashed reference, as `benchmarks.gallery`
   does; `allocate_seq_range` sends the NOTIFY); the clock starts when A sends COMMIT
   (SQLAlchemy's `commit` event) and stops at the first look at which B's `positions[org]`
   includes the new seq (B's feed follower thread has applied it: the vector is in B's
   index). This thread looks once A's call has returned, then every 0.1 ms (sleeping, so the
   follower is not kept from the GIL). Where B was already there when A's call returned, the
   stop is that return: an upper bound (the table counts them). The same for a revoked key:
   B authenticates it (now cached), A revokes it (`revoke_api_key`), the clock stops when
   `B.api_keys.get(key_id)` is None. A and B have homes of their own, as replicas do (the
   keyring and sealed frames are in PostgreSQL).
2. **Freshness check.** On A, with a `--gallery`-vector org (seeded unit vectors,
   `benchmarks.api.fill_gallery`): `indexing.current_org_index(...).search` (one
   `current_seq` query, then the search) against `indexing.org_index(...).search` (the search
   alone), the `current_seq` read alone (as the check makes it: a pooled connection with
   pre-ping, BEGIN, SELECT, COMMIT) and as one autocommit statement without pre-ping, and the
   whole `matching.search_probe` with a vector probe (settings, search, subject lookup, audit
   row), all with one probe near a gallery vector.
3. **`GET /v1/org/settings`** over keep-alive `http.client` connections against servers on
   PostgreSQL: this checkout, and `--against`'s code (a temporary git worktree, as
   `benchmarks.ab` does) on PostgreSQL and on SQLite (where the issue's 2.8 ms was measured).
4. **Verify with 1 and 2 replicas.** Two servers of this checkout on one database, each
   with a home of its own;
   ``--clients`` threads each send verifies (the same JPEG, one subject) over keep-alive
   connections, to replica 1 only or round-robin to both, rounds taking turns. CPU per
   request from /proc (psutil): each server process, and the PostgreSQL backends connected
   to the run's database (nothing else uses it). On a 2-core machine two replicas cannot
   serve more than one does, so the scaling is stated from CPU per request.

Servers are uvicorn with `app.main:create_app` on 127.0.0.1 as in every suite (`wajah serve`
runs the same app; it also writes an access-log line per request).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url

from benchmarks.api import (
    LeanClient,
    Server,
    enroll_capture,
    fill_gallery,
    free_port,
    server_env,
)
from benchmarks.common import percentile, print_table, summarise, time_alternating, write_results
from benchmarks.faces import augmented_captures
from benchmarks.pipeline import single_face_jpeg
from models.imaging import decode_image

REPO = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get(
    "WAJAH_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SEED = 20261202
BASELINE = "045d28c"  # main before the replicas work (the review of the house-in-order issue)
POLL_S = 0.0001  # sleep between looks at B's state: lets B's follower thread run
VISIBLE_TIMEOUT_S = 10.0
TARGETS = {
    "enrollment_lag_p99_ms": 50.0,
    "freshness_check_p50_added_ms": 1.0,
    "org_settings_p50_ms": 0.5,
}
OURS = "this checkout, PostgreSQL"
ISSUE_ORG_SETTINGS_P50_MS = 2.8  # issue 17, `python -m benchmarks.api` on 12-02 (SQLite)

# Run by the baseline's own code: a home with an org on the database in $WAJAH_DATABASE_URL.
_MAKE_HOME = (
    "import json, sys; from pathlib import Path; from benchmarks.api import home_with_org; "
    "print(json.dumps(home_with_org(Path(sys.argv[1]), Path(sys.argv[2]), 'Replica Bank')))"
)


class Databases:
    """Fresh databases on the benchmark's PostgreSQL server, dropped at the end."""

    def __init__(self, admin_url: str) -> None:
        self._url = make_url(admin_url)
        self.admin = sa.create_engine(self._url, isolation_level="AUTOCOMMIT")
        self._names: list[str] = []

    def create(self, label: str) -> tuple[str, str]:
        """(name, SQLAlchemy URL) of a new empty database."""
        name = f"wajah_bench_{label}_{secrets.token_hex(4)}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self._names.append(name)
        return name, self._url.set(database=name).render_as_string(hide_password=False)

    def backend_cpu(self, database: str) -> dict[int, float]:
        """CPU seconds so far of every PostgreSQL backend connected to `database`."""
        with self.admin.connect() as conn:
            pids = conn.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :db"), {"db": database}
            ).scalars()
            out: dict[int, float] = {}
            for pid in pids:
                try:
                    out[int(pid)] = cpu_seconds(psutil.Process(int(pid)))
                except psutil.Error:
                    continue
        return out

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self._names:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin.dispose()


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def backend_cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU the backends spent between two `backend_cpu` readings (a backend that started in
    between counts whole; one that ended in between is lost: the pools keep theirs open)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def wait_until(holds: Callable[[], bool], what: str) -> float:
    """perf_counter() at the first look at which `holds()` is true."""
    deadline = time.perf_counter() + VISIBLE_TIMEOUT_S
    while True:
        now = time.perf_counter()
        if holds():
            return now
        if now > deadline:
            raise SystemExit(f"{what}: not visible after {VISIBLE_TIMEOUT_S} s")
        time.sleep(POLL_S)


class CommitClock:
    """When this thread last sent COMMIT through an engine (SQLAlchemy's `commit` event fires
    just before the driver's commit): the moment a change's notification starts on its way."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._local = threading.local()
        event.listen(engine, "commit", self._committing)

    def _committing(self, _conn: Any) -> None:
        self._local.at = time.perf_counter()

    def last(self) -> float:
        return float(self._local.at)

    def close(self) -> None:
        event.remove(self._engine, "commit", self._committing)


def reached(runtime: Any, namespace: str, position: int) -> Callable[[], bool]:
    return lambda: bool(runtime.positions.get(namespace, 0) >= position)


def forgotten(runtime: Any, key_id: str) -> Callable[[], bool]:
    return lambda: runtime.api_keys.get(key_id) is None


def runtime_settings(url: str, home: Path, models: Path, root_key: str) -> Any:
    from app.settings import Settings

    return Settings(
        home=home,
        root_key=root_key,  # type: ignore[arg-type]
        model_cache_dir=models,
        database_url=url,
        # Nothing here runs the face pipeline: one worker, no solo pipeline.
        inference_workers=1,
        solo_inference_threads=1,
    )


def new_org(settings: Any, name: str) -> tuple[str, str]:
    """An org on `settings`' database: (org id, admin API key)."""
    from app.services.lifecycle import start_runtime, stop_runtime
    from app.services.orgs import create_org

    runtime = start_runtime(settings, serving=False)
    try:
        org_id, key = create_org(runtime, name)
    finally:
        stop_runtime(runtime)
    return org_id, key.plaintext


# --- 1. change-to-visible lag -----------------------------------------------------------------


def enrollment_lag(a: Any, b: Any, org_id: str, changes: int, warmup: int) -> dict[str, Any]:
    """Commit vector-only enrollments on A; time until B's position includes each."""
    from app.storage import subjects, write_transaction

    with write_transaction(a.engine) as conn:
        subject_pk = subjects.insert_subject(conn, org_id=org_id, subject_id="lag-subject")
    assert subject_pk is not None
    rng = np.random.default_rng(SEED)
    dimension, model_id = a.pipeline.dimension, a.model_id
    lag_ms: list[float] = []
    commit_ms: list[float] = []
    early = 0
    heard_before = b.feed.notifications
    clock = CommitClock(a.engine)
    for n in range(warmup + changes):
        vector = rng.standard_normal(dimension).astype(np.float32)
        vector /= np.linalg.norm(vector)
        enrollment_id = f"emb_lag{n:06d}"
        reference = a.hasher.reference(
            org_id=org_id, model_id=model_id, enrollment_id=enrollment_id, vector=vector
        )
        started = time.perf_counter()
        with write_transaction(a.engine) as conn:
            seq = subjects.insert_enrollment(
                conn,
                org_id=org_id,
                subject_pk=subject_pk,
                vector=vector.astype("<f4").tobytes(),
                dimension=dimension,
                model_id=model_id,
                hashed_ref=reference,
                enrollment_id=enrollment_id,
            ).seq
        returned = time.perf_counter()
        committed = clock.last()
        already = reached(b, org_id, seq)()
        seen = returned if already else wait_until(reached(b, org_id, seq), f"seq {seq} on B")
        # A's own follower hears the change too: let it finish before the next sample.
        wait_until(reached(a, org_id, seq), f"seq {seq} on A")
        if n >= warmup:
            lag_ms.append((seen - committed) * 1000)
            commit_ms.append((returned - started) * 1000)
            early += already
    clock.close()
    return {
        "lag": summarise(lag_ms, warmup) | {"max_ms": round(max(lag_ms), 3)},
        "visible_when_a_returned": early,
        "commit_on_a": summarise(commit_ms, warmup),
        "notifications_heard_by_b": b.feed.notifications - heard_before,
        "b_index_count": b.indexes.get(org_id).count,
    }


def revocation_lag(a: Any, b: Any, admin_key: str, keys: int, warmup: int) -> dict[str, Any]:
    """Issue a key on A, have B cache it, revoke it on A; time until B has forgotten it."""
    from app.crypto import Scope
    from app.errors import UnauthorizedError
    from app.services.orgs import issue_api_key, revoke_api_key
    from app.services.principal import authenticate

    admin = authenticate(a, admin_key, Scope.ADMIN)
    lag_ms: list[float] = []
    early = 0
    plaintext = ""
    clock = CommitClock(a.engine)
    for n in range(warmup + keys):
        issued = issue_api_key(a, admin, f"lag key {n}", [Scope.MATCH], None)
        plaintext = issued.plaintext
        authenticate(b, plaintext, Scope.MATCH)
        if b.api_keys.get(issued.key_id) is None:
            raise SystemExit("replica B did not cache the key it authenticated")
        revoke_api_key(a, admin, issued.key_id)
        returned = time.perf_counter()
        committed = clock.last()
        already = forgotten(b, issued.key_id)()
        seen = returned if already else wait_until(forgotten(b, issued.key_id), "revocation")
        if n >= warmup:
            lag_ms.append((seen - committed) * 1000)
            early += already
    clock.close()
    try:
        authenticate(b, plaintext, Scope.MATCH)
        refused = False
    except UnauthorizedError:
        refused = True
    if not refused:
        raise SystemExit("replica B still accepts a key revoked on A")
    return {
        "lag": summarise(lag_ms, warmup) | {"max_ms": round(max(lag_ms), 3)},
        "visible_when_a_returned": early,
    }


# --- 2. the freshness check -------------------------------------------------------------------


def freshness_check(
    runtime: Any, org_id: str, api_key: str, samples: int, warmup: int
) -> dict[str, Any]:
    """The search with and without its position check, the check alone, search_probe."""
    from app.crypto import Scope
    from app.services import indexing
    from app.services.matching import search_probe
    from app.services.orgs import effective_threshold, org_settings
    from app.services.principal import authenticate
    from app.services.probes import Probe
    from app.storage import read_transaction, subjects

    principal = authenticate(runtime, api_key, Scope.MATCH)
    with read_transaction(runtime.engine) as conn:
        first = next(iter(subjects.enrollment_changes_since(conn, org_id, 0)))
    # Near one gallery vector (cosine about 0.96): one hit above the threshold, as a search
    # for an enrolled person finds.
    if first.vector is None:
        raise SystemExit("the gallery's first enrollment has no vector")
    rng = np.random.default_rng(SEED)
    stored = np.frombuffer(first.vector, dtype="<f4")
    noise = rng.standard_normal(stored.size).astype(np.float32) / np.sqrt(stored.size)
    probe = stored + np.float32(0.3) * noise
    probe = (probe / np.linalg.norm(probe)).astype(np.float32)
    threshold, _ = effective_threshold(runtime, org_settings(runtime, org_id))
    model_id = runtime.model_id
    k = 20  # search_probe's top_k=5 asks for 4 hits per subject

    def with_check() -> object:
        index = indexing.current_org_index(runtime, org_id)
        return index.search(probe, model_id=model_id, k=k, min_score=threshold)

    def without_check() -> object:
        index = indexing.org_index(runtime, org_id)
        return index.search(probe, model_id=model_id, k=k, min_score=threshold)

    def check_alone() -> object:
        with read_transaction(runtime.engine) as conn:
            return subjects.current_seq(conn, org_id)

    # The same read as one autocommit statement on a pool without pre-ping: what the check
    # costs without BEGIN, COMMIT and the ping (each a round trip to the database).
    autocommit = sa.create_engine(runtime.engine.url, isolation_level="AUTOCOMMIT")

    def check_autocommit() -> object:
        with autocommit.connect() as conn:
            return subjects.current_seq(conn, org_id)

    vector_probe = Probe(vector=[float(x) for x in probe], model_id=model_id)

    def full() -> object:
        return search_probe(runtime, principal, vector_probe)

    hits = len(without_check().hits(0))  # type: ignore[attr-defined]
    try:
        timings = time_alternating(
            {
                "index search, with the freshness check": with_check,
                "index search, without": without_check,
                "the check alone (current_seq in a read_transaction)": check_alone,
                "the same read, autocommit, no pre-ping": check_autocommit,
                "search_probe, vector probe": full,
            },
            samples,
            warmup,
        )
    finally:
        autocommit.dispose()
    with_ms = timings["index search, with the freshness check"]
    without_ms = timings["index search, without"]
    paired = [w - wo for w, wo in zip(with_ms, without_ms, strict=True)]
    return {
        "gallery": indexing.org_index(runtime, org_id).count,
        "hits_above_threshold": hits,
        "calls": {name: summarise(t, warmup) for name, t in timings.items()},
        "added_p50_ms": round(percentile(with_ms, 50) - percentile(without_ms, 50), 3),
        "added_median_paired_ms": round(statistics.median(paired), 3),
    }


# --- servers ----------------------------------------------------------------------------------


class LeanGetClient(LeanClient):
    """`LeanClient` that also GETs, over the same keep-alive connection."""

    def get(self, path: str) -> int:
        self._connection.request("GET", path, headers=self._headers)
        response = self._connection.getresponse()
        response.read()
        return response.status


def baseline_side(
    tree: Path, work: Path, name: str, database_url: str | None
) -> tuple[Server, str]:
    """A server running the code in `tree`, with an org made by that code; (server, key)."""
    home, models = work / name / "home", work / "baseline-models"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("WAJAH_DATABASE_URL", None)
    if database_url is not None:
        env["WAJAH_DATABASE_URL"] = database_url
    made = subprocess.run(
        [sys.executable, "-c", _MAKE_HOME, str(home), str(models)],
        env=env,
        cwd=work,  # not this checkout: `python -c` puts the working directory first on the path
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        raise SystemExit(f"{name}: making its home failed:\n{made.stderr[-2000:]}")
    root_key, key = json.loads(made.stdout.strip().splitlines()[-1])
    server_environment = {**server_env(home, root_key, models), "PYTHONPATH": str(tree)}
    server_environment.pop("WAJAH_DATABASE_URL", None)
    if database_url is not None:
        server_environment["WAJAH_DATABASE_URL"] = database_url
    return Server(server_environment, free_port(), work / f"{name}.log", cwd=work), key


def org_settings_requests(
    sides: dict[str, tuple[str, str]], samples: int, warmup: int
) -> dict[str, Any]:
    """`GET /v1/org/settings` on each (base URL, key), taking turns (`/healthz` for a name
    ending in it)."""
    clients = {
        name: LeanGetClient(url, {"Authorization": f"Bearer {key}"})
        for name, (url, key) in sides.items()
    }
    try:
        calls: dict[str, Callable[[], object]] = {}
        for name, client in clients.items():
            path = "/healthz" if name.endswith("/healthz") else "/v1/org/settings"

            def get(client: LeanGetClient = client, name: str = name, path: str = path) -> None:
                if client.get(path) != 200:
                    raise SystemExit(f"{name}: GET {path} failed")

            calls[name] = get
        timings = time_alternating(calls, samples, warmup)
    finally:
        for client in clients.values():
            client.close()
    return {name: summarise(t, warmup) for name, t in timings.items()}


# --- 4. verify with 1 and 2 replicas ----------------------------------------------------------


def verify_cell(
    targets: list[str],
    key: str,
    body: dict[str, Any],
    clients: int,
    per_client: int,
    servers: list[psutil.Process],
    databases: Databases,
    database: str,
) -> dict[str, Any]:
    """`clients` threads, `per_client` verifies each, round-robin over `targets`."""
    headers = {"Authorization": f"Bearer {key}"}
    turn = count()
    timings: list[list[float]] = [[] for _ in range(clients)]
    errors: list[int] = []
    barrier = threading.Barrier(clients + 1)

    def work(slot: int) -> None:
        connections = [LeanClient(url, headers) for url in targets]
        try:
            for connection in connections:  # open every connection before the clock starts
                connection.post_json("/v1/verify", body)
            barrier.wait()
            for _ in range(per_client):
                connection = connections[next(turn) % len(connections)]
                started = time.perf_counter()
                status = connection.post_json("/v1/verify", body)
                timings[slot].append((time.perf_counter() - started) * 1000)
                if status != 200:
                    errors.append(status)
        finally:
            for connection in connections:
                connection.close()

    me = psutil.Process()
    threads = [threading.Thread(target=work, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    server_before = [cpu_seconds(p) for p in servers]
    backends_before = databases.backend_cpu(database)
    client_before = cpu_seconds(me)
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    client_cpu = cpu_seconds(me) - client_before
    server_cpu = [cpu_seconds(p) - b for p, b in zip(servers, server_before, strict=True)]
    database_cpu = backend_cpu_used(backends_before, databases.backend_cpu(database))
    return {
        "latencies_ms": [t for slot in timings for t in slot],
        "errors": len(errors),
        "wall_s": wall,
        "server_cpu_s": server_cpu,
        "database_cpu_s": database_cpu,
        "client_cpu_s": client_cpu,
    }


def replica_scaling(
    urls: list[str],
    key: str,
    body: dict[str, Any],
    clients: int,
    per_client: int,
    rounds: int,
    servers: list[psutil.Process],
    databases: Databases,
    database: str,
) -> dict[str, Any]:
    """Rounds of (replica 1 only, both replicas round-robin), in alternating order."""
    variants = {"1 replica": urls[:1], "2 replicas": urls}
    cells: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    order = list(variants)
    for round_ in range(rounds):
        for name in order if round_ % 2 == 0 else order[::-1]:
            cells[name].append(
                verify_cell(
                    variants[name], key, body, clients, per_client, servers, databases, database
                )
            )
    out: dict[str, Any] = {}
    for name, runs in cells.items():
        serving = len(variants[name])
        requests = sum(len(r["latencies_ms"]) for r in runs)
        wall = sum(r["wall_s"] for r in runs)
        latencies = [t for r in runs for t in r["latencies_ms"]]
        server_cpu = sum(sum(r["server_cpu_s"][:serving]) for r in runs)
        idle_cpu = sum(sum(r["server_cpu_s"][serving:]) for r in runs)
        database_cpu = sum(r["database_cpu_s"] for r in runs)
        client_cpu = sum(r["client_cpu_s"] for r in runs)
        server_ms = 1000 * server_cpu / requests
        database_ms = 1000 * database_cpu / requests
        out[name] = {
            "replicas": serving,
            "clients": clients,
            "rounds": rounds,
            "requests": requests,
            "errors": sum(r["errors"] for r in runs),
            "per_s": round(requests / wall, 2),
            "per_s_by_round": [round(len(r["latencies_ms"]) / r["wall_s"], 2) for r in runs],
            "p50_ms": round(percentile(latencies, 50), 2),
            "p99_ms": round(percentile(latencies, 99), 2),
            "server_cpu_ms_per_request": round(server_ms, 2),
            "server_cpu_ms_per_request_by_replica": [
                round(1000 * sum(r["server_cpu_s"][i] for r in runs) / requests, 2)
                for i in range(serving)
            ],
            "idle_replica_cpu_ms_per_request": round(1000 * idle_cpu / requests, 3),
            "database_cpu_ms_per_request": round(database_ms, 2),
            "client_cpu_ms_per_request": round(1000 * client_cpu / requests, 2),
            "per_s_per_core_server_only": round(1000 / server_ms, 2),
            "per_s_per_core_with_database": round(1000 / (server_ms + database_ms), 2),
        }
    return out


# --- the run ----------------------------------------------------------------------------------


def in_process(
    databases: Databases, work: Path, models: Path, args: argparse.Namespace, sizes: dict[str, int]
) -> dict[str, Any]:
    """Parts 1 and 2: two runtimes in this process."""
    from app.services.lifecycle import start_runtime, stop_runtime

    _, url = databases.create("inproc")
    root_key = base64.b64encode(os.urandom(32)).decode()

    def settings(name: str) -> Any:
        return runtime_settings(url, work / f"inproc-{name}", models, root_key)

    print(f"filling an org gallery of {sizes['gallery']} vectors ...", flush=True)
    gallery_org, gallery_key, gallery_setup = fill_gallery(settings("setup"), sizes["gallery"])
    lag_org, lag_key = new_org(settings("setup"), "Lag Bank")
    started = time.perf_counter()
    a = start_runtime(settings("a"))
    try:
        b = start_runtime(settings("b"))
        try:
            start_s = time.perf_counter() - started
            print(f"  two runtimes started in {start_s:.1f} s; enrollment lag ...", flush=True)
            enrollment = enrollment_lag(a, b, lag_org, sizes["changes"], sizes["lag_warmup"])
            print("  revocation lag ...", flush=True)
            revocation = revocation_lag(a, b, lag_key, sizes["keys"], sizes["lag_warmup"])
        finally:
            stop_runtime(b)
        print("  search with and without the freshness check ...", flush=True)
        freshness = freshness_check(
            a, gallery_org, gallery_key, sizes["search_samples"], sizes["search_warmup"]
        )
    finally:
        stop_runtime(a)
    return {
        "homes": "one per runtime; the model pack's directory shared",
        "poll_interval_ms": POLL_S * 1000,
        "gallery_setup": gallery_setup,
        "runtimes_start_s": round(start_s, 2),
        "enrollment": enrollment,
        "revocation": revocation,
        "freshness": freshness,
    }


def over_http(
    databases: Databases, work: Path, models: Path, args: argparse.Namespace, sizes: dict[str, int]
) -> dict[str, Any]:
    """Parts 3 and 4: servers of this checkout (and of the baseline revision)."""
    database, url = databases.create("http")
    root_key = base64.b64encode(os.urandom(32)).decode()
    org_id, key = new_org(
        runtime_settings(url, work / "http-setup", models, root_key), "Replica Bank"
    )
    servers: dict[str, Server] = {}
    keys: dict[str, str] = {}
    baseline: dict[str, Any] = {"against": args.against}
    tree = work / "baseline-tree"
    try:
        for n in (1, 2):
            # Replicas share only the database and the root key (and the prepared pack).
            env = {**server_env(work / f"replica-{n}", root_key, models), "WAJAH_DATABASE_URL": url}
            servers[f"replica {n}"] = Server(env, free_port(), work / f"replica-{n}.log")
            keys[f"replica {n}"] = key
        if args.against:
            added = subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.against],
                capture_output=True,
                text=True,
            )
            if added.returncode != 0:
                baseline["error"] = f"cannot check out {args.against!r}: {added.stderr.strip()}"
                print(f"  {baseline['error']}", flush=True)
            else:
                _, baseline_url = databases.create("baseline")
                for label, db_url in (("PostgreSQL", baseline_url), ("SQLite", None)):
                    name = f"{args.against}, {label}"
                    try:
                        servers[name], keys[name] = baseline_side(
                            tree, work, f"baseline-{label.lower()}", db_url
                        )
                    except SystemExit as exc:  # the baseline is optional; say why it is missing
                        baseline[f"error ({label})"] = str(exc)[-2000:]
        print(f"starting {len(servers)} servers ...", flush=True)
        for name, server in list(servers.items()):
            try:
                server.wait_ready(timeout_s=600)
            except SystemExit as exc:
                if name.startswith("replica"):
                    raise
                baseline[f"error ({name})"] = str(exc)[-2000:]
                servers.pop(name).stop()
        for error in (v for k, v in baseline.items() if k.startswith("error")):
            print(f"  baseline: {error[:300]}", flush=True)

        print("GET /v1/org/settings ...", flush=True)
        sides = {OURS: (servers["replica 1"].base_url, key)}
        sides |= {
            name: (server.base_url, keys[name])
            for name, server in servers.items()
            if not name.startswith("replica")
        }
        # The framework's floor: no key, no thread pool, no database.
        sides["this checkout, GET /healthz"] = (servers["replica 1"].base_url, key)
        settings_get = org_settings_requests(
            sides, sizes["settings_samples"], sizes["settings_warmup"]
        )
        for name in list(servers):
            if not name.startswith("replica"):
                servers.pop(name).stop()

        print("verify with 1 and 2 replicas ...", flush=True)
        verify_jpeg = single_face_jpeg()
        enroll_jpeg = augmented_captures(decode_image(verify_jpeg))[1]
        replica_urls = [servers["replica 1"].base_url, servers["replica 2"].base_url]
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=replica_urls[0], headers=headers, timeout=60) as client:
            enroll_capture(client, "replica-subject", enroll_jpeg)
        body = {
            "subject_id": "replica-subject",
            "probe": {"image": base64.b64encode(verify_jpeg).decode()},
        }
        for replica_url in replica_urls:  # read-your-writes: replica 2 knows the subject now
            first = LeanClient(replica_url, headers)
            try:
                if first.post_json("/v1/verify", body) != 200:
                    raise SystemExit(f"verify on {replica_url} failed")
            finally:
                first.close()
        scaling = replica_scaling(
            replica_urls,
            key,
            body,
            sizes["clients"],
            sizes["per_client"],
            sizes["rounds"],
            [psutil.Process(servers[f"replica {n}"].process.pid) for n in (1, 2)],
            databases,
            database,
        )
    finally:
        for server in servers.values():
            server.stop()
        if args.against:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )
    return {"org_id": org_id, "baseline": baseline, "org_settings": settings_get, "verify": scaling}


def sizes_for(args: argparse.Namespace) -> dict[str, int]:
    quick = args.quick
    sizes = {
        "changes": 20 if quick else 300,
        "keys": 10 if quick else 200,
        "lag_warmup": 3 if quick else 10,
        "gallery": 1_000 if quick else 10_000,
        "search_samples": 30 if quick else 500,
        "search_warmup": 5 if quick else 50,
        "settings_samples": 50 if quick else 1_000,
        "settings_warmup": 10 if quick else 100,
        "clients": 4 if quick else 8,
        "per_client": 3 if quick else 25,
        "rounds": 1 if quick else 4,
    }
    for name in ("changes", "gallery", "clients"):
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    return sizes


def report(results: dict[str, Any], sizes: dict[str, int], against: str | None) -> None:
    inproc, http = results["in_process"], results["http"]
    enrollment, revocation = inproc["enrollment"], inproc["revocation"]

    def lag_row(name: str, figures: dict[str, Any], target: str) -> list[Any]:
        stats = figures["lag"]
        return [
            name,
            stats["samples"],
            figures["visible_when_a_returned"],
            stats["p50_ms"],
            stats["p95_ms"],
            stats["p99_ms"],
            stats["max_ms"],
            target,
        ]

    commit = enrollment["commit_on_a"]
    print_table(
        "change-to-visible lag, runtime A -> runtime B (one process, PostgreSQL on loopback; "
        f"from A's COMMIT to B, polled every {inproc['poll_interval_ms']} ms)",
        ["change", "n", "at A's return", "p50 ms", "p95 ms", "p99 ms", "max ms", "target"],
        [
            lag_row("enrollment (vector only): in B's index", enrollment, "p99 ≤ 50"),
            lag_row("API key revoked: gone from B's cache", revocation, "-"),
            [
                "(A's write transaction, begin to return)",
                commit["samples"],
                "-",
                commit["p50_ms"],
                commit["p95_ms"],
                commit["p99_ms"],
                "-",
                "-",
            ],
        ],
    )
    fresh = inproc["freshness"]
    print_table(
        f"search on one runtime, org gallery {fresh['gallery']:,} vectors, k=20, "
        f"{sizes['search_samples']} alternating rounds",
        ["call", "p50 ms", "p95 ms", "p99 ms"],
        [[name, s["p50_ms"], s["p95_ms"], s["p99_ms"]] for name, s in fresh["calls"].items()]
        + [
            ["freshness check's cost: p50 with - p50 without", fresh["added_p50_ms"], "-", "-"],
            ["  median of the paired differences", fresh["added_median_paired_ms"], "-", "-"],
        ],
    )
    rows = [
        [name, s["p50_ms"], s["p95_ms"], s["p99_ms"], "≤ 0.5" if name == OURS else "-"]
        for name, s in http["org_settings"].items()
    ]
    rows.append(
        [f"issue 17's figure ({BASELINE}, SQLite, 12-02)", ISSUE_ORG_SETTINGS_P50_MS, "-", "-", "-"]
    )
    print_table(
        f"GET /v1/org/settings, keep-alive, {sizes['settings_samples']} alternating rounds",
        ["server", "p50 ms", "p95 ms", "p99 ms", "target p50"],
        rows,
    )
    for name, error in http["baseline"].items():
        if name.startswith("error"):
            print(f"  baseline {name}: {error[:300]}")
    verify = http["verify"]
    print_table(
        f"verify, {sizes['clients']} keep-alive clients, 1 replica vs 2 (round-robin), "
        f"{sizes['rounds']} alternating rounds, {os.cpu_count()} cores",
        [
            "replicas",
            "n",
            "errors",
            "req/s",
            "p50 ms",
            "p99 ms",
            "server CPU ms/req",
            "PostgreSQL CPU ms/req",
            "client CPU ms/req",
            "req/s per core (server)",
            "req/s per core (server + PostgreSQL)",
        ],
        [
            [
                v["replicas"],
                v["requests"],
                v["errors"],
                v["per_s"],
                v["p50_ms"],
                v["p99_ms"],
                v["server_cpu_ms_per_request"],
                v["database_cpu_ms_per_request"],
                v["client_cpu_ms_per_request"],
                v["per_s_per_core_server_only"],
                v["per_s_per_core_with_database"],
            ]
            for v in verify.values()
        ],
    )
    print("\n" + results["scaling_on_paper"])


def scaling_on_paper(verify: dict[str, Any]) -> str:
    one, two = verify["1 replica"], verify["2 replicas"]
    per_core = two["per_s_per_core_server_only"]
    ratio = two["server_cpu_ms_per_request"] / one["server_cpu_ms_per_request"]
    return (
        f"Scaling on paper: a verify costs {one['server_cpu_ms_per_request']} ms of server CPU "
        f"with 1 replica and {two['server_cpu_ms_per_request']} ms with 2 ({ratio:.2f}×), "
        f"plus {two['database_cpu_ms_per_request']} ms of PostgreSQL. N replicas on c cores "
        f"each serve about N·c·{per_core:.1f} verifies/s while the database keeps up "
        f"(it spends {two['database_cpu_ms_per_request']} ms a verify, i.e. one database core "
        f"per {1000 / max(two['database_cpu_ms_per_request'], 1e-3):.0f} verifies/s); "
        f"on this {os.cpu_count()}-core machine both variants share the same cores "
        f"({one['per_s']} vs {two['per_s']} verifies/s)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, no baseline")
    parser.add_argument(
        "--against",
        help=f"revision for the GET /v1/org/settings baseline (default {BASELINE}; "
        "none with --quick; '' for none)",
    )
    parser.add_argument("--changes", type=int, help="enrollments timed for the lag (300)")
    parser.add_argument("--gallery", type=int, help="org gallery for the search (10000)")
    parser.add_argument("--clients", type=int, help="verify clients (8)")
    args = parser.parse_args()
    if args.against is None:
        args.against = None if args.quick else BASELINE
    sizes = sizes_for(args)

    from models.prepare import prepare_default_pack

    load_before = os.getloadavg()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="wajah-bench-replicas-"))
    models = work / "models"
    pack = prepare_default_pack(models)
    databases = Databases(POSTGRES_URL)
    try:
        results: dict[str, Any] = {
            "in_process": in_process(databases, work, models, args, sizes),
            "http": over_http(databases, work, models, args, sizes),
        }
    finally:
        databases.drop_all()
    results["scaling_on_paper"] = scaling_on_paper(results["http"]["verify"])
    report(results, sizes, args.against)
    load = {"before": load_before[0], "after": os.getloadavg()[0], "cores": os.cpu_count()}
    seconds = round(time.perf_counter() - started, 1)
    print(
        f"\n1-min load average {load['before']:.2f} before, {load['after']:.2f} after; "
        f"{seconds} s in all"
    )
    inproc, http = results["in_process"], results["http"]
    ours = http["org_settings"][OURS]["p50_ms"]
    write_results(
        "replicas" + ("-quick" if args.quick else ""),
        {
            "quick": args.quick,
            "model_id": pack.model_id,
            "postgres": make_url(POSTGRES_URL).render_as_string(hide_password=True),
            "sizes": sizes,
            "baseline": f"{args.against or 'no revision'}'s server (GET /v1/org/settings); "
            "search without the freshness check; 1 replica",
            **results,
            "seconds": seconds,
            "load_average_1min": load,
            "targets": TARGETS,
            "targets_met": {
                "enrollment_lag_p99_ms": inproc["enrollment"]["lag"]["p99_ms"]
                <= TARGETS["enrollment_lag_p99_ms"],
                "freshness_check_p50_added_ms": inproc["freshness"]["added_p50_ms"]
                <= TARGETS["freshness_check_p50_added_ms"],
                "org_settings_p50_ms": ours <= TARGETS["org_settings_p50_ms"],
            },
        },
    )


if __name__ == "__main__":
    main()
