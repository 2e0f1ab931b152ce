"""Promise 3: an embedding edited in the database is detected by its hashed reference and
kept out of every match, and says so (readiness, subject view)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from app.crypto import Scope
from app.errors import ConflictError
from app.services import indexing
from app.services.lifecycle import start_runtime, stop_runtime
from app.services.matching import Probe, search_probe, verify_probe
from app.services.orgs import create_org
from app.services.principal import Principal
from app.services.subjects import CaptureBundle, enroll_subject, get_subject
from app.settings import Settings
from app.storage.schema import enrollments
from models.packs import ModelPack
from tests.app.api.conftest import api_settings


def test_a_tampered_embedding_is_kept_out_of_every_match(
    tmp_path: Path, default_pack: ModelPack, face_images: dict[str, bytes]
) -> None:
    settings = api_settings(
        tmp_path / "home", f"sqlite:///{tmp_path / 'wajah.db'}", default_pack.directory.parent
    )
    runtime = start_runtime(settings)
    try:
        org_id, _ = create_org(runtime, "Bank")
        principal = Principal(org_id, "test", frozenset({Scope.ADMIN}))
        enroll_subject(runtime, principal, "honest", CaptureBundle([face_images["person0"]]))
        enroll_subject(runtime, principal, "edited", CaptureBundle([face_images["person2"]]))
    finally:
        stop_runtime(runtime)

    # Someone with database access nudges one stored vector (still unit length, so only the
    # keyed hash can tell).
    engine = sa.create_engine(settings.resolved_database_url)
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(enrollments.c.id, enrollments.c.vector).where(
                enrollments.c.frame_index == 0,
                enrollments.c.subject_pk.in_(
                    sa.text("SELECT id FROM subjects WHERE subject_id = 'edited'")
                ),
            )
        ).one()
        vector = np.frombuffer(row.vector, "<f4").copy()
        vector[:2] = vector[1::-1]  # swap two components
        conn.execute(
            sa.update(enrollments)
            .where(enrollments.c.id == row.id)
            .values(vector=vector.astype("<f4").tobytes())
        )
    engine.dispose()

    # With the index snapshot the server wrote at shutdown, the index still holds the vector
    # as enrolled; the edited row is caught when it is read. Without it (a rebuild), it is
    # caught at load and never enters the index.
    for rebuild in (False, True):
        if rebuild:
            for snapshot in settings.resolved_index_dir.iterdir():
                snapshot.unlink()
        _check(settings, org_id, row.id, face_images, caught_at_load=rebuild)


def _check(
    settings: Settings,
    org_id: str,
    row_id: str,
    face_images: dict[str, bytes],
    caught_at_load: bool,
) -> None:
    runtime = start_runtime(settings)
    try:
        assert runtime.health.tampered == ([row_id] if caught_at_load else [])
        assert indexing.org_index(runtime, org_id).count == (1 if caught_at_load else 2)
        principal = Principal(org_id, "test", frozenset({Scope.ADMIN}))
        view = get_subject(runtime, principal, "edited")
        assert [e["integrity"] for b in view["enrollments"] for e in b["embeddings"]] == [
            "tampered"
        ]
        with pytest.raises(ConflictError):
            verify_probe(runtime, principal, "edited", Probe(image=face_images["person2"]))
        found = search_probe(runtime, principal, Probe(image=face_images["person2"]), top_k=5)
        assert [c["subject_id"] for c in found["candidates"]] == []
        honest = verify_probe(runtime, principal, "honest", Probe(image=face_images["person0"]))
        assert honest["decision"] == "match"
    finally:
        stop_runtime(runtime)
