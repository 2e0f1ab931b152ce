"""`screen_watchlists` at enrollment: a new applicant is screened in the same call."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from app.crypto import Scope
from tests.app.api.conftest import Org
from tests.app.api.helpers import b64


def _consortium(client: TestClient, a: Org, b: Org, fraudster: bytes) -> tuple[str, str]:
    for org in (a, b):
        assert (
            client.patch(
                "/v1/org/settings", headers=org.admin, json={"watchlist_sharing": True}
            ).status_code
            == 200
        )
    watchlist = client.post("/v1/watchlists", headers=a.admin, json={"name": "fraud"}).json()
    wid = watchlist["watchlist_id"]
    client.post(f"/v1/watchlists/{wid}/invitations", headers=a.admin, json={"org_id": b.org_id})
    assert client.post(f"/v1/watchlists/{wid}/membership", headers=b.admin).status_code == 200
    client.post(
        "/v1/subjects/fraud-1/enrollments", headers=a.admin, json={"frames": [b64(fraudster)]}
    )
    entries = client.post(
        f"/v1/watchlists/{wid}/entries",
        headers=a.admin,
        json={"subject_id": "fraud-1", "reason_code": "confirmed_fraud"},
    ).json()
    return wid, entries["entry_ids"][0]


def test_enrollment_screens_the_applicant(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    a, b = new_org(), new_org()
    wid, entry_id = _consortium(client, a, b, face_images["person2"])

    screened = client.post(
        "/v1/subjects/applicant-7/enrollments",
        headers=b.admin,
        json={"frames": [b64(face_images["person2"])], "screen_watchlists": True},
    )
    assert screened.status_code == 201, screened.text
    hits = screened.json()["watchlist_hits"]
    assert [(h["watchlist_id"], h["entry_id"], h["reason_code"]) for h in hits] == [
        (wid, entry_id, "confirmed_fraud")
    ]
    assert "fraud-1" not in screened.text and a.org_id not in screened.text
    for org, role in ((a, "contributor"), (b, "screener")):
        rows = client.get("/v1/audit?limit=5", headers=org.admin).json()["items"]
        hit_rows = [r for r in rows if r["action"] == "watchlist.hit"]
        assert [(r["target"], r["details"]["role"]) for r in hit_rows] == [(entry_id, role)]

    innocent = client.post(
        "/v1/subjects/applicant-8/enrollments",
        headers=b.admin,
        json={"frames": [b64(face_images["person0"])], "screen_watchlists": True},
    )
    assert innocent.json()["watchlist_hits"] == []
    plain = client.post(
        "/v1/subjects/applicant-9/enrollments",
        headers=b.admin,
        files=[("frames", ("f.jpg", face_images["person3"], "image/jpeg"))],
    )
    assert plain.json()["watchlist_hits"] is None


def test_screening_at_enrollment_needs_the_watchlist_scope(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    enroll_only = org.key(Scope.ENROLL)
    refused = client.post(
        "/v1/subjects/applicant-1/enrollments",
        headers=enroll_only,
        files=[("frames", ("f.jpg", face_images["person2"], "image/jpeg"))],
        data={"screen_watchlists": "true"},
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert client.get("/v1/subjects/applicant-1", headers=org.admin).status_code == 404
    garbage = client.post(
        "/v1/subjects/applicant-1/enrollments",
        headers=org.admin,
        files=[("frames", ("f.jpg", face_images["person2"], "image/jpeg"))],
        data={"screen_watchlists": "maybe"},
    )
    assert (garbage.status_code, garbage.json()["error"]["code"]) == (422, "invalid_request")
