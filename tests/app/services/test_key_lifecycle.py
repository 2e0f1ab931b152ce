"""The key lifecycle of an org (issue 19 item 4), on SQLite and PostgreSQL: a rotation
rewraps frames, PII, subject keys and audit details, resumes when interrupted; old versions
are retired, then destroyed, refused while anything depends on them; the reference key
rotates with re-hashing, every row verifying under its own version meanwhile."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from app.crypto import DecryptionError, EnvelopeCipher, KekState, Purpose, Scope
from app.crypto.subject_keys import subject_kek_id
from app.crypto.wire import kek_version_of
from app.errors import ConflictError, NotFoundError
from app.runtime import Runtime
from app.services import indexing, sealing
from app.services.keys import (
    Family,
    KeyInUseError,
    KeyStateConflictError,
    KeyVersionNotFoundError,
    dependents,
    destroy_kek_version,
    destroy_reference_version,
    retire_kek_version,
    rotate_org_keys,
    rotate_references,
)
from app.services.lifecycle import start_runtime, stop_runtime
from app.services.orgs import create_org
from app.services.principal import Principal, authenticate
from app.services.rights import export_subject
from app.services.sealing import pii_object_id
from app.services.subjects import CaptureBundle, enroll_subject, get_subject
from app.settings import Settings
from app.storage import audit
from app.storage.schema import enrollments, frames, subjects
from models.packs import ModelPack
from tests.app.crypto.conftest import SoftHsmToken, softhsm_token
from tests.app.services.helpers import audit_trail

__all__ = ["softhsm_token"]  # the session fixture, for the PKCS#11 test

PII = {"nik": "3171234567890123", "email": "budi@example.co.id"}


class Interrupted(Exception):
    pass


def _enrolled_org(
    runtime: Runtime, new_admin: Callable[..., Principal], faces: dict[str, bytes], n: int = 2
) -> Principal:
    admin = new_admin()
    for i in range(n):
        bundle = CaptureBundle([faces[f"person{i + 1}"]], pii=PII)
        enroll_subject(runtime, admin, f"cust-{i}", bundle)
    return admin


def _legacy_pii(runtime: Runtime, org: str, subject_id: str) -> bytes:
    """PII sealed in the org envelope, as before subject keys existed."""
    blob = EnvelopeCipher(runtime.kms).seal(
        b"old@example.co.id",
        org_id=org,
        object_id=pii_object_id(org, subject_id, "email"),
        purpose=Purpose.PII_EMAIL,
    )
    with runtime.engine.begin() as conn:
        conn.execute(
            sa.update(subjects)
            .where(subjects.c.org_id == org, subjects.c.subject_id == subject_id)
            .values(email_sealed=blob)
        )
    return blob


def _frame_rows(runtime: Runtime, org: str) -> list[Any]:
    with runtime.engine.connect() as conn:
        return conn.execute(sa.select(frames).where(frames.c.org_id == org)).all()


def _open_frames(runtime: Runtime, org: str, subject_id: str) -> list[bytes]:
    with runtime.engine.connect() as conn:
        key = sealing.subject_key_in(conn, runtime, org, subject_id)
    return [
        sealing.open_frame(
            runtime, org, key, f.id, bytes(f.wrapped_dek), runtime.objects.get(f.object_key)
        )
        for f in _frame_rows(runtime, org)
        if f.enrollment_id in _embedding_ids(runtime, org, subject_id)
    ]


def _embedding_ids(runtime: Runtime, org: str, subject_id: str) -> set[str]:
    subject = get_subject(runtime, Principal(org, "t", frozenset()), subject_id)
    return {e["embedding_id"] for b in subject["enrollments"] for e in b["embeddings"]}


def _chain_ok(runtime: Runtime, org: str) -> bool:
    with runtime.engine.connect() as conn:
        return audit.verify_chain(conn, chain_key=runtime.audit_key, chain=org).ok


def test_a_rotation_moves_everything_and_the_old_version_can_go(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = _enrolled_org(runtime, new_admin, face_images)
    org = admin.org_id
    legacy = _legacy_pii(runtime, org, "cust-1")
    frames_before = _open_frames(runtime, org, "cust-0")
    old_dek = bytes(_frame_rows(runtime, org)[0].wrapped_dek)
    audit_before = audit_trail(runtime, admin)

    report = rotate_org_keys(runtime, org)

    assert (report.kek_version, report.subject_kek_version) == (2, 2)
    assert report.rewrapped["frames"] == 2 and report.rewrapped["pii"] == 1
    assert report.rewrapped["subject_keys"] == 2
    assert report.rewrapped["audit_details"] == len(audit_before)  # keys.rotate: under v2
    assert not any(report.failed.values())
    assert dependents(runtime, org, Family.ORG, 1) == {
        "frames": 0,
        "source_documents": 0,
        "pii": 0,
        "audit_details": 0,
        "webhook_secrets": 0,
    }

    retire_kek_version(runtime, org, 1)
    retire_kek_version(runtime, org, 1, Family.SUBJECT_KEYS)
    destroy_kek_version(runtime, org, 1)
    destroy_kek_version(runtime, org, 1, Family.SUBJECT_KEYS)

    assert {i.version: i.state for i in runtime.kms.versions(org)} == {
        1: KekState.DESTROYED,
        2: KekState.PRIMARY,
    }
    # Everything still opens, under version 2 alone; the audit chain is untouched.
    assert _open_frames(runtime, org, "cust-0") == frames_before
    assert get_subject(runtime, admin, "cust-0")["pii"] == {**PII, "phone": None}
    assert export_subject(runtime, admin, "cust-1")["pii"]["email"] == "old@example.co.id"
    trail = audit_trail(runtime, admin)
    assert [e.details for e in trail[: len(audit_before)]] == [e.details for e in audit_before]
    steps = ["keys.retire"] * 2 + ["keys.destroy"] * 2 + ["subject.export"]
    assert [e.action for e in trail[-5:]] == steps
    assert _chain_ok(runtime, org)
    # A copy of what was there before (a backup) opens nothing any more.
    with pytest.raises(DecryptionError):
        runtime.kms.unwrap_dek(org, old_dek, b"any")
    with pytest.raises(DecryptionError):
        runtime.cipher.open(
            legacy,
            org_id=org,
            object_id=pii_object_id(org, "cust-1", "email"),
            purpose=Purpose.PII_EMAIL,
        )


def test_a_destroy_refused_while_rows_depend_changes_nothing(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = _enrolled_org(runtime, new_admin, face_images, n=1)
    org = admin.org_id
    runtime.kms.rotate(org)  # a new primary, nothing rewrapped yet
    left = retire_kek_version(runtime, org, 1)
    assert left["frames"] == 1 and left["audit_details"] > 0 and left["pii"] == 0
    trail = audit_trail(runtime, admin)

    with pytest.raises(KeyInUseError, match="still wraps 1 frames, .* audit_details") as err:
        destroy_kek_version(runtime, org, 1)

    assert err.value.details["dependents"]["frames"] == 1
    assert {i.version: i.state for i in runtime.kms.versions(org)} == {
        1: KekState.RETIRED,
        2: KekState.PRIMARY,
    }
    assert audit_trail(runtime, admin) == trail  # not even an audit row
    assert len(_open_frames(runtime, org, "cust-0")) == 1


def test_an_interrupted_rotation_resumes_where_it_stopped(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = _enrolled_org(runtime, new_admin, face_images, n=3)
    org = admin.org_id
    seen: list[tuple[str, int, int]] = []

    def crash_after_one_batch(what: str, done: int, total: int) -> None:
        seen.append((what, done, total))
        if what == "frames" and done == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        rotate_org_keys(runtime, org, batch=1, progress=crash_after_one_batch)
    assert sorted(kek_version_of(bytes(f.wrapped_dek)) for f in _frame_rows(runtime, org)) == [
        1,
        1,
        2,
    ]
    assert seen == [("frames", 0, 3), ("frames", 1, 3)]

    report = rotate_org_keys(runtime, org, resume=True, batch=1)

    assert report.kek_version == 2 and report.rewrapped["frames"] == 2  # the one done is skipped
    assert {f.kek_version for f in _frame_rows(runtime, org)} == {2}
    assert all(n == 0 for n in dependents(runtime, org, Family.ORG, 1).values())
    again = rotate_org_keys(runtime, org, resume=True)
    assert not any(again.rewrapped.values())
    assert [e.action for e in audit_trail(runtime, admin)].count("keys.rotate") == 1


def test_bad_input_is_refused_clearly_and_changes_nothing(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    org = new_admin().org_id
    other = new_admin().org_id
    runtime.kms.rotate(org)
    with pytest.raises(NotFoundError, match="no org 'org_nope'"):
        rotate_org_keys(runtime, "org_nope")
    with pytest.raises(NotFoundError, match="no org"):
        retire_kek_version(runtime, "'; DROP TABLE orgs; --", 1)
    with pytest.raises(KeyVersionNotFoundError, match=r"no org KEK version 9 \(versions 1..2\)"):
        retire_kek_version(runtime, org, 9)
    with pytest.raises(KeyStateConflictError, match="primary .* rotate first"):
        retire_kek_version(runtime, org, 2)
    with pytest.raises(KeyStateConflictError, match="primary"):
        destroy_kek_version(runtime, org, 2)
    with pytest.raises(KeyStateConflictError, match="not retired: retire it first"):
        destroy_kek_version(runtime, org, 1)
    with pytest.raises(KeyVersionNotFoundError, match="no subject-key KEK"):
        retire_kek_version(runtime, org, 1, Family.SUBJECT_KEYS)  # no subject enrolled yet
    with pytest.raises(KeyVersionNotFoundError):
        destroy_reference_version(runtime, org, 5)
    with pytest.raises(KeyStateConflictError, match="primary reference key"):
        destroy_reference_version(runtime, org, 1)
    with pytest.raises(NotFoundError, match="system log has no reference key"):
        rotate_references(runtime, "_system")
    with pytest.raises(ValueError, match="batch"):
        rotate_org_keys(runtime, org, batch=0)
    assert [i.state for i in runtime.kms.versions(org)] == [KekState.ENABLED, KekState.PRIMARY]
    assert runtime.kms.primary_version(other) == 1  # another org's keys are untouched


def test_the_system_log_rotates_its_audit_details(runtime: Runtime) -> None:
    report = rotate_org_keys(runtime, "_system")
    assert report.subject_kek_version is None and set(report.rewrapped) == {
        "frames",
        "pii",
        "audit_details",
    }
    assert dependents(runtime, "_system", Family.ORG, report.kek_version - 1)["audit_details"] == 0


def _hashed_refs(runtime: Runtime, org: str) -> dict[str, bytes]:
    with runtime.engine.connect() as conn:
        rows = conn.execute(
            sa.select(enrollments.c.id, enrollments.c.hashed_ref).where(enrollments.c.org_id == org)
        ).all()
    return {r.id: bytes(r.hashed_ref) for r in rows}


def _intact(runtime: Runtime, org: str) -> dict[str, bool]:
    with runtime.engine.connect() as conn:
        rows = conn.execute(sa.select(enrollments).where(enrollments.c.org_id == org)).all()
    return {r.id: indexing.intact_vector(runtime, org, r) is not None for r in rows}


def test_the_reference_key_rotates_with_rehashing(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = _enrolled_org(runtime, new_admin, face_images, n=3)
    org = admin.org_id
    before = _hashed_refs(runtime, org)

    def stop_after_one(what: str, done: int, total: int) -> None:
        if done == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        rotate_references(runtime, org, batch=1, progress=stop_after_one)
    midway = _hashed_refs(runtime, org)
    assert sorted(len(ref) for ref in midway.values()) == [32, 32, 36]
    assert all(_intact(runtime, org).values())  # either version verifies mid-rotation
    with pytest.raises(KeyInUseError, match="still hashes 2 enrollments"):
        destroy_reference_version(runtime, org, 1)

    report = rotate_references(runtime, org, resume=True)
    assert report.reference_version == 2 and report.rehashed["enrollments"] == 2
    destroy_reference_version(runtime, org, 1)

    after = _hashed_refs(runtime, org)
    assert all(len(ref) == 36 and ref != before[i] for i, ref in after.items())
    assert all(_intact(runtime, org).values())
    assert indexing.catch_up_org(runtime, org) >= 0
    embeddings = [
        e for b in get_subject(runtime, admin, "cust-0")["enrollments"] for e in b["embeddings"]
    ]
    assert [e["integrity"] for e in embeddings] == ["ok"]
    actions = [e.action for e in audit_trail(runtime, admin)]
    assert "keys.rotate_references" in actions and actions[-1] == "keys.destroy_reference"


def test_a_tampered_reference_is_not_laundered_by_the_rehash(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = _enrolled_org(runtime, new_admin, face_images, n=2)
    org = admin.org_id
    victim = sorted(_hashed_refs(runtime, org))[0]
    with runtime.engine.begin() as conn:
        row = conn.execute(sa.select(enrollments).where(enrollments.c.id == victim)).one()
        vector = np.frombuffer(bytes(row.vector), dtype="<f4").copy()
        vector[0] += 0.25  # an edit behind the service's back
        conn.execute(
            sa.update(enrollments)
            .where(enrollments.c.id == victim)
            .values(vector=vector.astype("<f4").tobytes())
        )

    report = rotate_references(runtime, org)

    assert report.tampered["enrollments"] == [victim] and report.rehashed["enrollments"] == 1
    destroy_reference_version(runtime, org, 1)  # a tampered row does not hold it up
    assert _intact(runtime, org)[victim] is False


def test_subject_key_versions_are_retired_and_destroyed_apart(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = _enrolled_org(runtime, new_admin, face_images, n=1)
    org = admin.org_id
    sealing.keyring(runtime).rotate(org)
    retire_kek_version(runtime, org, 1, Family.SUBJECT_KEYS)
    with pytest.raises(KeyInUseError, match="subject-keys KEK version 1 .* 1 subject_keys"):
        destroy_kek_version(runtime, org, 1, Family.SUBJECT_KEYS)
    rotate_org_keys(runtime, org, resume=True)
    destroy_kek_version(runtime, org, 1, Family.SUBJECT_KEYS)
    states = {i.version: i.state for i in runtime.kms.versions(subject_kek_id(org))}
    assert states == {1: KekState.DESTROYED, 2: KekState.PRIMARY}
    assert get_subject(runtime, admin, "cust-0")["pii"]["nik"] == PII["nik"]


def test_one_rotation_per_org_at_a_time(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serves one process: feed.exclusive always holds")
    admin = _enrolled_org(runtime, new_admin, face_images, n=1)
    org = admin.org_id
    from app.storage import feed

    with feed.exclusive(runtime.engine, f"rewrap:{org}") as mine:
        assert mine
        with pytest.raises(ConflictError, match="running elsewhere"):
            rotate_org_keys(runtime, org)
        with pytest.raises(ConflictError, match="running elsewhere"):
            destroy_kek_version(runtime, org, 1)
    assert runtime.kms.primary_version(org) == 1


@pytest.mark.softhsm
def test_the_whole_lifecycle_on_pkcs11(
    tmp_path: Path,
    default_pack: ModelPack,
    softhsm_token: SoftHsmToken,
    face_images: dict[str, bytes],
) -> None:
    """The KEKs and reference keys live in the token (SoftHSM2): a destroyed version is gone
    from it, and nothing under it opens; everything rewrapped does."""
    settings = Settings(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'wajah.db'}",
        model_cache_dir=default_pack.directory.parent,
        kms_backend="pkcs11",
        pkcs11_module=Path(softhsm_token.module),
        pkcs11_token_label=softhsm_token.label,
        pkcs11_pin=softhsm_token.pin,  # type: ignore[arg-type]
        inference_workers=1,
    )
    runtime = start_runtime(settings, serving=False)
    try:
        org, key = create_org(runtime, "HSM Bank")
        admin = authenticate(runtime, key.plaintext, Scope.ADMIN)
        enroll_subject(runtime, admin, "c1", CaptureBundle([face_images["person1"]], pii=PII))
        old_dek = bytes(_frame_rows(runtime, org)[0].wrapped_dek)
        frames_before = _open_frames(runtime, org, "c1")

        report = rotate_org_keys(runtime, org)
        assert report.rewrapped["frames"] == 1 and not any(report.failed.values())
        retire_kek_version(runtime, org, 1)
        destroy_kek_version(runtime, org, 1)
        rotate_references(runtime, org)
        destroy_reference_version(runtime, org, 1)

        with pytest.raises(DecryptionError):
            runtime.kms.unwrap_dek(org, old_dek, b"any")
        assert _open_frames(runtime, org, "c1") == frames_before
        assert get_subject(runtime, admin, "c1")["pii"]["nik"] == PII["nik"]
        assert all(_intact(runtime, org).values())
        # Every audit row opens (details from before the rotation through audit_detail_keys).
        assert audit_trail(runtime, admin)[-1].action == "keys.destroy_reference"
        assert _chain_ok(runtime, org)
    finally:
        stop_runtime(runtime)
