"""The KYC flows beyond the happy path: idempotent retries, pagination, erasure, retirement,
sealed PII, the org's threshold override, duplicate rejection and partial bundles.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import cv2
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.runtime import Runtime
from app.storage.schema import enrollments, frames, subjects
from models.imaging import decode_image, encode_jpeg
from tests.app.api.conftest import Org
from tests.app.api.helpers import audit_rows, b64, enroll, error_code, org_state


def recapture(image: bytes) -> bytes:
    """Another capture of the same face: smaller and more compressed."""
    return encode_jpeg(cv2.resize(decode_image(image), None, fx=0.8, fy=0.8), 60)


def relight(image: bytes) -> bytes:
    """The same face under harsher light: a genuine pair scoring well under 0.95."""
    return encode_jpeg(cv2.convertScaleAbs(decode_image(image), alpha=1.3, beta=30), 90)


def search_ids(client: TestClient, org: Org, image: bytes) -> list[str]:
    found = client.post("/v1/search", headers=org.admin, json={"probe": {"image": b64(image)}})
    assert found.status_code == 200, found.text
    return [c["subject_id"] for c in found.json()["candidates"]]


# --- idempotency ----------------------------------------------------------------------------


def test_idempotent_enrollment(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org, other = new_org(), new_org()
    runtime = org.runtime
    url = "/v1/subjects/cust-1/enrollments"
    body = {"frames": [b64(face_images["person0"])], "pii": {"nik": "3171234567890123"}}
    headers = {**org.admin, "Idempotency-Key": "retry-1"}

    first = client.post(url, headers=headers, json=body)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    after_first = org_state(runtime, org.org_id)
    replay = client.post(url, headers=headers, json=body)
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert org_state(runtime, org.org_id) == after_first
    assert (after_first.subjects, after_first.enrollments, after_first.frames) == (1, 1, 1)

    # Same key, another request: refused, nothing done.
    for changed_url, changed in [
        (url, {**body, "frames": [b64(face_images["person1"])]}),
        (url, {**body, "pii": {"nik": "3171234567890124"}}),
        (url, {**body, "duplicate_check": "flag"}),
        ("/v1/subjects/cust-2/enrollments", body),
    ]:
        reused = client.post(changed_url, headers=headers, json=changed)
        assert (reused.status_code, error_code(reused)) == (422, "idempotency_key_reused")
    assert org_state(runtime, org.org_id) == after_first

    # Keys belong to an org: another org's identical key and body is its own first request.
    theirs = client.post(url, headers={**other.admin, "Idempotency-Key": "retry-1"}, json=body)
    assert theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs.headers
    assert theirs.json()["enrollment_id"] != first.json()["enrollment_id"]

    # A refused request releases its key: the corrected retry runs.
    retry = {**org.admin, "Idempotency-Key": "retry-2"}
    bad = client.post(url, headers=retry, json={"frames": [b64(face_images["person4"])]})
    assert (bad.status_code, error_code(bad)) == (422, "no_usable_frame")
    good = client.post(url, headers=retry, json={"frames": [b64(face_images["person2"])]})
    assert good.status_code == 201
    assert "Idempotent-Replayed" not in good.headers
    assert org_state(runtime, org.org_id).enrollments == 2

    # Multipart bodies are fingerprinted too.
    files = [("frames", ("a.jpg", face_images["person3"], "image/jpeg"))]
    multipart = {**org.admin, "Idempotency-Key": "retry-3"}
    once = client.post("/v1/subjects/cust-3/enrollments", headers=multipart, files=files)
    twice = client.post("/v1/subjects/cust-3/enrollments", headers=multipart, files=files)
    assert (once.status_code, twice.status_code) == (201, 201)
    assert twice.headers["Idempotent-Replayed"] == "true"
    assert twice.json() == once.json()
    other_file = [("frames", ("a.jpg", face_images["person5"], "image/jpeg"))]
    reused = client.post("/v1/subjects/cust-3/enrollments", headers=multipart, files=other_file)
    assert (reused.status_code, error_code(reused)) == (422, "idempotency_key_reused")
    assert org_state(runtime, org.org_id).enrollments == 3


# --- pagination -----------------------------------------------------------------------------


def test_subjects_and_audit_pages(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    names = ["s-a", "s-b", "s-c", "s-d", "s-e"]
    for name, person in zip(
        names, ["person0", "person1", "person2", "person3", "person5"], strict=True
    ):
        enroll(client, org.admin, name, face_images[person])

    def subject_pages(limit: int) -> list[list[str]]:
        pages, cursor = [], None
        while True:
            params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
            page = client.get("/v1/subjects", headers=org.admin, params=params).json()
            pages.append([s["subject_id"] for s in page["items"]])
            cursor = page["next_cursor"]
            if cursor is None:
                return pages

    assert subject_pages(2) == [["s-a", "s-b"], ["s-c", "s-d"], ["s-e"]]
    assert subject_pages(5) == [names]
    assert subject_pages(4) == [names[:4], ["s-e"]]
    assert subject_pages(200) == [names]
    first = client.get("/v1/subjects", headers=org.admin, params={"limit": 1}).json()
    assert first["items"] == [
        {
            "subject_id": "s-a",
            "status": "active",
            "created_at": first["items"][0]["created_at"],
            "active_embeddings": 1,
        }
    ]

    # Audit: newest first, cursor = the last seq seen; rows of this org only.
    total = audit_rows(org.runtime, org.org_id)
    assert total == 7  # org.create, api_key.create, 5 × enrollment.create
    seqs: list[list[int]] = []
    cursor: str | None = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/audit", headers=org.admin, params=params).json()
        seqs.append([e["seq"] for e in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seqs == [[7, 6, 5], [4, 3, 2], [1]]
    everything = client.get("/v1/audit", headers=org.admin, params={"limit": 7}).json()
    assert everything["next_cursor"] is None
    assert [e["action"] for e in everything["items"]] == ["enrollment.create"] * 5 + [
        "api_key.create",
        "org.create",
    ]
    assert [e["details"]["subject_id"] for e in everything["items"][:5]] == names[::-1]


# --- erasure and retirement -----------------------------------------------------------------


def test_erasure(
    client: TestClient,
    new_org: Callable[[], Org],
    face_images: dict[str, bytes],
    runtime: Runtime,
) -> None:
    org = new_org()
    image = face_images["person1"]
    pii = {"nik": "3171234567890123", "email": "budi@example.co.id", "phone": "+6281234567890"}
    enroll(client, org.admin, "gone", image, face_images["tom"], pii=pii)  # 2 frames
    enroll(client, org.admin, "gone", recapture(image))  # a second bundle
    enroll(client, org.admin, "stays", face_images["person3"])
    assert search_ids(client, org, image) == ["gone"]
    with runtime.engine.connect() as conn:
        object_keys = list(
            conn.execute(
                sa.select(frames.c.object_key)
                .join(enrollments, enrollments.c.id == frames.c.enrollment_id)
                .join(subjects, subjects.c.id == enrollments.c.subject_pk)
                .where(subjects.c.org_id == org.org_id, subjects.c.subject_id == "gone")
            ).scalars()
        )
    assert len(object_keys) == 3
    assert all(runtime.objects.exists(k) for k in object_keys)

    erased = client.delete("/v1/subjects/gone", headers=org.admin)
    assert erased.status_code == 200
    receipt = erased.json()
    canonical = {k: v for k, v in receipt.items() if k not in ("receipt_sha256", "audit_id")}
    assert canonical == {
        "subject_id": "gone",
        "org_id": org.org_id,
        "erased_at": canonical["erased_at"],
        "embeddings_erased": 3,
        "frames_shredded": 3,
        "source_documents_deleted": 0,
        "pii_shredded": ["nik", "email", "phone"],
        "watchlist_entries_withdrawn": 0,
        "subject_key_destroyed": True,
        "idempotency_records_deleted": 0,
    }
    digest = hashlib.sha256(
        json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert receipt["receipt_sha256"] == digest
    audit = client.get("/v1/audit", headers=org.admin, params={"limit": 1}).json()["items"][0]
    assert (audit["id"], audit["action"], audit["target"]) == (
        receipt["audit_id"],
        "subject.erase",
        "gone",
    )
    assert audit["details"] == {**canonical, "receipt_sha256": digest}

    # Out of search at once; verify finds no subject; frames, vectors and PII are gone.
    assert search_ids(client, org, image) == []
    assert search_ids(client, org, face_images["person3"]) == ["stays"]
    verify = client.post(
        "/v1/verify", headers=org.admin, json={"subject_id": "gone", "probe": {"image": b64(image)}}
    )
    assert (verify.status_code, error_code(verify)) == (404, "subject_not_found")
    assert not any(runtime.objects.exists(k) for k in object_keys)
    with runtime.engine.connect() as conn:
        subject = conn.execute(
            sa.select(subjects).where(
                subjects.c.org_id == org.org_id, subjects.c.subject_id == "gone"
            )
        ).one()
        shredded = conn.execute(
            sa.select(frames.c.wrapped_dek, frames.c.purged_at).where(
                frames.c.object_key.in_(object_keys)
            )
        ).all()
        vectors = conn.execute(
            sa.select(enrollments.c.status, enrollments.c.vector, enrollments.c.hashed_ref).where(
                enrollments.c.subject_pk == subject.id
            )
        ).all()
    assert (subject.status, subject.nik_sealed, subject.email_sealed, subject.phone_sealed) == (
        "erased",
        None,
        None,
        None,
    )
    assert [r.wrapped_dek for r in shredded] == [None] * 3
    assert all(r.purged_at is not None for r in shredded)
    assert [tuple(r) for r in vectors] == [("erased", None, None)] * 3
    shown = client.get("/v1/subjects/gone", headers=org.admin).json()
    assert (shown["status"], shown["pii"]) == (
        "erased",
        {"nik": None, "email": None, "phone": None},
    )
    assert {e["integrity"] for b in shown["enrollments"] for e in b["embeddings"]} == {"erased"}

    # The id stays burnt: no re-enrollment, no second erasure.
    again = client.post(
        "/v1/subjects/gone/enrollments", headers=org.admin, json={"frames": [b64(image)]}
    )
    assert (again.status_code, error_code(again)) == (410, "subject_erased")
    twice = client.delete("/v1/subjects/gone", headers=org.admin)
    assert (twice.status_code, error_code(twice)) == (410, "subject_erased")


def test_retire(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    image = face_images["person2"]
    probe = {"subject_id": "cust-1", "probe": {"image": b64(recapture(image))}}
    bundle = enroll(client, org.admin, "cust-1", image, face_images["person2"][:-1])
    assert [f["accepted"] for f in bundle["frames"]] == [True, False]
    assert search_ids(client, org, image) == ["cust-1"]

    retired = client.post(f"/v1/enrollments/{bundle['enrollment_id']}/retire", headers=org.admin)
    assert retired.json() == {
        "enrollment_id": bundle["enrollment_id"],
        "status": "retired",
        "embeddings": 1,
    }
    assert search_ids(client, org, image) == []
    verify = client.post("/v1/verify", headers=org.admin, json=probe)
    assert (verify.status_code, error_code(verify)) == (409, "conflict")
    again = client.post(f"/v1/enrollments/{bundle['enrollment_id']}/retire", headers=org.admin)
    assert (again.status_code, error_code(again)) == (409, "enrollment_not_active")
    shown = client.get("/v1/subjects/cust-1", headers=org.admin).json()
    assert (shown["status"], [e["status"] for e in shown["enrollments"]]) == (
        "active",
        ["retired"],
    )

    # The subject lives on: a new enrollment makes it verifiable again.
    renewed = enroll(client, org.admin, "cust-1", image)
    assert renewed["subject_created"] is False
    assert client.post("/v1/verify", headers=org.admin, json=probe).json()["decision"] == "match"
    assert search_ids(client, org, image) == ["cust-1"]


# --- PII ------------------------------------------------------------------------------------


def test_pii_is_sealed_and_shown_only_to_its_org(
    client: TestClient,
    new_org: Callable[[], Org],
    face_images: dict[str, bytes],
    runtime: Runtime,
) -> None:
    org, other = new_org(), new_org()
    pii = {"nik": "3171234567890123", "email": "budi@example.co.id", "phone": "+6281234567890"}
    enroll(client, org.admin, "cust-1", face_images["person0"], pii=pii)
    multipart = client.post(
        "/v1/subjects/cust-2/enrollments",
        headers=org.admin,
        files=[("frames", ("f.jpg", face_images["person1"], "image/jpeg"))],
        data={"nik": " 3171234567890999 "},  # surrounding blanks are trimmed
    )
    assert multipart.status_code == 201

    assert client.get("/v1/subjects/cust-1", headers=org.admin).json()["pii"] == pii
    assert client.get("/v1/subjects/cust-2", headers=org.admin).json()["pii"] == {
        "nik": "3171234567890999",
        "email": None,
        "phone": None,
    }
    assert client.get("/v1/subjects/cust-1", headers=other.admin).status_code == 404

    with runtime.engine.connect() as conn:
        rows = conn.execute(
            sa.select(subjects.c.nik_sealed, subjects.c.email_sealed, subjects.c.phone_sealed)
            .where(subjects.c.org_id == org.org_id)
            .order_by(subjects.c.subject_id)
        ).all()
        raw_dump = b"".join(bytes(v) for r in rows for v in r if v is not None)
    assert [tuple(v is not None for v in r) for r in rows] == [
        (True, True, True),
        (True, False, False),
    ]
    for value in [*pii.values(), "3171234567890999", "budi@example", "81234567890"]:
        assert value.encode() not in raw_dump
    # The audit log names the fields, never the values.
    audit = client.get("/v1/audit", headers=org.admin).content
    assert b'"pii_fields":["email","nik","phone"]' in audit
    assert not any(value.encode() in audit for value in pii.values())

    # A later enrollment may update the PII; the update is sealed too.
    enroll(client, org.admin, "cust-1", face_images["person0"], pii={"phone": "081299998888"})
    assert client.get("/v1/subjects/cust-1", headers=org.admin).json()["pii"] == {
        **pii,
        "phone": "081299998888",
    }


# --- threshold override ---------------------------------------------------------------------


def test_threshold_override_changes_decisions(
    client: TestClient,
    new_org: Callable[[], Org],
    face_images: dict[str, bytes],
    runtime: Runtime,
) -> None:
    org = new_org()
    image = face_images["person2"]
    enroll(client, org.admin, "cust-1", image)
    probe = {"subject_id": "cust-1", "probe": {"image": b64(relight(image))}}
    pack = runtime.pipeline.pack

    default = client.post("/v1/verify", headers=org.admin, json=probe).json()
    assert (default["decision"], default["threshold"]) == ("match", pack.thresholds.cosine)
    assert default["threshold_source"] == f"model pack {pack.model_id}: {pack.thresholds.source}"
    score = default["score"]
    assert pack.thresholds.cosine < score < 0.95

    settings = client.patch(
        "/v1/org/settings",
        headers=org.admin,
        json={"threshold": 0.95, "threshold_calibration": "bank QA 2026-11, FMR 1e-6"},
    ).json()
    assert (settings["effective_threshold"], settings["threshold_source"]) == (
        0.95,
        "org: bank QA 2026-11, FMR 1e-6",
    )
    strict = client.post("/v1/verify", headers=org.admin, json=probe).json()
    assert (strict["decision"], strict["threshold"], strict["score"]) == ("no_match", 0.95, score)
    assert strict["threshold_source"] == "org: bank QA 2026-11, FMR 1e-6"
    found = client.post("/v1/search", headers=org.admin, json={"probe": probe["probe"]}).json()
    assert (found["candidates"], found["threshold"]) == ([], 0.95)
    audit = client.get("/v1/audit", headers=org.admin, params={"limit": 2}).json()["items"]
    assert [(e["action"], e["details"]["threshold"]) for e in audit] == [
        ("match.search", 0.95),
        ("match.verify", 0.95),
    ]

    # Lowest allowed: 0.05 under the pack's; below is refused. Then back to the pack's.
    low = round(pack.thresholds.cosine - 0.05, 4)
    assert client.patch("/v1/org/settings", headers=org.admin, json={"threshold": low}).json()[
        "threshold_bounds"
    ] == [low, 0.95]
    back = client.patch("/v1/org/settings", headers=org.admin, json={"threshold": None}).json()
    assert (back["threshold"], back["effective_threshold"]) == (None, pack.thresholds.cosine)
    assert client.post("/v1/verify", headers=org.admin, json=probe).json()["decision"] == "match"


# --- duplicates and bundles -----------------------------------------------------------------


def test_duplicate_reject_stores_nothing(
    client: TestClient,
    new_org: Callable[[], Org],
    face_images: dict[str, bytes],
    runtime: Runtime,
) -> None:
    org = new_org()
    image = face_images["person3"]
    enroll(client, org.admin, "first", image)
    before = org_state(runtime, org.org_id)

    refused = client.post(
        "/v1/subjects/second/enrollments",
        headers=org.admin,
        json={"frames": [b64(recapture(image))], "duplicate_check": "reject"},
    )
    assert (refused.status_code, error_code(refused)) == (409, "duplicate_face")
    candidates = refused.json()["error"]["details"]["candidates"]
    assert [c["subject_id"] for c in candidates] == ["first"]
    assert 0.363 < candidates[0]["score"] <= 1.0
    after = org_state(runtime, org.org_id)
    assert after == before.__class__(**{**before.__dict__, "audit": before.audit + 1})
    assert client.get("/v1/subjects/second", headers=org.admin).status_code == 404
    rejected = client.get("/v1/audit", headers=org.admin, params={"limit": 1}).json()["items"][0]
    assert (rejected["action"], rejected["target"]) == ("enrollment.duplicate_rejected", "second")
    assert rejected["details"]["candidates"] == candidates

    # The org's policy applies when the request names none; the same subject is no duplicate.
    client.patch("/v1/org/settings", headers=org.admin, json={"duplicate_policy": "reject"})
    by_policy = client.post(
        "/v1/subjects/third/enrollments", headers=org.admin, json={"frames": [b64(image)]}
    )
    assert (by_policy.status_code, error_code(by_policy)) == (409, "duplicate_face")
    same_subject = enroll(client, org.admin, "first", recapture(image))
    assert (same_subject["duplicate_check"], same_subject["duplicates"]) == ("reject", [])
    other_face = enroll(client, org.admin, "fourth", face_images["person0"])
    assert other_face["duplicates"] == []
    flagged = enroll(client, org.admin, "fifth", image, duplicate_check="flag")
    assert [d["subject_id"] for d in flagged["duplicates"]] == ["first"]


def test_bundle_with_bad_frames(
    client: TestClient,
    new_org: Callable[[], Org],
    face_images: dict[str, bytes],
    runtime: Runtime,
) -> None:
    org = new_org()
    good, pose = face_images["person5"], face_images["person4"]
    before = org_state(runtime, org.org_id)
    partial = client.post(
        "/v1/subjects/cust-1/enrollments",
        headers=org.admin,
        files=[
            ("frames", ("0.jpg", good, "image/jpeg")),
            ("frames", ("1.jpg", pose, "image/jpeg")),
            ("frames", ("2.gif", b"GIF89a....", "image/gif")),
            ("frames", ("3.png", face_images["tom"], "image/png")),
        ],
    )
    assert partial.status_code == 201, partial.text
    reports = partial.json()["frames"]
    assert [
        (r["index"], r["accepted"], (r["error"] or {}).get("code"), r["embedding_id"] is not None)
        for r in reports
    ] == [
        (0, True, None, True),
        (1, False, "extreme_pose", False),
        (2, False, "unsupported_image_type", False),
        (3, True, None, True),
    ]
    assert reports[1]["quality"]["passed"] is False  # the gate says why, per frame
    assert reports[2]["quality"] is None
    after = org_state(runtime, org.org_id)
    assert (
        after.subjects - before.subjects,
        after.enrollments - before.enrollments,
        after.frames - before.frames,
        after.objects - before.objects,
        after.audit - before.audit,
    ) == (1, 2, 2, 2, 1)

    refused = client.post(
        "/v1/subjects/cust-2/enrollments",
        headers=org.admin,
        json={"frames": [b64(pose), b64(b""), b64(good[:1000])]},
    )
    assert (refused.status_code, error_code(refused)) == (422, "no_usable_frame")
    assert [
        (f["index"], f["accepted"], f["error"]["code"])
        for f in refused.json()["error"]["details"]["frames"]
    ] == [(0, False, "extreme_pose"), (1, False, "empty_image"), (2, False, "corrupt_image")]
    assert org_state(runtime, org.org_id) == after
