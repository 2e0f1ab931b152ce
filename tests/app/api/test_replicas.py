"""Replicas: `wajah serve` processes that share only a PostgreSQL database and the root key.

Each replica runs as a real subprocess with a home of its own (no shared files) on a free
loopback port, against a fresh PostgreSQL schema. The contract of the replicas issue:

* a change committed on one replica is seen by a search, duplicate check or screen on
  another at once (read-your-writes; no waiting for the feed);
* a revoked key stops working on every replica within the feed's lag;
* two enrollments of one face with `duplicate_check=reject`, racing on two replicas, give
  exactly one 201;
* kill -9 one replica under load: the other keeps serving, and every enrollment either of
  them acknowledged is there;
* a replica started mid-load converges to the same answers.

With SQLite a second server on the same database refuses to start, with a clear message.
No timing is asserted.
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from models.packs import ModelPack
from tests.app.api.conftest import TEST_ROOT_KEY
from tests.app.api.test_crash import Server, create_org, free_port

pytestmark = pytest.mark.slow

# person4 looks away and is refused by the pose gate; the others are single usable faces.
FACES = ("person0", "person1", "person2", "person3", "person5", "tom")
FEED_LAG_BOUND_S = 10.0  # a bound for the revocation to arrive, not a measurement


@dataclass
class Cluster:
    """Replicas over one database; `env` is what they share."""

    env: dict[str, str]
    root: Path
    replicas: list[Server]
    api_key: str = ""
    org_id: str = ""

    def start(self, name: str) -> Server:
        home = self.root / name
        env = {**self.env, "WAJAH_HOME": str(home), "WAJAH_PORT": str(free_port())}
        server = Server(env, int(env["WAJAH_PORT"]), self.root / f"{name}.log")
        server.start()
        server.wait_ready()
        self.replicas.append(server)
        return server

    def client(self, server: Server, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.api_key}"}
        return httpx.Client(base_url=server.base_url, headers=headers, timeout=60.0)


@pytest.fixture
def postgres_url(postgres_database: URL) -> Iterator[str]:
    schema = f"replicas_{secrets.token_hex(6)}"
    admin = sa.create_engine(postgres_database, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    admin.dispose()
    yield postgres_database.update_query_dict(
        {"options": f"-csearch_path={schema}"}
    ).render_as_string(hide_password=False)


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path, default_pack: ModelPack) -> Iterator[Cluster]:
    env = {
        **os.environ,
        "WAJAH_DATABASE_URL": postgres_url,
        "WAJAH_ROOT_KEY": TEST_ROOT_KEY,
        "WAJAH_MODEL_CACHE_DIR": str(default_pack.directory.parent),
        "WAJAH_HOST": "127.0.0.1",
        "WAJAH_INFERENCE_WORKERS": "2",
        "WAJAH_HOME": str(tmp_path / "cli-home"),
    }
    made = Cluster(env, tmp_path, [])
    made.org_id, made.api_key = create_org(env)
    yield made
    for server in made.replicas:
        if server.process is not None:
            server.kill()


def enroll(client: httpx.Client, subject_id: str, image: bytes, **form: str) -> httpx.Response:
    return client.post(
        f"/v1/subjects/{subject_id}/enrollments",
        files=[("frames", ("face.jpg", image, "image/jpeg"))],
        data=form,
    )


def search(client: httpx.Client, image: bytes) -> list[str]:
    response = client.post(
        "/v1/search", json={"probe": {"image": base64.b64encode(image).decode()}, "top_k": 100}
    )
    assert response.status_code == 200, response.text
    return [c["subject_id"] for c in response.json()["candidates"]]


@pytest.mark.postgres
def test_a_change_on_one_replica_is_seen_on_the_other_at_once(
    cluster: Cluster, face_images: dict[str, bytes]
) -> None:
    a, b = cluster.start("a"), cluster.start("b")
    with cluster.client(a) as on_a, cluster.client(b) as on_b:
        assert enroll(on_a, "cust-1", face_images["person0"]).status_code == 201
        # Search and the duplicate check on B reflect A's commit with no wait.
        assert search(on_b, face_images["person0"]) == ["cust-1"]
        flagged = enroll(on_b, "cust-2", face_images["person0"], duplicate_check="flag")
        assert flagged.status_code == 201
        assert [d["subject_id"] for d in flagged.json()["duplicates"]] == ["cust-1"]
        assert sorted(search(on_a, face_images["person0"])) == ["cust-1", "cust-2"]

        # Erased on B: gone from A's answers at once.
        assert on_b.delete("/v1/subjects/cust-1").status_code == 200
        assert search(on_a, face_images["person0"]) == ["cust-2"]
        assert on_a.get("/v1/subjects/cust-1").json()["status"] == "erased"

        # A verifies against what B enrolled (its hashed reference, keyed under the org's
        # reference key, checks out on A: the replicas share the keys).
        probe = {"image": base64.b64encode(face_images["person0"]).decode()}
        verified = on_a.post("/v1/verify", json={"subject_id": "cust-2", "probe": probe})
        assert verified.json()["decision"] == "match"

        # An Idempotency-Key holds across replicas: B replays A's answer.
        first = on_a.post(
            "/v1/subjects/cust-3/enrollments",
            files=[("frames", ("face.jpg", face_images["person1"], "image/jpeg"))],
            headers={"Idempotency-Key": "retry-me"},
        )
        again = on_b.post(
            "/v1/subjects/cust-3/enrollments",
            files=[("frames", ("face.jpg", face_images["person1"], "image/jpeg"))],
            headers={"Idempotency-Key": "retry-me"},
        )
        assert (first.status_code, again.status_code) == (201, 201)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["enrollment_id"] == first.json()["enrollment_id"]

        # Both replicas report themselves caught up.
        for server in (a, b):
            ready = httpx.get(f"{server.base_url}/readyz").json()
            assert (ready["status"], ready["feed"]) == ("ready", True)
            assert ready["position"]["listening"] is True


@pytest.mark.postgres
def test_a_revoked_key_stops_working_on_every_replica(
    cluster: Cluster, face_images: dict[str, bytes]
) -> None:
    a, b = cluster.start("a"), cluster.start("b")
    with cluster.client(a) as admin_a:
        created = admin_a.post(
            "/v1/api-keys", json={"name": "backend", "scopes": ["enroll", "match"]}
        ).json()
    with cluster.client(b, created["api_key"]) as key_on_b:
        # B has the key in its cache now.
        assert key_on_b.get("/v1/subjects").status_code == 200
        with cluster.client(a) as admin_a:
            assert admin_a.delete(f"/v1/api-keys/{created['key_id']}").status_code == 200
        deadline = time.monotonic() + FEED_LAG_BOUND_S
        status = 200
        while time.monotonic() < deadline and status == 200:
            status = key_on_b.get("/v1/subjects").status_code
            time.sleep(0.01)
        assert status == 401


def race_to_enroll(
    cluster: Cluster, replicas: tuple[Server, Server], face: str, image: bytes
) -> dict[str, int]:
    """The same face enrolled under two subject ids, one on each replica, at once."""
    barrier = threading.Barrier(2)
    answers: dict[str, int] = {}

    def enroll_on(server: Server, subject_id: str) -> None:
        with cluster.client(server) as client:
            barrier.wait()
            response = enroll(client, subject_id, image, duplicate_check="reject")
            answers[subject_id] = response.status_code

    threads = [
        threading.Thread(target=enroll_on, args=(server, f"{face}-on-{n}"))
        for n, server in enumerate(replicas)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return answers


@pytest.mark.postgres
def test_one_face_enrolled_on_two_replicas_at_once_with_reject_gives_one_201(
    cluster: Cluster, face_images: dict[str, bytes]
) -> None:
    a, b = cluster.start("a"), cluster.start("b")
    for face in ("person1", "person2", "person3"):
        answers = race_to_enroll(cluster, (a, b), face, face_images[face])
        assert sorted(answers.values()) == [201, 409], answers


class Load(threading.Thread):
    """Enrolls fresh subjects on one replica until stopped; records what was acknowledged."""

    def __init__(self, cluster: Cluster, server: Server, name: str, images: dict[str, bytes]):
        super().__init__(name=f"load-{name}", daemon=True)
        self.cluster, self.server, self.tag, self.images = cluster, server, name, images
        self.stop = threading.Event()
        self.acked: dict[str, str] = {}  # subject id -> face
        self.failed = 0

    def run(self) -> None:
        with self.cluster.client(self.server) as client:
            for n in range(200):
                if self.stop.is_set():
                    return
                face = FACES[n % len(FACES)]
                subject_id = f"{self.tag}-{n:03d}"
                try:
                    response = enroll(client, subject_id, self.images[face])
                except httpx.TransportError:
                    self.failed += 1
                    return  # the replica went away under us
                if response.status_code == 201:
                    self.acked[subject_id] = face


@pytest.mark.postgres
def test_kill_9_of_one_replica_leaves_the_other_serving_with_every_acknowledged_enrollment(
    cluster: Cluster, face_images: dict[str, bytes]
) -> None:
    a, b = cluster.start("a"), cluster.start("b")
    on_a, on_b = Load(cluster, a, "a", face_images), Load(cluster, b, "b", face_images)
    on_a.start()
    on_b.start()
    deadline = time.monotonic() + 120
    while len(on_a.acked) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    a.kill()
    on_a.join(timeout=60)
    acked_before_kill = len(on_b.acked)
    while len(on_b.acked) < acked_before_kill + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    on_b.stop.set()
    on_b.join(timeout=60)
    assert len(on_b.acked) >= acked_before_kill + 3  # B went on serving after A died

    acked = {**on_a.acked, **on_b.acked}
    with cluster.client(b) as client:
        for face in FACES:
            found = set(search(client, face_images[face]))
            assert {s for s, f in acked.items() if f == face} <= found
        for subject_id in acked:
            assert client.get(f"/v1/subjects/{subject_id}").json()["status"] == "active"


@pytest.mark.postgres
def test_a_replica_started_mid_load_converges(
    cluster: Cluster, face_images: dict[str, bytes]
) -> None:
    b = cluster.start("b")
    load = Load(cluster, b, "b", face_images)
    load.start()
    while len(load.acked) < 3:
        time.sleep(0.05)
    c = cluster.start("c")  # replays what exists, then follows the feed
    while len(load.acked) < 12 and load.is_alive():
        time.sleep(0.05)
    load.stop.set()
    load.join(timeout=60)
    with cluster.client(b) as on_b, cluster.client(c) as on_c:
        for face in FACES:
            expected = {s for s, f in load.acked.items() if f == face}
            assert expected <= set(search(on_b, face_images[face]))
            assert sorted(search(on_c, face_images[face])) == sorted(
                search(on_b, face_images[face])
            )
    ready = httpx.get(f"{c.base_url}/readyz").json()
    assert ready["position"]["behind"] == 0


def test_a_second_server_on_one_sqlite_database_refuses_to_start(
    tmp_path: Path, default_pack: ModelPack
) -> None:
    env = {
        **os.environ,
        "WAJAH_DATABASE_URL": f"sqlite:///{tmp_path / 'wajah.db'}",
        "WAJAH_ROOT_KEY": TEST_ROOT_KEY,
        "WAJAH_MODEL_CACHE_DIR": str(default_pack.directory.parent),
        "WAJAH_HOST": "127.0.0.1",
    }
    first = Cluster(env, tmp_path, []).start("first")
    second = Server(
        {**env, "WAJAH_HOME": str(tmp_path / "second"), "WAJAH_PORT": str(free_port())},
        0,
        tmp_path / "second.log",
    )
    second.start()
    assert second.process is not None
    assert second.process.wait(timeout=120) != 0
    assert "SQLite serves one process" in second.log_tail()
    assert httpx.get(f"{first.base_url}/readyz").status_code == 200
    first.stop()
