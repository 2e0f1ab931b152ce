"""The service over HTTP on the Milvus index backend (`WAJAH_INDEX_URL=milvus://...`).

A fresh install on a real Milvus 2.3.5 server enrolls, verifies, searches, checks duplicates,
screens a shared watchlist and erases on real photos; the vectors are in Milvus, one
collection per org and per watchlist, and no index file is written in the home. A restarted
server finds the collections and their positions; an org's requests never touch another
org's collection; a Milvus that cannot be reached is a clear 503 and loses nothing.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import pytest
from fastapi.testclient import TestClient
from pymilvus import MilvusClient
from typer.testing import CliRunner

from app.cli import cli
from app.main import create_app
from app.runtime import Runtime
from app.services.indexing import watchlist_namespace
from app.services.lifecycle import start_runtime, stop_runtime
from app.settings import Settings
from index.milvus import collection_name
from models.imaging import decode_image, encode_jpeg
from models.packs import ModelPack
from tests.app.api.conftest import TEST_ROOT_KEY, Org
from tests.app.api.helpers import b64, enroll, error_code

pytestmark = [pytest.mark.milvus, pytest.mark.slow]


def milvus_settings(home: Path, models_dir: Path, index_url: str, prefix: str) -> Settings:
    return Settings(
        home=home,
        database_url=f"sqlite:///{home / 'wajah.db'}",
        model_cache_dir=models_dir,
        root_key=TEST_ROOT_KEY,  # type: ignore[arg-type]
        inference_workers=2,
        rate_limit_per_second=0,
        index_url=index_url,
        index_prefix=prefix,
    )


def index_url(uri: str) -> str:
    return f"milvus://{urlsplit(uri).netloc}"


@pytest.fixture(scope="module")
def settings(
    milvus_uri: str, tmp_path_factory: pytest.TempPathFactory, default_pack: ModelPack
) -> Settings:
    home = tmp_path_factory.mktemp("milvus-home")
    prefix = f"e2e{secrets.token_hex(4)}"
    return milvus_settings(home, default_pack.directory.parent, index_url(milvus_uri), prefix)


@pytest.fixture(scope="module")
def milvus(milvus_uri: str) -> Iterator[MilvusClient]:
    client = MilvusClient(uri=milvus_uri)
    yield client
    client.close()


def rows_in(milvus: MilvusClient, settings: Settings, namespace: str) -> int:
    """Face rows (ids >= 0) in the namespace's collection, read straight from Milvus."""
    name = collection_name(settings.index_prefix, namespace)
    answer = milvus.query(
        name, filter="id >= 0", output_fields=["count(*)"], consistency_level="Strong"
    )
    return int(answer[0]["count(*)"])


def recapture(image: bytes) -> bytes:
    return encode_jpeg(cv2.resize(decode_image(image), None, fx=0.8, fy=0.8), 60)


def new_org(runtime: Runtime, client: TestClient, name: str) -> Org:
    from app.services.orgs import create_org

    org_id, key = create_org(runtime, name)
    org = Org(org_id, key.plaintext, runtime)
    sharing = client.patch("/v1/org/settings", headers=org.admin, json={"watchlist_sharing": True})
    assert sharing.status_code == 200, sharing.text
    return org


def search(client: TestClient, org: Org, image: bytes) -> list[str]:
    found = client.post("/v1/search", headers=org.admin, json={"probe": {"image": b64(image)}})
    assert found.status_code == 200, found.text
    return [c["subject_id"] for c in found.json()["candidates"]]


