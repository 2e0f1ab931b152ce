"""`search_probe` (1:N): the caller's own gallery only, best first, active enrollments only."""

from __future__ import annotations

from collections.abc import Callable

from app.runtime import Runtime
from app.services.matching import Probe, search_probe
from app.services.principal import Principal
from app.services.subjects import CaptureBundle, enroll_subject, retire_enrollment
from tests.app.services.helpers import audit_trail, recapture


def found(runtime: Runtime, principal: Principal, image: bytes) -> list[str]:
    result = search_probe(runtime, principal, Probe(image=image), top_k=5)
    return [c["subject_id"] for c in result["candidates"]]


def test_search_finds_the_enrolled_subject_first_among_several(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    people = ["person0", "person1", "person2", "person3", "person5"]
    for person in people:
        enroll_subject(runtime, admin, f"cust-{person}", CaptureBundle([face_images[person]]))

    result = search_probe(runtime, admin, Probe(image=recapture(face_images["person2"])), top_k=5)

    assert [(c["subject_id"], c["decision"]) for c in result["candidates"]] == [
        ("cust-person2", "match")
    ]
    assert runtime.pipeline.threshold <= result["candidates"][0]["score"] <= 1.0
    assert (result["gallery_size"], result["threshold"], result["probe"]) == (
        5,
        runtime.pipeline.threshold,
        "image",
    )
    audited = audit_trail(runtime, admin)[-1]
    assert (audited.id, audited.action, audited.target) == (
        result["audit_id"],
        "match.search",
        "top_k=5",
    )
    assert audited.details["candidates"] == result["candidates"]


def test_search_never_returns_another_orgs_subject(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    bank, other_bank = new_admin("Bank"), new_admin("Other Bank")
    face = face_images["person0"]
    enroll_subject(runtime, bank, "cust-1", CaptureBundle([face]))
    enroll_subject(runtime, other_bank, "theirs-1", CaptureBundle([face_images["person3"]]))

    result = search_probe(runtime, other_bank, Probe(image=recapture(face)), top_k=5)

    assert (result["candidates"], result["gallery_size"]) == ([], 1)
    assert found(runtime, bank, recapture(face)) == ["cust-1"]


def test_a_retired_enrollment_is_no_longer_found(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    face = face_images["person5"]
    enrolled = enroll_subject(runtime, admin, "cust-1", CaptureBundle([face, recapture(face)]))
    enroll_subject(runtime, admin, "cust-2", CaptureBundle([face_images["person0"]]))
    assert found(runtime, admin, recapture(face, 0.9)) == ["cust-1"]

    retired = retire_enrollment(runtime, admin, enrolled.enrollment_id)

    assert retired == {
        "enrollment_id": enrolled.enrollment_id,
        "status": "retired",
        "embeddings": 2,
    }
    assert found(runtime, admin, recapture(face, 0.9)) == []
    assert found(runtime, admin, face_images["person0"]) == ["cust-2"]
