"""Erasure that holds against copies: the shred destroys what could open a backup copy of an
erased subject's key, and a root-key rotation leaves older keyring copies unopenable."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.crypto import (
    DecryptionError,
    EnvelopeCipher,
    KekState,
    LocalKeyring,
    Purpose,
    RootKey,
    RootKeyError,
)
from app.crypto.subject_keys import SubjectKeyring, subject_kek_id
from app.runtime import Runtime
from app.services.principal import Principal
from app.services.rights import export_subject, rectify_subject, shred_erasures
from app.services.sealing import pii_object_id
from app.services.subjects import CaptureBundle, enroll_subject, erase_subject, get_subject
from app.storage.schema import erasure_log, subject_keys, subjects
from tests.app.services.helpers import audit_trail

PII = {"nik": "3171234567890123", "email": "budi@example.co.id"}


def backup_copy(runtime: Runtime, org_id: str, subject_id: str) -> tuple[bytes, bytes]:
    """What a database backup holds of a subject: its wrapped key and its sealed NIK."""
    with runtime.engine.connect() as conn:
        key = conn.execute(
            sa.select(subject_keys.c.wrapped_key).where(
                subject_keys.c.org_id == org_id, subject_keys.c.subject_id == subject_id
            )
        ).scalar_one()
        nik = conn.execute(
            sa.select(subjects.c.nik_sealed).where(
                subjects.c.org_id == org_id, subjects.c.subject_id == subject_id
            )
        ).scalar_one()
    return bytes(key), bytes(nik)


def test_after_the_shred_a_backup_copy_of_an_erased_subject_opens_nothing(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    org = admin.org_id
    enroll_subject(runtime, admin, "gone", CaptureBundle([face_images["person0"]], pii=PII))
    enroll_subject(runtime, admin, "kept", CaptureBundle([face_images["person1"]], pii=PII))
    wrapped, nik = backup_copy(runtime, org, "gone")
    keyring = SubjectKeyring(runtime.kms)
    # Before the shred the copy still opens: that is what the shred is for.
    copy_key = keyring.open_key(org, "gone", wrapped)
    object_id = pii_object_id(org, "gone", "nik")
    assert copy_key.open(nik, object_id=object_id, purpose=Purpose.PII_NIK) == PII["nik"].encode()

    erase_subject(runtime, admin, "gone")
    destroyed = shred_erasures(runtime)

    assert destroyed[org] == [1]
    with pytest.raises(DecryptionError):
        keyring.open_key(org, "gone", wrapped)
    assert [v.state for v in runtime.kms.versions(subject_kek_id(org))] == [
        KekState.DESTROYED,
        KekState.PRIMARY,
    ]
    # The live subject lost nothing: its key was rewrapped under the new version first.
    assert get_subject(runtime, admin, "kept")["pii"] == {**PII, "phone": None}
    with runtime.engine.connect() as conn:
        versions = conn.execute(
            sa.select(subject_keys.c.kek_version).where(subject_keys.c.org_id == org)
        ).scalars()
        assert list(versions) == [2]
        shredded = conn.execute(
            sa.select(erasure_log.c.shredded_at).where(erasure_log.c.org_id == org)
        ).scalar_one()
    assert shredded is not None
    shred = audit_trail(runtime, admin)[-1]
    assert (shred.action, shred.details["subject_kek_versions_destroyed"]) == ("keys.shred", [1])
    # Nothing pending: the next round leaves the org alone.
    assert org not in shred_erasures(runtime)


def test_rectify_and_export_of_a_subject_from_before_subject_keys(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    """A subject whose PII was sealed under the org KEK (before migration 0006) still reads,
    and a rectification moves every field it keeps under a subject key of its own."""
    admin = new_admin()
    org = admin.org_id
    enroll_subject(runtime, admin, "old", CaptureBundle([face_images["person2"]]))
    legacy = EnvelopeCipher(runtime.kms).seal(
        PII["nik"].encode(),
        org_id=org,
        object_id=pii_object_id(org, "old", "nik"),
        purpose=Purpose.PII_NIK,
    )
    with runtime.engine.begin() as conn:
        conn.execute(
            sa.update(subjects)
            .where(subjects.c.org_id == org, subjects.c.subject_id == "old")
            .values(nik_sealed=legacy)
        )
    assert export_subject(runtime, admin, "old")["pii"]["nik"] == PII["nik"]

    rectify_subject(runtime, admin, "old", {"email": PII["email"]})

    assert get_subject(runtime, admin, "old")["pii"] == {**PII, "phone": None}
    _, nik = backup_copy(runtime, org, "old")
    assert nik[0] == 0x02  # resealed under the subject key


def test_a_keyring_copy_taken_before_a_destroy_and_root_rotation_opens_nothing(
    tmp_path: Path,
) -> None:
    old_root = RootKey(bytes(range(32)), source="test")
    new_root = RootKey(bytes(range(32, 64)), source="test")
    live = LocalKeyring(tmp_path / "keys", old_root)
    live.create_org("org-a")
    subject_keys_ = SubjectKeyring(live)
    _, erased_wrapped, _ = subject_keys_.new_key("org-a", "gone")
    _, kept_wrapped, _ = subject_keys_.new_key("org-a", "kept")
    frame = EnvelopeCipher(live).seal(b"frame", org_id="org-a", object_id="f1", purpose="frame")
    shutil.copytree(tmp_path / "keys", tmp_path / "backup-keys")  # a backup's keyring copy

    # The shred (erasure of "gone"), then the root-key rotation.
    version = subject_keys_.rotate("org-a")
    kept_wrapped, _ = subject_keys_.rewrap("org-a", "kept", kept_wrapped)
    assert subject_keys_.destroy_below("org-a", version) == [1]
    assert live.rotate_root(new_root) == 4  # two KEKs and two reference keys

    # The live keyring opens what it should under the new root, and never the erased key.
    reopened = LocalKeyring(tmp_path / "keys", new_root)
    assert (
        EnvelopeCipher(reopened).open(frame, org_id="org-a", object_id="f1", purpose="frame")
        == b"frame"
    )
    SubjectKeyring(reopened).open_key("org-a", "kept", kept_wrapped)
    with pytest.raises(DecryptionError):
        SubjectKeyring(reopened).open_key("org-a", "gone", erased_wrapped)
    with pytest.raises(RootKeyError):
        LocalKeyring(tmp_path / "keys", old_root)
    # The old copy does not open under the root key in use...
    with pytest.raises(RootKeyError):
        LocalKeyring(tmp_path / "backup-keys", new_root)
    # ...only under the old root key, which is why the README says to destroy it.
    stale = LocalKeyring(tmp_path / "backup-keys", old_root)
    SubjectKeyring(stale).open_key("org-a", "gone", erased_wrapped)


def test_rotate_root_refuses_the_same_key(tmp_path: Path) -> None:
    root = RootKey(bytes(range(32)), source="test")
    keyring = LocalKeyring(tmp_path / "keys", root)
    keyring.create_org("org-a")
    before = (tmp_path / "keys" / "keyring.json").read_bytes()
    with pytest.raises(Exception, match="current one"):
        keyring.rotate_root(RootKey(bytes(range(32)), source="again"))
    assert (tmp_path / "keys" / "keyring.json").read_bytes() == before
