"""Data-subject rights over HTTP: export (access and portability), PATCH (rectification), and
an erasure that also takes the subject's idempotency records. Bad input everywhere: a clear
4xx and nothing changed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.crypto import Scope
from app.crypto.subject_keys import is_subject_sealed
from app.runtime import Runtime
from app.storage.schema import idempotency_keys, subjects
from tests.app.api.conftest import Org
from tests.app.api.helpers import audit_actions, audit_rows, b64, enroll, error_code

PII = {"nik": "3171234567890123", "email": "budi@example.co.id", "phone": "+6281234567890"}


def recomputed_sha256(document: dict[str, Any]) -> str:
    """What the README tells an org to compute."""
    body = {k: v for k, v in document.items() if k not in ("sha256", "audit_id")}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    ).hexdigest()


def sealed_pii(runtime: Runtime, org_id: str, subject_id: str) -> dict[str, bytes | None]:
    with runtime.engine.connect() as conn:
        row = conn.execute(
            sa.select(
                subjects.c.nik_sealed, subjects.c.email_sealed, subjects.c.phone_sealed
            ).where(subjects.c.org_id == org_id, subjects.c.subject_id == subject_id)
        ).one()
    return {
        name: None if blob is None else bytes(blob)
        for name, blob in zip(("nik", "email", "phone"), row, strict=True)
    }


# --- export -------------------------------------------------------------------------------------


def test_export_holds_everything_about_the_subject_with_its_sha256(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    enrolled = enroll(client, org.admin, "cust-1", face_images["person0"], pii=PII)
    enroll(client, org.admin, "cust-2", face_images["person1"])

    response = client.get("/v1/subjects/cust-1/export", headers=org.key(Scope.ENROLL))

    assert response.status_code == 200, response.text
    document = response.json()
    assert document["sha256"] == recomputed_sha256(document)
    assert (document["format"], document["subject_id"], document["status"]) == (
        "wajah-subject-export/1",
        "cust-1",
        "active",
    )
    assert document["pii"] == PII
    [bundle] = document["enrollments"]
    assert bundle["enrollment_id"] == enrolled["enrollment_id"]
    [embedding] = bundle["embeddings"]
    assert embedding["hashed_reference"] == enrolled["frames"][0]["hashed_reference"]
    assert "vector" not in embedding and document["vectors_included"] is False
    assert document["frames"]["exported"] is False
    assert "never exported" in document["frames"]["statement"]
    assert [e["action"] for e in document["audit_events"]] == ["enrollment.create"]
    assert document["audit_events"][0]["details"]["subject_id"] == "cust-1"
    assert document["watchlist_entries"] == []
    assert audit_actions(org.runtime, org.org_id)[-1] == "subject.export"
    # Another subject's data is not in it.
    assert "cust-2" not in json.dumps(document)


def test_vectors_only_on_the_explicit_option_for_an_admin_and_audited_apart(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    enroll(client, org.admin, "cust-1", face_images["person0"])
    enroller = org.key(Scope.ENROLL)
    before = audit_rows(org.runtime, org.org_id)

    refused = client.get("/v1/subjects/cust-1/export?include_vectors=true", headers=enroller)
    assert (refused.status_code, error_code(refused)) == (403, "forbidden")
    assert audit_rows(org.runtime, org.org_id) == before

    response = client.get("/v1/subjects/cust-1/export?include_vectors=true", headers=org.admin)
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["sha256"] == recomputed_sha256(document)
    vector = document["enrollments"][0]["embeddings"][0]["vector"]
    assert len(vector) == 128
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-4
    assert audit_actions(org.runtime, org.org_id)[-2:] == [
        "subject.export",
        "subject.export.vectors",
    ]


def test_an_erased_subjects_export_is_what_is_left(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    enroll(client, org.admin, "cust-1", face_images["person0"], pii=PII)
    receipt = client.delete("/v1/subjects/cust-1", headers=org.admin).json()

    document = client.get("/v1/subjects/cust-1/export", headers=org.admin).json()

    assert document["status"] == "erased"
    assert document["pii"] == {"nik": None, "email": None, "phone": None}
    assert document["erasure"]["receipt_sha256"] == receipt["receipt_sha256"]
    [embedding] = document["enrollments"][0]["embeddings"]
    assert (embedding["status"], embedding["hashed_reference"]) == ("erased", None)
    assert [e["action"] for e in document["audit_events"]] == [
        "enrollment.create",
        "subject.erase",
    ]
    assert document["sha256"] == recomputed_sha256(document)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/subjects/nobody/export",
        "/v1/subjects/bad%00id/export",
        "/v1/subjects/" + "x" * 300 + "/export",
    ],
)
def test_export_of_an_unknown_subject_is_404_and_unaudited(
    client: TestClient, new_org: Callable[[], Org], path: str
) -> None:
    org = new_org()
    before = audit_rows(org.runtime, org.org_id)
    response = client.get(path, headers=org.admin)
    assert (response.status_code, error_code(response)) == (404, "subject_not_found")
    assert audit_rows(org.runtime, org.org_id) == before


def test_export_of_another_orgs_subject_is_404(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    owner, other = new_org(), new_org()
    enroll(client, owner.admin, "cust-1", face_images["person0"], pii=PII)
    before = audit_actions(owner.runtime, owner.org_id)
    response = client.get("/v1/subjects/cust-1/export", headers=other.admin)
    assert (response.status_code, error_code(response)) == (404, "subject_not_found")
    assert audit_actions(owner.runtime, owner.org_id) == before


def test_export_refuses_a_garbage_option(client: TestClient, new_org: Callable[[], Org]) -> None:
    org = new_org()
    response = client.get("/v1/subjects/x/export?include_vectors=perhaps", headers=org.admin)
    assert response.status_code == 422


# --- rectification ------------------------------------------------------------------------------


def test_rectify_sets_changes_and_clears_fields_resealed_and_audited_by_name(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    enroll(client, org.admin, "cust-1", face_images["person0"], pii={"nik": PII["nik"]})
    headers = org.key(Scope.ENROLL)

    response = client.patch(
        "/v1/subjects/cust-1",
        headers=headers,
        json={"pii": {"email": " budi.baru@example.co.id ", "phone": None}},
    )

    assert response.status_code == 200, response.text
    assert response.json()["pii_fields"] == {"nik": "unchanged", "email": "set", "phone": "cleared"}
    pii = client.get("/v1/subjects/cust-1", headers=headers).json()["pii"]
    assert pii == {"nik": PII["nik"], "email": "budi.baru@example.co.id", "phone": None}
    sealed = sealed_pii(org.runtime, org.org_id, "cust-1")
    assert sealed["phone"] is None
    assert all(is_subject_sealed(sealed[n]) for n in ("nik", "email"))  # type: ignore[arg-type]
    assert b"budi" not in b"".join(b for b in sealed.values() if b)

    cleared = client.patch("/v1/subjects/cust-1", headers=headers, json={"pii": {"nik": None}})
    assert cleared.json()["pii_fields"]["nik"] == "cleared"
    assert client.get("/v1/subjects/cust-1", headers=headers).json()["pii"]["nik"] is None

    export = client.get("/v1/subjects/cust-1/export", headers=headers).json()
    rectified = [e for e in export["audit_events"] if e["action"] == "subject.rectify"]
    assert [e["details"] for e in rectified] == [
        {"set": ["email"], "cleared": ["phone"]},
        {"set": [], "cleared": ["nik"]},
    ]
    assert "budi" not in json.dumps(export["audit_events"])


BAD_PATCHES: list[tuple[str, Any, str]] = [
    ("empty body", {}, "invalid_request"),
    ("no field", {"pii": {}}, "invalid_pii"),
    ("unknown field", {"pii": {"name": "Budi"}}, "invalid_request"),
    ("extra top-level", {"pii": {"nik": None}, "frames": []}, "invalid_request"),
    ("bad nik", {"pii": {"nik": "12345"}}, "invalid_pii"),
    ("oversized nik", {"pii": {"nik": "3" * 100_000}}, "invalid_pii"),
    ("oversized email", {"pii": {"email": "a" * 5000 + "@example.co.id"}}, "invalid_pii"),
    ("NUL in email", {"pii": {"email": "budi\x00@example.co.id"}}, "invalid_request"),
    ("not a string", {"pii": {"phone": 6281234567890}}, "invalid_request"),
    ("pii not an object", {"pii": "nik=1"}, "invalid_request"),
]


@pytest.mark.parametrize(("label", "body", "code"), BAD_PATCHES, ids=[b[0] for b in BAD_PATCHES])
def test_rectify_refuses_bad_input_and_changes_nothing(
    client: TestClient,
    new_org: Callable[[], Org],
    face_images: dict[str, bytes],
    label: str,
    body: Any,
    code: str,
) -> None:
    org = new_org()
    enroll(client, org.admin, "cust-1", face_images["person0"], pii=PII)
    before = (sealed_pii(org.runtime, org.org_id, "cust-1"), audit_rows(org.runtime, org.org_id))

    response = client.patch("/v1/subjects/cust-1", headers=org.admin, json=body)

    assert (response.status_code, error_code(response)) == (422, code), label
    assert (sealed_pii(org.runtime, org.org_id, "cust-1"), audit_rows(org.runtime, org.org_id)) == (
        before
    )


def test_rectify_refuses_garbage_json(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    enroll(client, org.admin, "cust-1", face_images["person0"], pii=PII)
    before = sealed_pii(org.runtime, org.org_id, "cust-1")
    for garbage in (b"{not json", b"\xff\xfe", b"", b"null", b'{"pii": {"nik": "3171'):
        response = client.patch(
            "/v1/subjects/cust-1",
            headers={**org.admin, "Content-Type": "application/json"},
            content=garbage,
        )
        assert (response.status_code, error_code(response)) == (422, "invalid_request"), garbage
    assert sealed_pii(org.runtime, org.org_id, "cust-1") == before


def test_rectify_of_unknown_foreign_or_erased_subjects(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    owner, other = new_org(), new_org()
    enroll(client, owner.admin, "cust-1", face_images["person0"], pii=PII)
    enroll(client, owner.admin, "gone", face_images["person1"], pii=PII)
    client.delete("/v1/subjects/gone", headers=owner.admin)
    before = (
        sealed_pii(owner.runtime, owner.org_id, "cust-1"),
        audit_rows(owner.runtime, owner.org_id),
    )
    patch = {"pii": {"email": "x@example.co.id"}}

    foreign = client.patch("/v1/subjects/cust-1", headers=other.admin, json=patch)
    unknown = client.patch("/v1/subjects/nobody", headers=owner.admin, json=patch)
    garbage_id = client.patch("/v1/subjects/bad%00id", headers=owner.admin, json=patch)
    erased = client.patch("/v1/subjects/gone", headers=owner.admin, json=patch)

    for response in (foreign, unknown, garbage_id):
        assert (response.status_code, error_code(response)) == (404, "subject_not_found")
    assert (erased.status_code, error_code(erased)) == (410, "subject_erased")
    assert sealed_pii(owner.runtime, owner.org_id, "gone") == {
        "nik": None,
        "email": None,
        "phone": None,
    }
    assert (
        sealed_pii(owner.runtime, owner.org_id, "cust-1"),
        audit_rows(owner.runtime, owner.org_id),
    ) == before


def test_rectify_honours_idempotency_key(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    enroll(client, org.admin, "cust-1", face_images["person0"], pii=PII)
    headers = {**org.admin, "Idempotency-Key": "rectify-1"}
    body = {"pii": {"email": "baru@example.co.id"}}

    first = client.patch("/v1/subjects/cust-1", headers=headers, json=body)
    rows = audit_rows(org.runtime, org.org_id)
    again = client.patch("/v1/subjects/cust-1", headers=headers, json=body)
    other = client.patch("/v1/subjects/cust-1", headers=headers, json={"pii": {"phone": None}})

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert (other.status_code, error_code(other)) == (422, "idempotency_key_reused")
    assert audit_rows(org.runtime, org.org_id) == rows
    # The stored answer names fields, never values.
    with org.runtime.engine.connect() as conn:
        stored = conn.execute(
            sa.select(idempotency_keys.c.response_body, idempotency_keys.c.subject_id).where(
                idempotency_keys.c.org_id == org.org_id, idempotency_keys.c.key == "rectify-1"
            )
        ).one()
    assert b"baru" not in bytes(stored.response_body) and stored.subject_id == "cust-1"


# --- erasure takes the idempotency records ------------------------------------------------------


def test_a_replayed_enroll_after_erasure_meets_the_erasure_not_the_old_answer(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    headers = {**org.admin, "Idempotency-Key": "enroll-cust-1"}
    body = {"frames": [b64(face_images["person0"])], "pii": PII}
    first = client.post("/v1/subjects/cust-1/enrollments", headers=headers, json=body)
    assert first.status_code == 201, first.text
    replayed = client.post("/v1/subjects/cust-1/enrollments", headers=headers, json=body)
    assert replayed.headers.get("Idempotent-Replayed") == "true"

    receipt = client.delete("/v1/subjects/cust-1", headers=org.admin).json()
    assert receipt["idempotency_records_deleted"] == 1
    assert receipt["subject_key_destroyed"] is True

    after = client.post("/v1/subjects/cust-1/enrollments", headers=headers, json=body)
    assert (after.status_code, error_code(after)) == (410, "subject_erased")
    assert "Idempotent-Replayed" not in after.headers
    assert first.json()["enrollment_id"] not in after.text
    with org.runtime.engine.connect() as conn:
        left = conn.execute(
            sa.select(sa.func.count())
            .select_from(idempotency_keys)
            .where(idempotency_keys.c.org_id == org.org_id)
        ).scalar_one()
    assert left == 0  # the refused retry released its reservation too
