"""The KYC flow end to end over HTTP with the real default pack and real faces."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from tests.app.api.conftest import Org
from tests.app.api.helpers import b64


def test_enroll_verify_search_duplicate(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    enrolled = client.post(
        "/v1/subjects/cust-1/enrollments",
        headers=org.admin,
        json={"frames": [b64(face_images["person2"])], "duplicate_check": "flag"},
    )
    assert enrolled.status_code == 201, enrolled.text
    body = enrolled.json()
    assert body["subject_created"] is True
    assert [f["accepted"] for f in body["frames"]] == [True]
    assert len(body["frames"][0]["hashed_reference"]) == 64

    import cv2

    from models.imaging import decode_image, encode_jpeg

    recaptured = encode_jpeg(
        cv2.resize(decode_image(face_images["person2"]), None, fx=0.8, fy=0.8), 60
    )
    match = client.post(
        "/v1/verify",
        headers=org.admin,
        json={"subject_id": "cust-1", "probe": {"image": b64(recaptured)}},
    ).json()
    assert match["decision"] == "match"
    assert match["score"] > match["threshold"] == 0.363
    other = client.post(
        "/v1/verify",
        headers=org.admin,
        json={"subject_id": "cust-1", "probe": {"image": b64(face_images["person0"])}},
    ).json()
    assert other["decision"] == "no_match"

    found = client.post("/v1/search", headers=org.admin, json={"probe": {"image": b64(recaptured)}})
    assert found.json()["candidates"][0]["subject_id"] == "cust-1"

    second = client.post(
        "/v1/subjects/cust-2/enrollments",
        headers=org.admin,
        files=[("frames", ("again.jpg", recaptured, "image/jpeg"))],
        data={"duplicate_check": "flag"},
    )
    assert second.status_code == 201
    assert [d["subject_id"] for d in second.json()["duplicates"]] == ["cust-1"]
