"""Liveness over HTTP (issue 21, items 3 and 5), SQLite and PostgreSQL: the org setting in
GET/PATCH /v1/org/settings, `liveness` in enroll and verify answers, `liveness_challenge` in
JSON and multipart, and 422 `liveness_failed` that stores nothing."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.crypto import Scope
from app.services import challenges
from app.storage import read_transaction, subjects
from models.imaging import decode_image, encode_jpeg
from tests.app.api.conftest import Org
from tests.app.api.helpers import error_code
from tests.pad_renders import print_attack

SETTINGS = "/v1/org/settings"


@pytest.fixture(scope="module")
def print_of_tom(single_face_path: Path) -> bytes:
    return encode_jpeg(print_attack(decode_image(single_face_path.read_bytes())), 92)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _set_policy(client: TestClient, org: Org, **liveness: object) -> dict[str, object]:
    response = client.patch(SETTINGS, headers=org.admin, json={"liveness": liveness})
    assert response.status_code == 200, response.text
    return dict(response.json()["liveness"])


def test_the_org_setting_reads_and_patches(client: TestClient, new_org: Callable[[], Org]) -> None:
    org = new_org()
    assert client.get(SETTINGS, headers=org.admin).json()["liveness"] == {
        "policy": "off",
        "passive_threshold": 0.1826,
        "require_challenge": False,
    }
    assert _set_policy(client, org, policy="flag") == {
        "policy": "flag",
        "passive_threshold": 0.1826,
        "require_challenge": False,
    }
    for bad in (
        {"policy": "strict"},
        {"passive_threshold": 2},
        {"passive_threshold": "0.3"},
        {"require_challenge": 1},
        {"extra": True},
        {"policy": None},
    ):
        response = client.patch(SETTINGS, headers=org.admin, json={"liveness": bad})
        assert response.status_code == 422, (bad, response.text)
    assert client.get(SETTINGS, headers=org.admin).json()["liveness"]["policy"] == "flag"


def test_reject_is_422_liveness_failed_and_stores_nothing(
    client: TestClient, new_org: Callable[[], Org], print_of_tom: bytes
) -> None:
    org = new_org()
    _set_policy(client, org, policy="reject")
    response = client.post(
        "/v1/subjects/cust-1/enrollments",
        headers=org.key(Scope.ENROLL),
        json={"frames": [_b64(print_of_tom)]},
    )
    assert response.status_code == 422, response.text
    assert error_code(response) == "liveness_failed"
    details = response.json()["error"]["details"]
    assert details["reasons"] == ["passive_spoof"]
    assert details["liveness"]["passive"]["frames"][0]["live"] is False
    with read_transaction(org.runtime.engine) as conn:
        assert subjects.find_subject(conn, org.org_id, "cust-1") is None


def test_flag_answers_liveness_in_enroll_and_verify(
    client: TestClient,
    new_org: Callable[[], Org],
    face_images: dict[str, bytes],
    print_of_tom: bytes,
) -> None:
    org = new_org()
    _set_policy(client, org, policy="flag")
    enrolled = client.post(
        "/v1/subjects/cust-1/enrollments",
        headers=org.key(Scope.ENROLL),
        files=[("frames", ("tom.png", face_images["tom"], "image/png"))],
    )
    assert enrolled.status_code == 201, enrolled.text
    assert enrolled.json()["liveness"]["decision"] == "live"
    verdict = client.post(
        "/v1/verify",
        headers=org.key(Scope.MATCH),
        json={"subject_id": "cust-1", "probe": {"image": _b64(print_of_tom)}},
    )
    assert verdict.status_code == 200, verdict.text
    body = verdict.json()
    assert body["decision"] == "match" and body["liveness"]["decision"] == "spoof"
    assert body["liveness"]["reasons"] == ["passive_spoof"]


def test_a_challenge_nonce_travels_in_json_and_multipart(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    """One frame cannot answer a two-step challenge: the nonce reached the check (and is
    spent) either way, and a second use is 409."""
    org = new_org()
    headers = org.key(Scope.ENROLL)
    for form in (False, True):
        issued = challenges.create_challenge(org.runtime, org.org_id, None)
        if form:
            sent = client.post(
                "/v1/subjects/cust-m/enrollments",
                headers=headers,
                files=[("frames", ("tom.png", face_images["tom"], "image/png"))],
                data={"liveness_challenge": issued.nonce},
            )
        else:
            sent = client.post(
                "/v1/subjects/cust-j/enrollments",
                headers=headers,
                json={"frames": [_b64(face_images["tom"])], "liveness_challenge": issued.nonce},
            )
        assert sent.status_code == 201, sent.text
        report = sent.json()["liveness"]
        assert report["policy"] == "off" and report["decision"] == "spoof"
        assert report["challenge"]["challenge_id"] == issued.id
        assert report["reasons"] == ["too_few_frames"]
        again = client.post(
            "/v1/subjects/cust-x/enrollments",
            headers=headers,
            json={"frames": [_b64(face_images["tom"])], "liveness_challenge": issued.nonce},
        )
        assert again.status_code == 409 and error_code(again) == "liveness_challenge_used"
    garbage = client.post(
        "/v1/verify",
        headers=org.key(Scope.MATCH),
        json={
            "subject_id": "cust-j",
            "probe": {"image": _b64(face_images["tom"])},
            "liveness_challenge": "not-a-nonce",
        },
    )
    assert garbage.status_code == 404 and error_code(garbage) == "liveness_challenge_not_found"


def test_bad_liveness_input_is_a_clear_4xx_and_changes_nothing(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org, other = new_org(), new_org()
    tom = _b64(face_images["tom"])
    enrolled = client.post(
        "/v1/subjects/cust-1/enrollments", headers=org.key(Scope.ENROLL), json={"frames": [tom]}
    )
    assert enrolled.status_code == 201, enrolled.text
    match = org.key(Scope.MATCH)

    def verify(**fields: object) -> tuple[int, str]:
        body = {"subject_id": "cust-1", "probe": {"image": tom}, **fields}
        response = client.post("/v1/verify", headers=match, json=body)
        return response.status_code, error_code(response) if response.status_code >= 400 else ""

    foreign = challenges.create_challenge(other.runtime, other.org_id, None)
    assert verify(liveness_challenge=foreign.nonce) == (404, "liveness_challenge_not_found")
    assert verify(liveness_challenge="x" * 65)[0] == 422  # longer than any nonce
    assert verify(liveness_challenge=7)[0] == 422
    assert verify(liveness_frames=[tom]) == (422, "invalid_request")  # frames, no challenge
    issued = challenges.create_challenge(org.runtime, org.org_id, None)
    limit = org.runtime.settings.max_frames_per_request
    too_many = verify(liveness_challenge=issued.nonce, liveness_frames=[tom] * limit)
    assert too_many == (422, "too_many_frames")
    assert verify(liveness_challenge=issued.nonce, liveness_frames=["not base64!"])[0] == 422
    vector = {"vector": [0.1] * 128, "model_id": org.runtime.model_id}
    response = client.post(
        "/v1/verify",
        headers=match,
        json={"subject_id": "cust-1", "probe": vector, "liveness_challenge": issued.nonce},
    )
    assert response.status_code == 422 and error_code(response) == "invalid_request"
    # None of these used the org's challenge up: it still answers a bundle once.
    truncated = _b64(face_images["tom"][:200])
    answered = verify(liveness_challenge=issued.nonce, liveness_frames=[truncated])
    assert answered == (200, "")
    assert verify(liveness_challenge=issued.nonce) == (409, "liveness_challenge_used")
    # The foreign org's challenge was not touched either.
    assert challenges.consume_challenge(other.runtime, other.org_id, foreign.nonce).id == foreign.id