def test_kyc_flows_on_milvus(
    settings: Settings, milvus: MilvusClient, face_images: dict[str, bytes]
) -> None:
    runtime = start_runtime(settings)
    assert type(runtime.indexes).__name__ == "MilvusBackend"
    again = recapture(face_images["person2"])
    try:
        with TestClient(create_app(settings, runtime)) as client:
            bank, wallet = new_org(runtime, client, "Bank"), new_org(runtime, client, "Wallet")
            body = enroll(client, bank.admin, "cust-1", face_images["person2"])
            assert body["duplicates"] == []
            enroll(client, bank.admin, "cust-2", face_images["person0"])
            enroll(client, wallet.admin, "w-1", face_images["person2"])  # same face, other org

            verified = client.post(
                "/v1/verify",
                headers=bank.admin,
                json={"subject_id": "cust-1", "probe": {"image": b64(again)}},
            ).json()
            assert verified["decision"] == "match"
            assert search(client, bank, again)[0] == "cust-1"
            assert search(client, wallet, again) == ["w-1"]

            duplicate = client.post(
                "/v1/subjects/cust-3/enrollments",
                headers=bank.admin,
                json={"frames": [b64(again)], "duplicate_check": "flag"},
            )
            assert duplicate.status_code == 201, duplicate.text
            assert [d["subject_id"] for d in duplicate.json()["duplicates"]] == ["cust-1"]

            watchlist = client.post("/v1/watchlists", headers=bank.admin, json={"name": "fraud"})
            assert watchlist.status_code == 201, watchlist.text
            watchlist_id = watchlist.json()["watchlist_id"]
            entry = client.post(
                f"/v1/watchlists/{watchlist_id}/entries",
                headers=bank.admin,
                json={"reason_code": "confirmed_fraud", "subject_id": "cust-2"},
            )
            assert entry.status_code == 201, entry.text
            screened = client.post(
                f"/v1/watchlists/{watchlist_id}/screen",
                headers=bank.admin,
                json={"probe": {"image": b64(recapture(face_images["person0"]))}},
            )
            assert screened.status_code == 200, screened.text
            assert [h["entry_id"] for h in screened.json()["hits"]] == entry.json()["entry_ids"]

            # The vectors are in Milvus: one collection per org and per watchlist.
            assert rows_in(milvus, settings, bank.org_id) == 3
            assert rows_in(milvus, settings, wallet.org_id) == 1
            assert rows_in(milvus, settings, watchlist_namespace(watchlist_id)) == 1

            erased = client.delete("/v1/subjects/cust-1", headers=bank.admin)
            assert erased.status_code == 200, erased.text
            assert search(client, bank, again) == ["cust-3"]
            assert rows_in(milvus, settings, bank.org_id) == 2
    finally:
        stop_runtime(runtime)
    # Nothing local: no index directory, no snapshot file anywhere in the home.
    assert not settings.resolved_index_dir.exists()
    assert list(settings.home.rglob("*.widx")) == []

    # A restart finds each collection and the position recorded at shutdown.
    restarted = start_runtime(settings)
    try:
        reports = restarted.health.reports
        assert {r.source for r in reports.values()} == {"snapshot"}
        assert reports[bank.org_id].count == 2
        with TestClient(create_app(settings, restarted)) as client:
            assert search(client, bank, again) == ["cust-3"]
            assert search(client, wallet, again) == ["w-1"]
    finally:
        stop_runtime(restarted)


def test_an_org_never_touches_another_orgs_collection(
    settings: Settings, milvus: MilvusClient, face_images: dict[str, bytes]
) -> None:
    runtime = start_runtime(settings)
    try:
        with TestClient(create_app(settings, runtime)) as client:
            a, b = new_org(runtime, client, "A"), new_org(runtime, client, "B")
            enroll(client, a.admin, "a-1", face_images["person3"])
            enroll(client, b.admin, "b-1", face_images["person3"])
            # With B's collection released, any request reaching it fails on the server
            # ("collection not loaded"); A's requests do not notice.
            b_collection = collection_name(settings.index_prefix, b.org_id)
            milvus.release_collection(b_collection)
            try:
                assert search(client, a, face_images["person3"]) == ["a-1"]
                enroll(client, a.admin, "a-2", face_images["person5"], duplicate_check="flag")
                refused = client.post(
                    "/v1/search",
                    headers=b.admin,
                    json={"probe": {"image": b64(face_images["person3"])}},
                )
                assert (refused.status_code, error_code(refused)) == (503, "index_unavailable")
            finally:
                milvus.load_collection(b_collection)
            assert search(client, b, face_images["person3"]) == ["b-1"]
    finally:
        stop_runtime(runtime)


