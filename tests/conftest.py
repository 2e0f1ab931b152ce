"""Shared fixtures: the real face images that ship inside the insightface wheel."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import insightface
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

INSIGHTFACE_IMAGES = Path(insightface.__file__).parent / "data" / "images"

POSTGRES_URL = os.environ.get(
    "WAJAH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# Every database-backed suite runs on both stores; the PostgreSQL case is marked.
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[URL]:
    """A fresh database for this test run on the local server; dropped afterwards."""
    admin_url = make_url(POSTGRES_URL)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"wajah_test_{secrets.token_hex(6)}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        # CI sets WAJAH_REQUIRE_POSTGRES=1 so a missing server fails the run; on a laptop
        # without PostgreSQL the `postgres` tests are skipped with the reason.
        if not os.environ.get("WAJAH_REQUIRE_POSTGRES"):
            pytest.skip(f"PostgreSQL at {admin_url.render_as_string()} is not reachable")
        pytest.fail(
            f"PostgreSQL at {admin_url.render_as_string()} is not reachable ({exc.orig}); "
            "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) "
            "main start"
        )
    try:
        yield admin_url.set(database=name)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Milvus server (the `milvus` extra's 2.3.5 standalone) for this test run."""
    from tests import milvus_server

    try:
        import pymilvus  # noqa: F401

        server = milvus_server.running_server(tmp_path_factory.mktemp("milvus"))
        uri = server.__enter__()
    except Exception as exc:  # ImportError, a port or start-up failure: say which
        if not milvus_server.required():
            pytest.skip(
                f"no Milvus server for the `milvus` tests ({exc!r}); "
                'install them with pip install -c requirements.lock -e ".[test,milvus]"'
            )
        pytest.fail(f"the Milvus test server did not start: {exc!r}")
    try:
        yield uri
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(scope="session")
def group_photo_path() -> Path:
    """t1.jpg: a group photo of six people."""
    return INSIGHTFACE_IMAGES / "t1.jpg"


@pytest.fixture(scope="session")
def single_face_path() -> Path:
    """Tom_Hanks_54745.png: one face."""
    return INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private model cache for this test run (the default pack is prepared into it once)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def default_pack(models_dir: Path):  # type: ignore[no-untyped-def]
    from models.prepare import prepare_default_pack

    return prepare_default_pack(models_dir)


@pytest.fixture(scope="session")
def pipeline(default_pack):  # type: ignore[no-untyped-def]
    from models.pipeline import FacePipeline

    return FacePipeline.load(default_pack)
