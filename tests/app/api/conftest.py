"""Fixtures for API tests: one started `Runtime` per database backend for the whole session.

Orgs share nothing, so every test creates its own org(s) through `new_org` and never sees
another test's data. The service runs with the real default model pack, a real local
keyring, a real object store directory and a real SQLite file or PostgreSQL schema.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from app.crypto import Scope
from app.main import create_app
from app.runtime import Runtime
from app.services.lifecycle import start_runtime, stop_runtime
from app.services.orgs import create_org, issue_api_key
from app.services.principal import Principal
from app.settings import Settings
from models.packs import ModelPack
from models.prepare import DEFAULT_PACK_ID
from tests.conftest import BACKENDS

TEST_ROOT_KEY = base64.b64encode(bytes(range(32))).decode()


def api_settings(home: Path, database_url: str, models_dir: Path) -> Settings:
    return Settings(
        home=home,
        database_url=database_url,
        model_cache_dir=models_dir,
        root_key=TEST_ROOT_KEY,  # type: ignore[arg-type]
        inference_workers=2,
        # Suites fire requests back to back with one key; test_admission turns it on.
        rate_limit_per_second=0,
        # Webhook receivers in the tests listen on loopback; tests of the refusal turn it off.
        webhooks_allow_private=True,
        # Tests drive delivery rounds themselves (`webhook_delivery.deliver_due`).
        webhooks_worker=False,
    )


@pytest.fixture(scope="session", params=BACKENDS)
def backend_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('api-db') / 'wajah.db'}"
        return
    base: URL = request.getfixturevalue("postgres_database")
    schema = f"api_{secrets.token_hex(6)}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    admin.dispose()
    yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@pytest.fixture(scope="session")
def runtime(
    backend_url: str, tmp_path_factory: pytest.TempPathFactory, default_pack: ModelPack
) -> Iterator[Runtime]:
    assert default_pack.model_id == DEFAULT_PACK_ID
    models_dir = default_pack.directory.parent
    home = tmp_path_factory.mktemp("api-home")
    started = start_runtime(api_settings(home, backend_url, models_dir))
    yield started
    stop_runtime(started)


@pytest.fixture()
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime.settings, runtime)) as test_client:
        yield test_client


@dataclass
class Org:
    org_id: str
    admin_key: str
    runtime: Runtime

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def key(self, *scopes: Scope) -> dict[str, str]:
        principal = Principal(self.org_id, "test", frozenset({Scope.ADMIN}))
        issued = issue_api_key(self.runtime, principal, "test key", list(scopes), None)
        return {"Authorization": f"Bearer {issued.plaintext}"}


@pytest.fixture()
def new_org(runtime: Runtime) -> Callable[[], Org]:
    def make(name: str = "Test Bank") -> Org:
        org_id, key = create_org(runtime, name)
        return Org(org_id, key.plaintext, runtime)

    return make


@pytest.fixture(scope="session")
def face_images(group_photo_path: Path, single_face_path: Path) -> dict[str, bytes]:
    """Single-face JPEG captures of the six people of t1.jpg, left to right, plus Tom Hanks.

    Each crop holds one face with some margin; `person0`..`person5`. `person4` looks away
    (yaw ≈ 90°) and is refused by the default pose gate; the others pass it.
    """
    import cv2

    from models.imaging import encode_jpeg

    image = cv2.imread(str(group_photo_path))
    boxes = [  # x1, y1, x2, y2 of each face in t1.jpg (left to right)
        (52, 265, 171, 400),
        (270, 146, 370, 276),
        (462, 265, 576, 417),
        (750, 346, 845, 472),
        (899, 57, 1005, 197),
        (1132, 274, 1228, 399),
    ]
    captures: dict[str, bytes] = {}
    for n, (x1, y1, x2, y2) in enumerate(boxes):
        mx, my = (x2 - x1) // 3, (y2 - y1) // 3
        crop = image[max(0, y1 - my) : y2 + my, max(0, x1 - mx) : x2 + mx]
        captures[f"person{n}"] = encode_jpeg(crop, 92)
    captures["tom"] = single_face_path.read_bytes()
    return captures
