"""A database restored from a backup is behind the index snapshots a replica kept: the
replica must rebuild from the database, never trust a snapshot from the database's future."""

from __future__ import annotations

import shutil
from pathlib import Path

from app.crypto import Scope
from app.services import indexing
from app.services.lifecycle import start_runtime, stop_runtime
from app.services.matching import Probe, search_probe
from app.services.orgs import create_org
from app.services.principal import Principal
from app.services.subjects import CaptureBundle, enroll_subject
from models.packs import ModelPack
from tests.app.api.conftest import api_settings


def test_a_snapshot_ahead_of_a_restored_database_is_rebuilt(
    tmp_path: Path, default_pack: ModelPack, face_images: dict[str, bytes]
) -> None:
    database = tmp_path / "wajah.db"
    settings = api_settings(
        tmp_path / "home", f"sqlite:///{database}", default_pack.directory.parent
    )
    runtime = start_runtime(settings)
    try:
        org_id, _ = create_org(runtime, "Bank")
        principal = Principal(org_id, "test", frozenset({Scope.ADMIN}))
        enroll_subject(runtime, principal, "before", CaptureBundle([face_images["person0"]]))
    finally:
        stop_runtime(runtime)
    shutil.copy(database, tmp_path / "backup.db")  # the server is down: a consistent copy

    runtime = start_runtime(settings)
    try:
        enroll_subject(runtime, principal, "after", CaptureBundle([face_images["person2"]]))
    finally:
        stop_runtime(runtime)  # its snapshot now holds both enrollments
    shutil.copy(tmp_path / "backup.db", database)  # restore

    runtime = start_runtime(settings)
    try:
        assert runtime.health.reports[org_id].source == "rebuild"
        assert indexing.org_index(runtime, org_id).count == 1
        assert runtime.positions[org_id] == 1
        found = search_probe(runtime, principal, Probe(image=face_images["person2"]), top_k=5)
        assert (found["candidates"], found["gallery_size"]) == ([], 1)
    finally:
        stop_runtime(runtime)
