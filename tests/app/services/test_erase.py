"""`erase_subject` (right to erasure): out of every match at once, frames and PII
crypto-shredded, and a receipt whose SHA-256 the audit log records."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import pytest

from app.errors import SubjectErasedError, SubjectNotFoundError
from app.runtime import Runtime
from app.services.matching import Probe, search_probe, verify_probe
from app.services.principal import Principal
from app.services.subjects import CaptureBundle, enroll_subject, erase_subject, get_subject
from tests.app.services.helpers import audit_trail, frame_object_keys, recapture

PII = {"nik": "3171234567890123", "email": "budi@example.co.id", "phone": "+6281234567890"}


def canonical_sha256(receipt: dict[str, object]) -> str:
    canonical = {k: v for k, v in receipt.items() if k not in ("receipt_sha256", "audit_id")}
    return hashlib.sha256(
        json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def test_the_receipt_counts_what_was_shredded_and_hashes_its_canonical_json(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    face = face_images["person1"]
    enroll_subject(runtime, admin, "gone", CaptureBundle([face, recapture(face)], pii=PII))
    enroll_subject(runtime, admin, "gone", CaptureBundle([recapture(face, 0.9)]))

    receipt = erase_subject(runtime, admin, "gone")

    assert {k: v for k, v in receipt.items() if k not in ("receipt_sha256", "audit_id")} == {
        "subject_id": "gone",
        "org_id": admin.org_id,
        "erased_at": receipt["erased_at"],
        "embeddings_erased": 3,
        "frames_shredded": 3,
        "source_documents_deleted": 0,
        "pii_shredded": ["nik", "email", "phone"],
        "watchlist_entries_withdrawn": 0,
        "subject_key_destroyed": True,
        "idempotency_records_deleted": 0,
    }
    assert receipt["receipt_sha256"] == canonical_sha256(receipt)
    audited = audit_trail(runtime, admin)[-1]
    assert (audited.id, audited.action, audited.target) == (
        receipt["audit_id"],
        "subject.erase",
        "gone",
    )
    assert audited.details == {k: v for k, v in receipt.items() if k != "audit_id"}


def test_an_erased_subject_is_out_of_every_match_and_its_frames_are_gone(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    face = face_images["person1"]
    gone = enroll_subject(runtime, admin, "gone", CaptureBundle([face, recapture(face)], pii=PII))
    enroll_subject(runtime, admin, "stays", CaptureBundle([face_images["person3"]]))
    object_keys = frame_object_keys(runtime, admin.org_id, gone)
    assert [runtime.objects.exists(k) for k in object_keys] == [True, True]

    erase_subject(runtime, admin, "gone")

    probe = Probe(image=recapture(face, 0.9))
    assert search_probe(runtime, admin, probe)["candidates"] == []
    stays = search_probe(runtime, admin, Probe(image=face_images["person3"]))["candidates"]
    assert [c["subject_id"] for c in stays] == ["stays"]
    with pytest.raises(SubjectNotFoundError):
        verify_probe(runtime, admin, "gone", probe)
    assert [runtime.objects.exists(k) for k in object_keys] == [False, False]
    view = get_subject(runtime, admin, "gone")
    assert (view["status"], view["pii"]) == ("erased", {"nik": None, "email": None, "phone": None})
    assert [e["integrity"] for b in view["enrollments"] for e in b["embeddings"]] == ["erased"] * 2
    with pytest.raises(SubjectErasedError):
        erase_subject(runtime, admin, "gone")


def test_another_orgs_subject_cannot_be_erased(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    bank, other_bank = new_admin("Bank"), new_admin("Other Bank")
    enroll_subject(runtime, bank, "cust-1", CaptureBundle([face_images["person2"]]))

    with pytest.raises(SubjectNotFoundError):
        erase_subject(runtime, other_bank, "cust-1")

    assert get_subject(runtime, bank, "cust-1")["status"] == "active"
