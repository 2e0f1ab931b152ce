"""POST /v1/compare on real faces: selfies against card renders of the same and other people
(insightface's t1.jpg and Tom Hanks), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.crypto import Scope
from app.runtime import Runtime
from app.services import retention
from app.services.onboarding import open_source_document
from app.services.orgs import effective_threshold, org_settings
from app.storage import utcnow
from app.storage.schema import audit_log, idempotency_keys, source_documents
from models.pipeline import FacePipeline
from tests.app.api.conftest import Org
from tests.app.api.helpers import audit_actions, b64, error_code, object_keys, org_state
from tests.document_renders import document, face_crops, selfie

# t1.jpg's near-frontal faces (the others are turned: see tests/models/test_documents.py).
SAME, OTHER = 3, 2


@pytest.fixture(scope="module")
def crops(pipeline: FacePipeline, group_photo_path: Path, single_face_path: Path) -> list:
    found = face_crops(pipeline.detector, group_photo_path)
    hanks = cv2.imread(str(single_face_path))
    return [*found, cv2.copyMakeBorder(hanks, 30, 30, 30, 30, cv2.BORDER_REPLICATE)]


def _compare(
    client: TestClient,
    headers: dict[str, str],
    probe: bytes,
    reference: bytes,
    kind: str | None = None,
    enroll: dict[str, Any] | None = None,
    liveness_challenge: str | None = None,
    **kwargs: Any,
) -> Any:
    body: dict[str, Any] = {"probe": {"image": b64(probe)}, "reference": {"image": b64(reference)}}
    if kind is not None:
        body["reference"]["kind"] = kind
    if enroll is not None:
        body["enroll"] = enroll
    if liveness_challenge is not None:
        body["liveness_challenge"] = liveness_challenge
    return client.post("/v1/compare", headers=headers, json=body, **kwargs)


def _documents(runtime: Runtime, org_id: str) -> list[Any]:
    with runtime.engine.connect() as conn:
        return list(
            conn.execute(sa.select(source_documents).where(source_documents.c.org_id == org_id))
        )


def _nothing_stored(runtime: Runtime, org: Org, before: Any, objects: set[str]) -> None:
    assert org_state(runtime, org.org_id) == before
    assert _documents(runtime, org.org_id) == []
    assert set(object_keys(runtime)) == objects


# --- the decision ---------------------------------------------------------------------------


def test_a_selfie_matches_its_own_document_and_the_document_is_sealed(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    org = new_org()
    card = document(crops[SAME], portrait_px=110)
    before = set(object_keys(runtime))
    response = _compare(client, org.admin, selfie(crops[SAME]), card)
    assert response.status_code == 200, response.text
    body = response.json()
    threshold, source = effective_threshold(runtime, org_settings(runtime, org.org_id))
    assert body["decision"] == "match"
    assert body["score"] >= threshold == body["threshold"]
    assert body["threshold_source"] == source
    assert body["model_id"] == runtime.model_id
    assert body["reference_kind"] == "document"
    assert body["reference_rotation_degrees"] == 270  # the card was photographed sideways
    assert body["probe_quality"]["passed"] and body["reference_quality"]["passed"]
    assert body["enrollment"] is None
    # The document: one row, one sealed object under its id, opened only by the service.
    [row] = _documents(runtime, org.org_id)
    assert body["document_id"] == row.id == row.object_key and row.id.startswith("doc_")
    assert (row.subject_id, row.media_type, row.byte_size) == (None, "image/jpeg", len(card))
    assert set(object_keys(runtime)) - before == {row.id}
    sealed = runtime.objects.get(row.id)
    assert card not in sealed and card[:64] not in sealed and card[-64:] not in sealed
    assert not sealed.startswith(b"\xff\xd8\xff")
    assert open_source_document(runtime, org.org_id, row.id) == card
    assert open_source_document(runtime, new_org().org_id, row.id) is None  # another org's
    assert audit_actions(runtime, org.org_id)[-1] == "onboarding.compare"


@pytest.mark.parametrize("person", [SAME, OTHER, 5, 6])
def test_different_people_do_not_match(
    client: TestClient, new_org: Callable[[], Org], crops: list, person: int
) -> None:
    org = new_org()
    other = {SAME: OTHER, OTHER: 5, 5: 6, 6: SAME}[person]
    response = _compare(client, org.admin, selfie(crops[person]), document(crops[other]))
    assert response.status_code == 200, response.text
    assert response.json()["decision"] == "no_match"
    assert response.json()["score"] < response.json()["threshold"]


def test_multipart_gives_the_json_answer(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    org = new_org()
    probe, card = selfie(crops[5]), document(crops[5], portrait_px=140, blur_sigma=1.5)
    as_json = _compare(client, org.admin, probe, card).json()
    response = client.post(
        "/v1/compare",
        headers=org.admin,
        files={"probe": ("selfie.jpg", probe, "image/jpeg"), "reference": ("ktp.jpg", card)},
        data={"reference_kind": "document"},
    )
    assert response.status_code == 200, response.text
    as_form = response.json()
    assert as_form["decision"] == as_json["decision"] == "match"
    assert as_form["score"] == as_json["score"]
    assert as_form["document_id"] != as_json["document_id"]  # two calls, two documents
    assert len(_documents(runtime, org.org_id)) == 2


def test_a_photo_reference_is_compared_and_not_kept(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    org = new_org()
    before = set(object_keys(runtime))
    response = _compare(
        client, org.admin, selfie(crops[6]), selfie(crops[6], width=300), kind="photo"
    )
    assert response.status_code == 200, response.text
    assert response.json()["decision"] == "match"
    assert response.json()["document_id"] is None
    assert _documents(runtime, org.org_id) == [] and set(object_keys(runtime)) == before


# --- named failures, bad input: a clear 4xx and nothing stored --------------------------------


def _blank_card() -> bytes:
    from models.imaging import encode_jpeg

    return encode_jpeg(np.full((316, 500, 3), (214, 196, 170), np.uint8), quality=40)


@pytest.mark.parametrize(
    ("make_reference", "status", "code"),
    [
        (lambda c: _blank_card(), 422, "document_no_face"),
        (lambda c: document(c[SAME], portrait_px=40), 422, "document_face_too_small"),
        (lambda c: document(c[OTHER], portrait_px=110, blur_sigma=3.0), 422, "document_too_blurry"),
        (lambda c: document(c[4], portrait_px=110, rotate=None), 422, "document_face_pose"),
        (lambda c: document(c[SAME])[:2000], 422, "document_unreadable"),  # truncated JPEG
        (lambda c: b"%PDF-1.7 not an image", 422, "document_unreadable"),
        (lambda c: b"\xff\xd8\xff" + bytes(9 * 1024 * 1024), 413, "image_too_large"),
    ],
)
def test_a_bad_document_is_a_named_4xx_and_nothing_is_stored(
    client: TestClient,
    new_org: Callable[[], Org],
    runtime: Runtime,
    crops: list,
    make_reference: Callable[[list], bytes],
    status: int,
    code: str,
) -> None:
    org = new_org()
    before, objects = org_state(runtime, org.org_id), set(object_keys(runtime))
    response = _compare(client, org.admin, selfie(crops[SAME]), make_reference(crops))
    assert response.status_code == status, response.text
    assert error_code(response) in (code, "request_too_large")
    _nothing_stored(runtime, org, before, objects)


def test_a_bad_selfie_names_the_probe_and_nothing_is_stored(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    org = new_org()
    before, objects = org_state(runtime, org.org_id), set(object_keys(runtime))
    response = _compare(client, org.admin, _blank_card(), document(crops[SAME]))
    assert response.status_code == 422
    assert error_code(response) == "no_face"
    assert response.json()["error"]["message"].startswith("probe:")
    _nothing_stored(runtime, org, before, objects)


@pytest.mark.parametrize(
    "body",
    [
        {"probe": {"image": "not base64!"}, "reference": {"image": "AAAA"}},
        {"probe": {"image": "AAAA"}},  # no reference
        {"reference": {"image": "AAAA"}},  # no probe
        {"probe": {"image": "AAAA"}, "reference": {"image": "AAAA", "kind": "passport"}},
        {"probe": {"image": "AAAA"}, "reference": {"image": "AAAA"}, "extra": 1},
        {"probe": {"image": "AAAA"}, "reference": {"image": "AAAA"}, "enroll": {}},
        {
            "probe": {"image": "AAAA"},
            "reference": {"image": "AAAA"},
            "enroll": {"subject_id": "../x"},
        },
    ],
)
def test_garbage_json_is_422_and_nothing_is_stored(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, body: dict[str, Any]
) -> None:
    org = new_org()
    before, objects = org_state(runtime, org.org_id), set(object_keys(runtime))
    response = client.post("/v1/compare", headers=org.admin, json=body)
    assert response.status_code == 422, response.text
    assert error_code(response) == "invalid_request"
    _nothing_stored(runtime, org, before, objects)


def test_multipart_without_a_side_or_with_two_is_422(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    org = new_org()
    probe = selfie(crops[SAME])
    before, objects = org_state(runtime, org.org_id), set(object_keys(runtime))
    for files in (
        [("probe", ("a.jpg", probe))],
        [("probe", ("a.jpg", probe)), ("reference", ("b.jpg", probe)), ("probe", ("c", probe))],
    ):
        response = client.post("/v1/compare", headers=org.admin, files=files)
        assert response.status_code == 422, response.text
    response = client.post(
        "/v1/compare", headers={**org.admin, "Content-Type": "text/plain"}, content=b"hi"
    )
    assert response.status_code == 415
    _nothing_stored(runtime, org, before, objects)


def test_a_key_without_match_scope_is_403(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    org = new_org()
    enroller, matcher = org.key(Scope.ENROLL), org.key(Scope.MATCH)
    before, objects = org_state(runtime, org.org_id), set(object_keys(runtime))
    response = _compare(client, enroller, selfie(crops[SAME]), document(crops[SAME]))
    assert response.status_code == 403
    enroll = {"subject_id": "cust-1"}
    response = _compare(client, matcher, selfie(crops[SAME]), document(crops[SAME]), enroll=enroll)
    assert response.status_code == 403 and error_code(response) == "forbidden"
    _nothing_stored(runtime, org, before, objects)


# --- enroll in the same call ----------------------------------------------------------------


def test_a_match_enrolls_the_selfie_and_the_document_belongs_to_the_subject(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    org = new_org()
    probe = selfie(crops[SAME])
    response = _compare(
        client, org.admin, probe, document(crops[SAME]), enroll={"subject_id": "cust-7"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["decision"] == "match"
    enrollment = body["enrollment"]
    assert enrollment["subject_id"] == "cust-7" and enrollment["subject_created"] is True
    assert [f["accepted"] for f in enrollment["frames"]] == [True]
    [row] = _documents(runtime, org.org_id)
    assert row.subject_id == "cust-7"
    # Enroll's own path ran: the subject, its sealed frame, its audit row, the index.
    subject = client.get("/v1/subjects/cust-7", headers=org.admin).json()
    assert subject["enrollments"][0]["enrollment_id"] == enrollment["enrollment_id"]
    assert audit_actions(runtime, org.org_id)[-2:] == ["enrollment.create", "onboarding.compare"]
    verify = client.post(
        "/v1/verify",
        headers=org.admin,
        json={"subject_id": "cust-7", "probe": {"image": b64(probe)}},
    )
    assert verify.json()["decision"] == "match"
    # The export lists the document, never its bytes.
    export = client.get("/v1/subjects/cust-7/export", headers=org.admin).json()
    assert [d["document_id"] for d in export["source_documents"]] == [row.id]
    assert set(export["source_documents"][0]) == {
        "document_id", "media_type", "byte_size", "created_at"
    }  # fmt: skip


def test_no_match_enrolls_nothing(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    org = new_org()
    response = _compare(
        client,
        org.admin,
        selfie(crops[SAME]),
        document(crops[OTHER]),
        enroll={"subject_id": "cust-8"},
    )
    assert response.status_code == 200
    assert response.json()["decision"] == "no_match" and response.json()["enrollment"] is None
    assert client.get("/v1/subjects/cust-8", headers=org.admin).status_code == 404
    [row] = _documents(runtime, org.org_id)
    assert row.subject_id is None  # kept, swept by retention only


def test_another_orgs_subject_id_is_a_subject_of_the_callers_own(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    """Subject ids are each org's own references: org B's `cust-9` is nothing to org A, so
    A's call creates A's own `cust-9` and leaves B's untouched (a 4xx would tell A that B
    has such a subject)."""
    a, b = new_org(), new_org()
    probe, card = selfie(crops[SAME]), document(crops[SAME])
    assert (
        _compare(client, b.admin, probe, card, enroll={"subject_id": "cust-9"}).status_code == 200
    )
    b_before, b_export = (
        org_state(runtime, b.org_id),
        client.get("/v1/subjects/cust-9", headers=b.admin).json(),
    )
    response = _compare(client, a.admin, probe, card, enroll={"subject_id": "cust-9"})
    assert response.json()["enrollment"]["subject_created"] is True
    assert org_state(runtime, b.org_id).enrollments == b_before.enrollments
    assert client.get("/v1/subjects/cust-9", headers=b.admin).json() == b_export
    assert len(_documents(runtime, b.org_id)) == 1 and len(_documents(runtime, a.org_id)) == 1


def test_an_erased_subject_is_410_and_nothing_is_stored(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    org = new_org()
    probe, card = selfie(crops[SAME]), document(crops[SAME])
    _compare(client, org.admin, probe, card, enroll={"subject_id": "gone"})
    assert client.delete("/v1/subjects/gone", headers=org.admin).status_code == 200
    before, objects = org_state(runtime, org.org_id), set(object_keys(runtime))
    response = _compare(client, org.admin, probe, card, enroll={"subject_id": "gone"})
    assert response.status_code == 410 and error_code(response) == "subject_erased"
    _nothing_stored(runtime, org, before, objects)


def test_a_rejected_duplicate_stores_no_document(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    org = new_org()
    probe, card = selfie(crops[SAME]), document(crops[SAME])
    _compare(client, org.admin, probe, card, enroll={"subject_id": "first"})
    objects, documents = set(object_keys(runtime)), _documents(runtime, org.org_id)
    enroll = {"subject_id": "second", "duplicate_check": "reject"}
    response = _compare(client, org.admin, probe, card, enroll=enroll)
    assert response.status_code == 409 and error_code(response) == "duplicate_face"
    assert _documents(runtime, org.org_id) == documents
    assert set(object_keys(runtime)) == objects


# --- idempotency, erasure, retention ----------------------------------------------------------


def test_a_retry_with_the_idempotency_key_gets_the_same_answer_and_stores_nothing_twice(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    org = new_org()
    probe, card = selfie(crops[SAME]), document(crops[SAME])
    headers = {**org.admin, "Idempotency-Key": "onboard-42"}
    enroll = {"subject_id": "cust-42"}
    first = _compare(client, headers, probe, card, enroll=enroll)
    state, objects = org_state(runtime, org.org_id), set(object_keys(runtime))
    again = _compare(client, headers, probe, card, enroll=enroll)
    assert again.status_code == first.status_code == 200
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == first.json()
    assert org_state(runtime, org.org_id) == state and set(object_keys(runtime)) == objects
    assert len(_documents(runtime, org.org_id)) == 1
    # The same key with another request is refused.
    other = _compare(client, headers, probe, document(crops[OTHER]), enroll=enroll)
    assert other.status_code == 422 and error_code(other) == "idempotency_key_reused"
    # Without enroll the answer is stored with the document, too.
    plain = {**org.admin, "Idempotency-Key": "compare-only"}
    one, two = _compare(client, plain, probe, card), _compare(client, plain, probe, card)
    assert one.json() == two.json() and len(_documents(runtime, org.org_id)) == 2


def test_erasing_the_subject_deletes_its_document_row_and_object(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    org = new_org()
    probe = selfie(crops[SAME])
    key = {**org.admin, "Idempotency-Key": "erase-me"}
    _compare(client, key, probe, document(crops[SAME]), enroll={"subject_id": "erase-me"})
    [row] = _documents(runtime, org.org_id)
    unowned = _compare(client, org.admin, probe, document(crops[OTHER])).json()["document_id"]
    receipt = client.delete("/v1/subjects/erase-me", headers=org.admin).json()
    assert receipt["source_documents_deleted"] == 1
    assert [d.id for d in _documents(runtime, org.org_id)] == [unowned]
    assert row.object_key not in object_keys(runtime)
    assert open_source_document(runtime, org.org_id, row.id) is None
    with runtime.engine.connect() as conn:  # the stored answer went with the subject
        keys = conn.execute(
            sa.select(idempotency_keys.c.key).where(idempotency_keys.c.org_id == org.org_id)
        ).scalars()
        assert "erase-me" not in list(keys)


def test_the_retention_round_sweeps_documents_past_the_orgs_period(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    short, default = new_org(), new_org()
    patch = client.patch(
        "/v1/org/settings", headers=short.admin, json={"retention": {"source_documents_days": 30}}
    )
    assert patch.status_code == 200, patch.text
    probe, card = selfie(crops[SAME]), document(crops[SAME])
    kept = _compare(client, default.admin, probe, card).json()["document_id"]
    swept = _compare(client, short.admin, probe, card, enroll={"subject_id": "s"}).json()
    document_id = swept["document_id"]

    purged = retention.purge_source_documents(runtime, utcnow() + timedelta(days=31))
    assert purged.get(short.org_id) == 1 and default.org_id not in purged
    assert _documents(runtime, short.org_id) == [] and document_id not in object_keys(runtime)
    assert [d.id for d in _documents(runtime, default.org_id)] == [kept]
    assert audit_actions(runtime, short.org_id)[-1] == "retention.purge_source_documents"
    # The subject stays: only its document's period is over.
    assert client.get("/v1/subjects/s", headers=short.admin).json()["status"] == "active"

    purged = retention.purge_source_documents(runtime, utcnow() + timedelta(days=91))
    assert purged.get(default.org_id) == 1 and _documents(runtime, default.org_id) == []
    assert kept not in object_keys(runtime)


@pytest.mark.parametrize("days", [0, 3651, "30", 1.5, None])
def test_the_retention_setting_is_validated(
    client: TestClient, new_org: Callable[[], Org], days: object
) -> None:
    org = new_org()
    response = client.patch(
        "/v1/org/settings", headers=org.admin, json={"retention": {"source_documents_days": days}}
    )
    assert response.status_code == 422, response.text
    settings = client.get("/v1/org/settings", headers=org.admin).json()
    assert settings["retention"]["source_documents_days"] == 90


def test_document_bytes_are_nowhere_in_plaintext(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    org = new_org()
    card = document(crops[5], portrait_px=120)
    _compare(client, org.admin, selfie(crops[5]), card, enroll={"subject_id": "plain"})
    pieces = [card[i : i + 48] for i in range(0, len(card) - 48, len(card) // 8)]
    for key in object_keys(runtime):
        stored = runtime.objects.get(key)
        assert not any(piece in stored for piece in pieces), key
    with runtime.engine.connect() as conn:
        for table in (source_documents, audit_log):
            for row in conn.execute(sa.select(table)):
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        assert not any(piece in bytes(value) for piece in pieces)
                    elif isinstance(value, str):
                        assert b64(card)[:64] not in value


def test_a_key_rotation_rewraps_documents_and_they_still_open(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    from app.services import keys

    org = new_org()
    probe, card = selfie(crops[SAME]), document(crops[SAME])
    owned = _compare(client, org.admin, probe, card, enroll={"subject_id": "rot"}).json()
    unowned = _compare(client, org.admin, probe, document(crops[OTHER])).json()
    assert keys.dependents(runtime, org.org_id, keys.Family.ORG, 1)["source_documents"] == 2

    report = keys.rotate_org_keys(runtime, org.org_id)

    assert report.rewrapped["source_documents"] == 2 and not report.failed["source_documents"]
    assert {d.kek_version for d in _documents(runtime, org.org_id)} == {report.kek_version}
    assert keys.dependents(runtime, org.org_id, keys.Family.ORG, 1)["source_documents"] == 0
    keys.retire_kek_version(runtime, org.org_id, 1)
    keys.destroy_kek_version(runtime, org.org_id, 1)
    assert open_source_document(runtime, org.org_id, owned["document_id"]) == card
    assert open_source_document(runtime, org.org_id, unowned["document_id"]) is not None


def test_an_org_closure_purge_deletes_every_document_of_the_org(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    from app.services import closure

    org, bystander = new_org(), new_org()
    probe, card = selfie(crops[SAME]), document(crops[SAME])
    _compare(client, org.admin, probe, card, enroll={"subject_id": "closing"})
    _compare(client, org.admin, probe, document(crops[OTHER]))  # tied to no subject
    kept = _compare(client, bystander.admin, probe, card).json()["document_id"]
    keys = [d.object_key for d in _documents(runtime, org.org_id)]
    assert len(keys) == 2

    closure.close_org(runtime, org.org_id, grace_days=1)
    receipt = closure.purge_org(runtime, org.org_id, utcnow() + timedelta(days=2))

    assert receipt["subjects_erased"] == 1 and receipt["source_documents_deleted"] == 1
    assert _documents(runtime, org.org_id) == []
    assert not set(keys) & set(object_keys(runtime))
    assert [d.id for d in _documents(runtime, bystander.org_id)] == [kept]


def test_the_orphan_sweep_deletes_document_objects_no_row_references(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    org = new_org()
    live = _compare(client, org.admin, selfie(crops[SAME]), document(crops[SAME])).json()
    orphan = "doc_" + "0" * 31 + "1"  # what a crash between the put and the commit leaves
    runtime.objects.put(orphan, b"sealed bytes of a compare that never committed")

    retention.sweep_orphaned_frames(runtime, utcnow() + timedelta(hours=2))

    assert orphan not in object_keys(runtime)
    assert live["document_id"] in object_keys(runtime)


def test_multipart_enrolls_too_and_refuses_unknown_fields(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    org = new_org()
    files = {"probe": ("s.jpg", selfie(crops[5])), "reference": ("k.jpg", document(crops[5]))}
    refused = client.post("/v1/compare", headers=org.admin, files=files, data={"nik": "1"})
    assert refused.status_code == 422 and error_code(refused) == "invalid_request"
    assert _documents(runtime, org.org_id) == []
    response = client.post(
        "/v1/compare",
        headers=org.admin,
        files=files,
        data={"enroll_subject_id": "form-1", "duplicate_check": "flag"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["enrollment"]["subject_id"] == "form-1"
    assert response.json()["enrollment"]["duplicate_check"] == "flag"
    assert [d.subject_id for d in _documents(runtime, org.org_id)] == ["form-1"]


# --- liveness: the selfie is judged as verify judges its probe --------------------------------


def _policy(client: TestClient, org: Org, **liveness: object) -> None:
    response = client.patch("/v1/org/settings", headers=org.admin, json={"liveness": liveness})
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def printed_selfie(single_face_path: Path) -> bytes:
    from models.imaging import decode_image, encode_jpeg
    from tests.pad_renders import print_attack

    return encode_jpeg(print_attack(decode_image(single_face_path.read_bytes())), 92)


def test_reject_refuses_a_printed_selfie_and_keeps_nothing(
    client: TestClient,
    new_org: Callable[[], Org],
    runtime: Runtime,
    crops: list,
    printed_selfie: bytes,
) -> None:
    org = new_org()
    _policy(client, org, policy="reject")
    before, objects = org_state(runtime, org.org_id), set(object_keys(runtime))
    response = _compare(
        client, org.admin, printed_selfie, document(crops[6]), enroll={"subject_id": "p"}
    )
    assert response.status_code == 422, response.text
    assert error_code(response) == "liveness_failed"
    assert response.json()["error"]["details"]["reasons"] == ["passive_spoof"]
    assert _documents(runtime, org.org_id) == [] and set(object_keys(runtime)) == objects
    state = org_state(runtime, org.org_id)
    assert (state.subjects, state.enrollments, state.frames) == (0, 0, 0)
    assert state.audit == before.audit + 1  # the refusal, audited on its own
    assert audit_actions(runtime, org.org_id)[-1] == "onboarding.compare_liveness_rejected"


def test_flag_reports_the_spoof_next_to_the_match(
    client: TestClient,
    new_org: Callable[[], Org],
    runtime: Runtime,
    crops: list,
    printed_selfie: bytes,
) -> None:
    org = new_org()
    off = _compare(client, org.admin, printed_selfie, document(crops[6])).json()
    assert off["liveness"] == {
        "policy": "off",
        "decision": "not_checked",
        "reasons": [],
        "passive": None,
        "challenge": None,
        "require_challenge": False,
    }
    _policy(client, org, policy="flag")
    body = _compare(client, org.admin, printed_selfie, document(crops[6])).json()
    assert body["decision"] == "match"
    assert body["liveness"]["decision"] == "spoof"
    assert body["liveness"]["reasons"] == ["passive_spoof"]
    assert len(_documents(runtime, org.org_id)) == 2  # flag refuses nothing


def test_a_challenge_nonce_is_spent_once_even_when_the_selfie_is_enrolled(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime, crops: list
) -> None:
    """The selfie alone cannot answer a two-step challenge (`too_few_frames`); what matters
    here is that compare and the enrollment it makes check the nonce once between them."""
    from app.services import challenges

    org = new_org()
    issued = challenges.create_challenge(runtime, org.org_id, None)
    probe, card = selfie(crops[SAME]), document(crops[SAME])
    files = {"probe": ("s.jpg", probe), "reference": ("k.jpg", card)}
    data = {"enroll_subject_id": "nonce-1", "liveness_challenge": issued.nonce}
    response = client.post("/v1/compare", headers=org.admin, files=files, data=data)
    assert response.status_code == 200, response.text
    report = response.json()["liveness"]
    assert report["challenge"]["challenge_id"] == issued.id
    assert report["reasons"] == ["too_few_frames"]
    assert response.json()["enrollment"]["liveness"] == report
    objects, documents = set(object_keys(runtime)), _documents(runtime, org.org_id)
    again = _compare(client, org.admin, probe, card, liveness_challenge=issued.nonce)
    assert again.status_code == 409 and error_code(again) == "liveness_challenge_used"
    unknown = _compare(client, org.admin, probe, card, liveness_challenge="x" * 43)
    assert unknown.status_code == 404 and error_code(unknown) == "liveness_challenge_not_found"
    assert _documents(runtime, org.org_id) == documents and set(object_keys(runtime)) == objects