class Forwarder:
    """A TCP forwarder between the service and Milvus that the test can cut: Milvus
    unreachable, as when its cluster is down, without stopping the shared server."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                inbound.close()
                continue
            outbound = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [inbound, outbound]
            for src, dst in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open = False
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self.sockets.clear()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_milvus_down_is_a_clear_503_and_loses_nothing(
    settings: Settings, milvus_uri: str, face_images: dict[str, bytes]
) -> None:
    target = urlsplit(milvus_uri)
    forwarder = Forwarder((target.hostname or "127.0.0.1", target.port or 19530))
    down = settings.model_copy(update={"index_url": f"milvus://127.0.0.1:{forwarder.port}"})
    runtime = start_runtime(down)
    try:
        with TestClient(create_app(down, runtime)) as client:
            org = new_org(runtime, client, "Outage")
            # The org's collection is made and loaded with the usual patience (seconds on a
            # busy machine); only the outage's calls give up quickly.
            enroll(client, org.admin, "before", face_images["person1"])
            runtime.indexes.timeout_s = 3.0  # type: ignore[attr-defined]  # quick 503s here
            forwarder.cut()
            probe: dict[str, Any] = {"probe": {"image": b64(face_images["person1"])}}
            refused = client.post("/v1/search", headers=org.admin, json=probe)
            assert (refused.status_code, error_code(refused)) == (503, "index_unavailable")
            # An enrollment while Milvus is down is committed to the database (the truth);
            # its index step fails with the same 503, and the retry with the key replays it.
            during = client.post(
                "/v1/subjects/during/enrollments",
                headers={**org.admin, "Idempotency-Key": "outage-1"},
                json={"frames": [b64(face_images["person5"])]},
            )
            assert during.status_code in (201, 503), during.text
            probe5 = {"probe": {"image": b64(face_images["person5"])}}
            forwarder.restore()
            # Back: 503 until the client has reconnected (gRPC backs off between attempts),
            # then the first search catches the index up from the database by position.
            deadline = time.monotonic() + 60
            while True:
                found = client.post("/v1/search", headers=org.admin, json=probe5)
                if found.status_code != 503 or time.monotonic() > deadline:
                    break
                assert error_code(found) == "index_unavailable"
                time.sleep(0.5)
            assert found.status_code == 200, found.text
            assert [c["subject_id"] for c in found.json()["candidates"]] == ["during"]
            assert search(client, org, face_images["person1"]) == ["before"]
    finally:
        forwarder.restore()
        stop_runtime(runtime)
        forwarder.close()


def test_index_rebuild_refills_milvus_from_the_database(
    settings: Settings, milvus: MilvusClient, face_images: dict[str, bytes]
) -> None:
    runtime = start_runtime(settings)
    try:
        with TestClient(create_app(settings, runtime)) as client:
            org = new_org(runtime, client, "Rebuilt")
            enroll(client, org.admin, "r-1", face_images["person0"])
            enroll(client, org.admin, "r-2", face_images["person1"])
    finally:
        stop_runtime(runtime)
    # Milvus loses a row and gains one the database never held (a cache gone wrong).
    name = collection_name(settings.index_prefix, org.org_id)
    kept = milvus.query(name, filter="id >= 0", output_fields=["id"], consistency_level="Strong")
    lost = int(kept[0]["id"])
    milvus.delete(name, filter=f"id in [{lost}]")
    stray = [1.0] + [0.0] * (runtime.pipeline.dimension - 1)
    milvus.insert(name, [{"id": 999_999, "vector": stray}])

    env = {
        "WAJAH_HOME": str(settings.home),
        "WAJAH_DATABASE_URL": settings.resolved_database_url,
        "WAJAH_MODEL_CACHE_DIR": str(settings.model_cache_dir),
        "WAJAH_ROOT_KEY": TEST_ROOT_KEY,
        "WAJAH_INDEX_URL": settings.index_url,
        "WAJAH_INDEX_PREFIX": settings.index_prefix,
    }
    result = CliRunner().invoke(cli, ["index", "rebuild", "--org", org.org_id], env=env)
    assert result.exit_code == 0, result.output
    assert f"org {org.org_id}: 2 vectors" in result.output
    ids = milvus.query(name, filter="id >= 0", output_fields=["id"], consistency_level="Strong")
    assert sorted(int(r["id"]) for r in ids) == sorted(int(r["id"]) for r in kept)

    unknown = CliRunner().invoke(cli, ["index", "rebuild", "--org", "nobody"], env=env)
    assert unknown.exit_code == 1
    assert "no org 'nobody'" in unknown.output
    embedded = CliRunner().invoke(cli, ["index", "rebuild"], env={**env, "WAJAH_INDEX_URL": ""})
    assert embedded.exit_code == 1
    assert "WAJAH_INDEX_URL is not set" in embedded.output
