"""Promise 5, nothing acknowledged is lost: kill -9 a live server while it enrolls, restart.

A real `wajah serve` runs as a subprocess on a free loopback port (temp home, the session's
prepared model pack, SQLite or a fresh PostgreSQL schema). A client thread enrolls new
subjects one after another while the test kills the server at seeded random moments: mostly
with SIGKILL mid-traffic (after a random number of answered enrollments and a random delay,
so the kill mostly lands inside the next request), sometimes while it is still starting
(replay interrupted), and now and then with SIGTERM so that a snapshot is written and a
later start replays on top of it.

After the last kill the server starts once more and must show:

* every enrollment that got a 2xx: its subject reads back with that enrollment id, active;
* every acknowledged subject is found by `/v1/search` with the image it enrolled;
* the index holds exactly the database's active rows: `/readyz` vectors and the search
  gallery size equal the active rows read straight from the database with SQLAlchemy, and
  every active row's subject is among the search results of its face (so no index entry
  lacks a row and no row lacks an entry);
* the database holds nothing the client never sent, and every active row's sealed frame is
  in the object store.

No timing is asserted; the random schedule only decides where the kills land.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from app.crypto import Scope
from app.runtime import Runtime, object_store
from app.services import indexing
from app.services.principal import Principal
from app.services.subjects import CaptureBundle, enroll_subject
from app.settings import Settings
from app.storage import subjects as subjects_store
from app.storage import utcnow
from app.storage.schema import enrollments, frames, idempotency_keys, subjects
from models.packs import ModelPack
from tests.app.api.conftest import TEST_ROOT_KEY, Org

pytestmark = pytest.mark.slow

SEED = 20261127
MID_TRAFFIC_KILLS = 20  # SIGKILLs that land while the client enrolls (the issue asks for 20)
MAX_CYCLES = 40  # bound on server starts, whatever the dice say
MAX_ATTEMPTS_PER_CYCLE = 60
# The search check needs every subject of one face within top_k (at most 100).
MAX_SUBJECTS_PER_FACE = 90
READY_TIMEOUT_S = 60.0
# person4 looks away and is refused by the pose gate; the others are single usable faces.
FACES = ("person0", "person1", "person2", "person3", "person5", "tom")


@dataclass
class Attempt:
    subject_id: str
    face: str
    cycle: int
    status: int | None = None  # None: no response (the server died under it)
    enrollment_id: str | None = None
    error: str | None = None


@dataclass
class Ledger:
    attempts: list[Attempt] = field(default_factory=list)
    kills_mid_traffic: int = 0
    kills_in_flight: int = 0  # mid-traffic kills that cut a request short
    kills_at_start: int = 0
    graceful_stops: int = 0

    def per_face(self, face: str) -> int:
        return sum(1 for a in self.attempts if a.face == face)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """`wajah serve` in a subprocess; every start appends to one log file."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.env = env
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        assert self.process is None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from app.cli import main; main()", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if client.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        pytest.fail(f"server not ready after {READY_TIMEOUT_S}s:\n{self.log_tail()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        """SIGTERM: uvicorn drains requests and the lifespan writes index snapshots."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            returncode = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"server ignored SIGTERM:\n{self.log_tail()}")
        self.process = None
        # uvicorn re-raises the signal once it has shut down cleanly.
        assert returncode in (0, -signal.SIGTERM), self.log_tail()
        assert self.log_tail(5).count("Application shutdown complete") == 1, self.log_tail()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Enroller(threading.Thread):
    """Enrolls fresh subjects back to back until told to stop or the server goes away."""

    def __init__(
        self,
        server: Server,
        api_key: str,
        images: dict[str, bytes],
        ledger: Ledger,
        cycle: int,
        rng: random.Random,
    ) -> None:
        super().__init__(name=f"enroller-{cycle}", daemon=True)
        self.server = server
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.images = images
        self.ledger = ledger
        self.cycle = cycle
        self.rng = rng
        self.stop = threading.Event()
        self.in_flight = threading.Event()
        self.acked = threading.Semaphore(0)  # released once per 201

    def run(self) -> None:
        with httpx.Client(base_url=self.server.base_url, timeout=30.0) as client:
            for n in range(MAX_ATTEMPTS_PER_CYCLE):
                if self.stop.is_set():
                    return
                faces = [f for f in FACES if self.ledger.per_face(f) < MAX_SUBJECTS_PER_FACE]
                if not faces:
                    return
                face = self.rng.choice(faces)
                attempt = Attempt(f"crash-{self.cycle:02d}-{n:03d}", face, self.cycle)
                self.ledger.attempts.append(attempt)
                self.in_flight.set()
                try:
                    response = client.post(
                        f"/v1/subjects/{attempt.subject_id}/enrollments",
                        headers=self.headers,
                        files=[("frames", (f"{face}.jpg", self.images[face], "image/jpeg"))],
                    )
                except httpx.TransportError as exc:
                    attempt.error = type(exc).__name__
                    return
                finally:
                    self.in_flight.clear()
                attempt.status = response.status_code
                if response.status_code == 201:
                    attempt.enrollment_id = response.json()["enrollment_id"]
                    self.acked.release()
                else:
                    attempt.error = response.text[:500]
                    return


def create_org(env: dict[str, str]) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "orgs", "create", "Crash Bank"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return values["org_id"], values["api_key"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'wajah.db'}"
        return
    base = request.getfixturevalue("postgres_database")
    schema = f"crash_{secrets.token_hex(6)}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    admin.dispose()
    yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


def test_kill_9_loses_no_acknowledged_enrollment(
    database_url: str, tmp_path: Path, default_pack: ModelPack, face_images: dict[str, bytes]
) -> None:
    rng = random.Random(SEED)
    home = tmp_path / "home"
    env = {
        **os.environ,
        "WAJAH_HOME": str(home),
        "WAJAH_DATABASE_URL": database_url,
        "WAJAH_ROOT_KEY": TEST_ROOT_KEY,
        # The session's prepared pack: each start loads it instead of folding it again.
        "WAJAH_MODEL_CACHE_DIR": str(default_pack.directory.parent),
        "WAJAH_HOST": "127.0.0.1",
        "WAJAH_PORT": str(free_port()),
        "WAJAH_INFERENCE_WORKERS": "2",
    }
    org_id, api_key = create_org(env)
    server = Server(env, int(env["WAJAH_PORT"]), tmp_path / "server.log")
    ledger = Ledger()

    try:
        for cycle in range(MAX_CYCLES):
            if ledger.kills_mid_traffic >= MID_TRAFFIC_KILLS:
                break
            server.start()
            roll = rng.random()
            if roll < 0.1:
                # Die while importing, loading models or replaying the indexes.
                time.sleep(rng.uniform(0.2, 1.5))
                server.kill()
                ledger.kills_at_start += 1
                continue
            server.wait_ready()
            enroller = Enroller(
                server, api_key, face_images, ledger, cycle, random.Random(rng.random())
            )
            enroller.start()
            # Count answers, not seconds, so a slow machine does the same work: let 1..4
            # enrollments through, then kill a moment later (mostly inside the next one).
            for _ in range(rng.randint(1, 4)):
                if not enroller.acked.acquire(timeout=60):
                    break  # the enroller stopped early; the ledger says why
            time.sleep(rng.uniform(0.0, 0.15))
            if roll < 0.2:
                server.stop()
                ledger.graceful_stops += 1
            else:
                in_flight = enroller.in_flight.is_set()
                server.kill()
                ledger.kills_mid_traffic += 1
                ledger.kills_in_flight += in_flight
            enroller.stop.set()
            enroller.join(timeout=60)
            assert not enroller.is_alive()

        assert ledger.kills_mid_traffic >= MID_TRAFFIC_KILLS, ledger
        server.start()
        server.wait_ready()
        try:
            check_survivors(server, api_key, org_id, database_url, home, face_images, ledger)
        finally:
            server.stop()
    finally:
        if server.process is not None:
            server.kill()


def check_survivors(
    server: Server,
    api_key: str,
    org_id: str,
    database_url: str,
    home: Path,
    images: dict[str, bytes],
    ledger: Ledger,
) -> None:
    import base64

    headers = {"Authorization": f"Bearer {api_key}"}
    acked = [a for a in ledger.attempts if a.status == 201]
    answered_otherwise = [a for a in ledger.attempts if a.status not in (201, None)]
    # The server only ever answered 201 or died: no 4xx/5xx from a crash-restart.
    assert answered_otherwise == []
    assert len(acked) >= MID_TRAFFIC_KILLS  # the loop did real work between kills

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            active = conn.execute(
                sa.select(enrollments.c.bundle_id, subjects.c.subject_id, frames.c.object_key)
                .join(subjects, subjects.c.id == enrollments.c.subject_pk)
                .join(frames, frames.c.enrollment_id == enrollments.c.id, isouter=True)
                .where(enrollments.c.org_id == org_id, enrollments.c.status == "active")
            ).all()
            frame_keys = set(
                conn.execute(sa.select(frames.c.object_key).where(frames.c.org_id == org_id))
                .scalars()
                .all()
            )
    finally:
        engine.dispose()

    with httpx.Client(base_url=server.base_url, timeout=30.0, headers=headers) as client:
        ready = client.get("/readyz").json()
        assert ready["index"]["tampered_embeddings"] == 0
        # No index entry without a database row, and no row left out of the index.
        assert ready["index"]["vectors"] == len(active)

        for attempt in acked:
            got = client.get(f"/v1/subjects/{attempt.subject_id}")
            assert got.status_code == 200, (attempt, got.text)
            bundles = {e["enrollment_id"]: e["status"] for e in got.json()["enrollments"]}
            assert bundles == {attempt.enrollment_id: "active"}, attempt

        found: dict[str, set[str]] = {}
        for face in FACES:
            sent = {a.subject_id for a in ledger.attempts if a.face == face}
            if not sent:
                continue
            result = client.post(
                "/v1/search",
                json={"probe": {"image": base64.b64encode(images[face]).decode()}, "top_k": 100},
            )
            assert result.status_code == 200, result.text
            body = result.json()
            assert body["gallery_size"] == len(active)
            found[face] = {c["subject_id"] for c in body["candidates"]}
            assert {a.subject_id for a in acked if a.face == face} <= found[face], face
            assert found[face] <= sent, face  # only this face's subjects match it

    sent_ids = {a.subject_id for a in ledger.attempts}
    active_subjects = [row.subject_id for row in active]
    # One bundle of one frame per subject, and none the client never sent.
    assert len(active_subjects) == len(set(active_subjects))
    assert set(active_subjects) <= sent_ids
    # Every active row is reachable through the index under the face it enrolled.
    assert set(active_subjects) == set().union(*found.values())

    # The server's own object store: a directory in its home (SQLite) or the database.
    engine = sa.create_engine(database_url)
    try:
        objects = object_store(Settings(home=home, database_url=database_url), engine)
        assert all(row.object_key is not None and objects.exists(row.object_key) for row in active)
        stored = set(objects.keys_written_before(utcnow() + timedelta(days=1)))
    finally:
        engine.dispose()

    unacked_but_kept = len(active) - len(acked)
    # A kill between sealing a frame and the commit leaves ciphertext without a row. Its
    # wrapped DEK was never stored, so it is unreadable: a disk leak, reported, not a failure.
    orphans = len(stored - frame_keys)
    print(
        f"\ncrash test: {len(ledger.attempts)} enroll attempts, {len(acked)} acknowledged, "
        f"{unacked_but_kept} committed without an answer; {ledger.kills_mid_traffic} SIGKILLs "
        f"mid-traffic ({ledger.kills_in_flight} cut a request short), "
        f"{ledger.kills_at_start} during start, {ledger.graceful_stops} SIGTERM restarts; "
        f"{orphans} sealed frames without a row"
    )


def test_idempotent_retry_after_kill_9_completes(
    database_url: str, tmp_path: Path, default_pack: ModelPack, face_images: dict[str, bytes]
) -> None:
    """A client that lost its answer to a crash retries with the same Idempotency-Key."""
    env = {
        **os.environ,
        "WAJAH_HOME": str(tmp_path / "home"),
        "WAJAH_DATABASE_URL": database_url,
        "WAJAH_ROOT_KEY": TEST_ROOT_KEY,
        "WAJAH_MODEL_CACHE_DIR": str(default_pack.directory.parent),
        "WAJAH_HOST": "127.0.0.1",
        "WAJAH_PORT": str(free_port()),
    }
    org_id, api_key = create_org(env)
    server = Server(env, int(env["WAJAH_PORT"]), tmp_path / "server.log")
    headers = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": "retry-after-crash"}
    # Eight frames keep the request in inference long enough to kill it there.
    bundle = [("frames", (f"f{n}.jpg", face_images["person2"], "image/jpeg")) for n in range(8)]
    outcome: list[object] = []

    def send() -> None:
        with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
            try:
                outcome.append(
                    client.post("/v1/subjects/retry-1/enrollments", headers=headers, files=bundle)
                )
            except httpx.TransportError as exc:
                outcome.append(exc)

    engine = sa.create_engine(database_url)
    try:
        server.start()
        server.wait_ready()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        deadline = time.monotonic() + 30
        reserved = None
        while reserved is None and time.monotonic() < deadline:
            with engine.connect() as conn:
                reserved = conn.execute(
                    sa.select(idempotency_keys.c.response_status).where(
                        idempotency_keys.c.org_id == org_id
                    )
                ).first()
            time.sleep(0.005)
        if reserved is None or reserved.response_status is not None:
            pytest.fail(f"the kill did not land between reservation and answer: {reserved}")
        server.kill()
        sender.join(timeout=60)
        if not (len(outcome) == 1 and isinstance(outcome[0], httpx.TransportError)):
            pytest.fail(f"the first request was answered: {outcome}")

        server.start()
        server.wait_ready()
        with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
            retry = client.post("/v1/subjects/retry-1/enrollments", headers=headers, files=bundle)
            assert retry.status_code == 201, retry.text
            again = client.post("/v1/subjects/retry-1/enrollments", headers=headers, files=bundle)
            assert again.json()["enrollment_id"] == retry.json()["enrollment_id"]
        server.stop()
    finally:
        engine.dispose()
        if server.process is not None:
            server.kill()


def test_failure_after_commit_keeps_the_committed_frames(
    runtime: Runtime, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    """An index that disagrees with the database after the commit neither fails the request
    nor loses its frames: the rows are the truth, the index is rebuilt from them.

    The disagreement is real: the index already holds the id the next enrollment gets (a
    stale cache entry), so adding the new row to it fails.
    """
    org = new_org()
    principal = Principal(org.org_id, "test", frozenset({Scope.ADMIN}))
    with runtime.engine.connect() as conn:
        next_vector_id = subjects_store.current_seq(conn, org.org_id) + 1
    stray = np.zeros((1, runtime.pipeline.dimension), np.float32)
    stray[0, 0] = 1.0
    indexing.org_index(runtime, org.org_id).add([next_vector_id], stray, model_id=runtime.model_id)

    result = enroll_subject(
        runtime, principal, "after-commit", CaptureBundle([face_images["person2"]])
    )
    assert result.frames[0].accepted
    with runtime.engine.connect() as conn:
        stored = conn.execute(
            sa.select(enrollments.c.vector).where(
                enrollments.c.org_id == org.org_id, enrollments.c.vector_id == next_vector_id
            )
        ).scalar_one()
    # The index now holds the committed row's vector under its id, not the stray one.
    hit = (
        indexing.org_index(runtime, org.org_id)
        .search(np.frombuffer(stored, "<f4"), model_id=runtime.model_id, k=1)
        .hits(0)[0]
    )
    assert hit.id == next_vector_id
    assert hit.score > 0.9999

    with runtime.engine.connect() as conn:
        keys = conn.execute(
            sa.select(frames.c.object_key)
            .join(enrollments, enrollments.c.id == frames.c.enrollment_id)
            .where(enrollments.c.org_id == org.org_id, enrollments.c.vector_id == next_vector_id)
        ).all()
    assert len(keys) == 1
    assert runtime.objects.exists(keys[0].object_key)
