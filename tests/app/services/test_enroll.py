"""`enroll_subject`: a capture bundle becomes one enrollment, one embedding per accepted frame,
each frame sealed; a refused bundle changes nothing."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

from app.errors import (
    DuplicateFaceError,
    NoUsableFrameError,
    SubjectErasedError,
    SubjectNotFoundError,
    TooManyFramesError,
)
from app.runtime import Runtime
from app.services.principal import Principal
from app.services.subjects import (
    CaptureBundle,
    enroll_subject,
    erase_subject,
    get_subject,
    list_subjects,
)
from tests.app.services.helpers import (
    audit_trail,
    blank_frame,
    frame_object_keys,
    recapture,
    stored_objects,
)

HMAC_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def test_two_genuine_frames_of_one_person_make_one_enrollment_with_two_embeddings(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    face = face_images["person0"]

    result = enroll_subject(runtime, admin, "cust-1", CaptureBundle([face, recapture(face)]))

    assert (result.subject_id, result.subject_created) == ("cust-1", True)
    assert (result.model_id, result.threshold) == (runtime.model_id, runtime.pipeline.threshold)
    assert [(f.index, f.accepted, f.error) for f in result.frames] == [
        (0, True, None),
        (1, True, None),
    ]
    embedding_ids = [f.embedding_id for f in result.frames]
    references = [f.hashed_reference for f in result.frames]
    assert len(set(embedding_ids)) == 2
    assert all(r is not None and HMAC_SHA256_HEX.fullmatch(r) for r in references)
    assert len(set(references)) == 2
    assert (result.duplicate_check, result.duplicates, result.watchlist_hits) == ("off", [], None)

    # Read back: one enrollment (the bundle) holding both embeddings, each intact.
    view = get_subject(runtime, admin, "cust-1")
    assert (view["subject_id"], view["status"]) == ("cust-1", "active")
    assert [
        (bundle["enrollment_id"], bundle["status"], bundle["model_id"])
        for bundle in view["enrollments"]
    ] == [(result.enrollment_id, "active", runtime.model_id)]
    assert [
        (e["embedding_id"], e["frame_index"], e["hashed_reference"], e["integrity"])
        for e in view["enrollments"][0]["embeddings"]
    ] == [
        (embedding_ids[0], 0, references[0], "ok"),
        (embedding_ids[1], 1, references[1], "ok"),
    ]
    page, next_cursor = list_subjects(runtime, admin)
    assert [(s["subject_id"], s["active_embeddings"]) for s in page] == [("cust-1", 2)]
    assert next_cursor is None
    assert len(frame_object_keys(runtime, admin.org_id, result)) == 2

    created = audit_trail(runtime, admin)[-1]
    assert (created.action, created.target, created.actor) == (
        "enrollment.create",
        result.enrollment_id,
        admin.actor,
    )
    assert (created.details["subject_id"], created.details["embeddings"]) == ("cust-1", 2)


def test_a_frame_without_a_face_is_reported_per_frame_while_the_good_frame_is_enrolled(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()

    result = enroll_subject(
        runtime, admin, "cust-1", CaptureBundle([blank_frame(), face_images["person2"]])
    )

    blank, good = result.frames
    assert (blank.index, blank.accepted, blank.embedding_id, blank.hashed_reference) == (
        0,
        False,
        None,
        None,
    )
    assert blank.error is not None and blank.error["code"] == "no_face"
    assert (good.index, good.accepted, good.error) == (1, True, None)
    assert good.quality is not None and good.quality["passed"] is True
    view = get_subject(runtime, admin, "cust-1")
    assert [
        (e["embedding_id"], e["frame_index"])
        for bundle in view["enrollments"]
        for e in bundle["embeddings"]
    ] == [(good.embedding_id, 1)]
    assert len(frame_object_keys(runtime, admin.org_id, result)) == 1


def test_a_bundle_in_which_no_frame_passes_raises_and_writes_nothing(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    trail, objects = audit_trail(runtime, admin), stored_objects(runtime)
    looking_away = face_images["person4"]  # yaw ≈ 90°: refused by the pose gate

    with pytest.raises(NoUsableFrameError) as refused:
        enroll_subject(runtime, admin, "cust-1", CaptureBundle([blank_frame(), looking_away]))

    assert [
        (f["index"], f["accepted"], f["error"]["code"]) for f in refused.value.details["frames"]
    ] == [
        (0, False, "no_face"),
        (1, False, "extreme_pose"),
    ]
    with pytest.raises(SubjectNotFoundError):
        get_subject(runtime, admin, "cust-1")
    assert list_subjects(runtime, admin) == ([], None)
    assert audit_trail(runtime, admin) == trail
    assert stored_objects(runtime) == objects


def test_more_frames_than_the_limit_are_refused_before_any_inference(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    limit = runtime.settings.max_frames_per_request
    trail = audit_trail(runtime, admin)

    with pytest.raises(TooManyFramesError) as refused:
        enroll_subject(
            runtime, admin, "cust-1", CaptureBundle([face_images["person0"]] * (limit + 1))
        )

    assert refused.value.message == f"{limit + 1} frames; at most {limit}"
    assert list_subjects(runtime, admin) == ([], None)
    assert audit_trail(runtime, admin) == trail


def test_an_erased_subject_cannot_be_enrolled_again(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    face = face_images["person1"]
    enroll_subject(runtime, admin, "cust-1", CaptureBundle([face]))
    erase_subject(runtime, admin, "cust-1")
    trail = audit_trail(runtime, admin)

    with pytest.raises(SubjectErasedError):
        enroll_subject(runtime, admin, "cust-1", CaptureBundle([recapture(face)]))

    assert audit_trail(runtime, admin) == trail
    page, _ = list_subjects(runtime, admin)
    assert [(s["subject_id"], s["status"], s["active_embeddings"]) for s in page] == [
        ("cust-1", "erased", 0)
    ]


def test_two_first_enrollments_of_one_new_subject_at_once_land_under_one_subject(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    """Both requests find no subject before their inference; only one may create it, the other
    enrolls into it (on PostgreSQL the second insert waits for the first, no unique
    violation)."""
    admin = new_admin()
    face = face_images["person3"]
    start = threading.Barrier(2)
    results: list[Any] = []

    def enroll(frame: bytes) -> None:
        start.wait()
        results.append(enroll_subject(runtime, admin, "cust-1", CaptureBundle([frame])))

    threads = [threading.Thread(target=enroll, args=(f,)) for f in (face, recapture(face))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert sorted(r.subject_created for r in results) == [False, True]
    subject = get_subject(runtime, admin, "cust-1")
    assert len(subject["enrollments"]) == 2
    page, _ = list_subjects(runtime, admin)
    assert [(s["subject_id"], s["active_embeddings"]) for s in page] == [("cust-1", 2)]


def test_reject_refuses_a_face_enrolled_under_another_subject_and_audits_the_refusal(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    face = face_images["person3"]
    enroll_subject(runtime, admin, "first", CaptureBundle([face]))
    objects = stored_objects(runtime)

    with pytest.raises(DuplicateFaceError) as refused:
        enroll_subject(
            runtime, admin, "second", CaptureBundle([recapture(face)], duplicate_check="reject")
        )

    candidates = refused.value.details["candidates"]
    assert [c["subject_id"] for c in candidates] == ["first"]
    assert runtime.pipeline.threshold <= candidates[0]["score"] <= 1.0
    page, _ = list_subjects(runtime, admin)
    assert [(s["subject_id"], s["active_embeddings"]) for s in page] == [("first", 1)]
    with pytest.raises(SubjectNotFoundError):
        get_subject(runtime, admin, "second")
    assert stored_objects(runtime) == objects
    rejected = audit_trail(runtime, admin)[-1]
    assert (rejected.action, rejected.target) == ("enrollment.duplicate_rejected", "second")
    assert rejected.details == {"candidates": candidates, "threshold": runtime.pipeline.threshold}


def test_flag_enrolls_the_face_and_returns_the_other_subject_as_a_candidate(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    face = face_images["person3"]
    enroll_subject(runtime, admin, "first", CaptureBundle([face]))

    flagged = enroll_subject(
        runtime, admin, "second", CaptureBundle([recapture(face)], duplicate_check="flag")
    )

    assert (flagged.subject_created, flagged.duplicate_check) == (True, "flag")
    assert [d.subject_id for d in flagged.duplicates] == ["first"]
    assert runtime.pipeline.threshold <= flagged.duplicates[0].score <= 1.0
    page, _ = list_subjects(runtime, admin)
    assert [(s["subject_id"], s["active_embeddings"]) for s in page] == [
        ("first", 1),
        ("second", 1),
    ]
    # A subject is never its own duplicate; the other subject holding the face still is.
    again = enroll_subject(
        runtime, admin, "first", CaptureBundle([recapture(face, 0.9)], duplicate_check="flag")
    )
    assert [d.subject_id for d in again.duplicates] == ["second"]
