"""Tenant isolation and authentication over HTTP.

Another org's ids are 404 (never 403: no existence oracle), another org's subjects never
appear in search or list, and keys are checked for validity, then scope.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.crypto import Scope
from app.runtime import Runtime
from app.storage.schema import api_keys, utcnow
from tests.app.api.conftest import Org
from tests.app.api.helpers import audit_rows, b64, enroll, error_code


def test_other_orgs_ids_are_404_on_every_resource(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    a, b = new_org(), new_org()
    enrolled = enroll(client, a.admin, "cust-a", face_images["person0"])
    a_key = client.post("/v1/api-keys", headers=a.admin, json={"name": "a", "scopes": ["match"]})
    assert a_key.status_code == 201
    a_key_id = a_key.json()["key_id"]
    before = audit_rows(a.runtime, a.org_id)

    probe = {"image": b64(face_images["person0"])}
    attempts = {
        "GET subject": client.get("/v1/subjects/cust-a", headers=b.admin),
        "DELETE subject": client.delete("/v1/subjects/cust-a", headers=b.admin),
        "retire": client.post(
            f"/v1/enrollments/{enrolled['enrollment_id']}/retire", headers=b.admin
        ),
        "verify": client.post(
            "/v1/verify", headers=b.admin, json={"subject_id": "cust-a", "probe": probe}
        ),
        "revoke key": client.delete(f"/v1/api-keys/{a_key_id}", headers=b.admin),
    }
    codes = {name: (r.status_code, error_code(r)) for name, r in attempts.items()}
    assert codes == {
        "GET subject": (404, "subject_not_found"),
        "DELETE subject": (404, "subject_not_found"),
        "retire": (404, "enrollment_not_found"),
        "verify": (404, "subject_not_found"),
        "revoke key": (404, "api_key_not_found"),
    }
    # The answers are those of an id that exists nowhere.
    unknown = client.get("/v1/subjects/cust-nobody", headers=b.admin)
    assert (unknown.status_code, error_code(unknown)) == (404, "subject_not_found")

    # A's data is untouched: subject, enrollment and key all still live, no audit row added.
    assert client.get("/v1/subjects/cust-a", headers=a.admin).json()["status"] == "active"
    keys = client.get("/v1/api-keys", headers=a.admin).json()["items"]
    assert [k["revoked_at"] for k in keys if k["key_id"] == a_key_id] == [None]
    match = client.post(
        "/v1/verify", headers=a.admin, json={"subject_id": "cust-a", "probe": probe}
    ).json()
    assert match["decision"] == "match"
    assert audit_rows(a.runtime, a.org_id) == before + 1  # A's own verify, nothing of B's


def test_other_org_never_sees_subjects_even_with_the_identical_image(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    a, b = new_org(), new_org()
    image = face_images["person1"]
    enroll(client, a.admin, "shared-id", image)
    enroll(client, a.admin, "a-only", face_images["person3"])
    probe = {"probe": {"image": b64(image)}, "top_k": 100}

    empty = client.post("/v1/search", headers=b.admin, json=probe).json()
    assert (empty["candidates"], empty["gallery_size"]) == ([], 0)
    assert client.get("/v1/subjects", headers=b.admin).json() == {
        "items": [],
        "next_cursor": None,
    }

    # B enrolls the very same image (under the same client id, and a flag check finds
    # nothing of A's): B's search returns only B's subject.
    mine = enroll(client, b.admin, "shared-id", image, duplicate_check="flag")
    assert (mine["subject_created"], mine["duplicates"]) == (True, [])
    found = client.post("/v1/search", headers=b.admin, json=probe).json()
    assert [c["subject_id"] for c in found["candidates"]] == ["shared-id"]
    assert found["gallery_size"] == 1
    assert found["candidates"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    listed = client.get("/v1/subjects", headers=b.admin).json()
    assert [s["subject_id"] for s in listed["items"]] == ["shared-id"]
    audit = client.get("/v1/audit", headers=b.admin).json()["items"]
    assert {e["target"] for e in audit if e["action"] == "enrollment.create"} == {
        mine["enrollment_id"]
    }

    # A's view is unchanged by B's enrollment.
    theirs = client.post("/v1/search", headers=a.admin, json=probe).json()
    assert [c["subject_id"] for c in theirs["candidates"]] == ["shared-id"]
    assert theirs["gallery_size"] == 2
    a_subject = client.get("/v1/subjects/shared-id", headers=a.admin).json()
    b_subject = client.get("/v1/subjects/shared-id", headers=b.admin).json()
    a_refs = {e["hashed_reference"] for n in a_subject["enrollments"] for e in n["embeddings"]}
    b_refs = {e["hashed_reference"] for n in b_subject["enrollments"] for e in n["embeddings"]}
    assert a_refs.isdisjoint(b_refs)  # references are unlinkable across orgs


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer ",
        "Bearer not-a-key",
        "Basic dXNlcjpwYXNz",
        "Bearer wjh_live_0123456789abcdef0123456789abcdef_" + "x" * 43,
    ],
)
def test_missing_or_wrong_key_is_401(
    client: TestClient, new_org: Callable[[], Org], authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [
        ("GET", "/v1/subjects"),
        ("POST", "/v1/search"),
        ("GET", "/v1/audit"),
        ("DELETE", "/v1/subjects/x"),
    ]:
        response = client.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (method, path, response.text)
        assert error_code(response) == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_a_tampered_secret_of_a_real_key_is_401(
    client: TestClient, new_org: Callable[[], Org]
) -> None:
    org = new_org()
    token = org.admin_key
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    response = client.get("/v1/subjects", headers={"Authorization": f"Bearer {forged}"})
    assert (response.status_code, error_code(response)) == (401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_a_valid_key_without_the_scope_is_403(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    enroller, matcher = org.key(Scope.ENROLL), org.key(Scope.MATCH)
    before = audit_rows(org.runtime, org.org_id)
    probe = {"image": b64(face_images["person0"])}
    refused = [
        client.post("/v1/verify", headers=enroller, json={"subject_id": "x", "probe": probe}),
        client.post("/v1/search", headers=enroller, json={"probe": probe}),
        client.post(
            "/v1/subjects/x/enrollments", headers=matcher, json={"frames": [probe["image"]]}
        ),
        client.get("/v1/subjects", headers=matcher),
        client.delete("/v1/subjects/x", headers=matcher),
    ]
    for headers in (enroller, matcher):
        refused += [
            client.post("/v1/api-keys", headers=headers, json={"name": "n", "scopes": ["admin"]}),
            client.get("/v1/api-keys", headers=headers),
            client.delete("/v1/api-keys/key_x", headers=headers),
            client.get("/v1/org/settings", headers=headers),
            client.patch("/v1/org/settings", headers=headers, json={"threshold": 0.5}),
            client.get("/v1/audit", headers=headers),
        ]
    assert [(r.status_code, error_code(r)) for r in refused] == [(403, "forbidden")] * 17
    assert audit_rows(org.runtime, org.org_id) == before
    assert client.get("/v1/subjects", headers=org.admin).json()["items"] == []

    # The same keys do what their scopes allow.
    assert client.get("/v1/subjects", headers=enroller).status_code == 200
    assert (
        client.post(
            "/v1/search", headers=matcher, json={"probe": {"vector": [1.0] + [0.0] * 127}}
        ).status_code
        == 422  # a vector probe needs its model id: proof the request got past auth
    )


def test_a_key_is_judged_before_the_body(client: TestClient, new_org: Callable[[], Org]) -> None:
    """Routes check the key on their worker thread, after FastAPI has validated the body: the
    422 handler checks it first, so a bad body from a key without the scope is still 403."""
    org = new_org()
    enroller, matcher = org.key(Scope.ENROLL), org.key(Scope.MATCH)
    bad_bodies = [
        ("POST", "/v1/verify", enroller, {"subject_id": 7}),
        ("POST", "/v1/search", enroller, {"top_k": "many"}),
        ("PATCH", "/v1/org/settings", matcher, {"threshold": "high"}),
        ("POST", "/v1/watchlists", matcher, {}),
    ]
    for method, path, headers, body in bad_bodies:
        refused = client.request(method, path, headers=headers, json=body)
        assert (refused.status_code, error_code(refused)) == (403, "forbidden"), path
    # With the scope, the same bodies are what is wrong.
    for method, path, _, body in bad_bodies:
        headers = matcher if path in ("/v1/verify", "/v1/search") else org.admin
        invalid = client.request(method, path, headers=headers, json=body)
        assert (invalid.status_code, error_code(invalid)) == (422, "invalid_request"), path


def test_revoked_and_expired_keys_are_401(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime
) -> None:
    org = new_org()
    created = client.post(
        "/v1/api-keys", headers=org.admin, json={"name": "soon gone", "scopes": ["enroll"]}
    ).json()
    headers = {"Authorization": f"Bearer {created['api_key']}"}
    assert client.get("/v1/subjects", headers=headers).status_code == 200
    gone = client.delete(f"/v1/api-keys/{created['key_id']}", headers=org.admin)
    assert gone.status_code == 200  # DELETE answers what it removed, as it now is
    assert gone.json()["key_id"] == created["key_id"] and gone.json()["revoked_at"] is not None
    revoked = client.get("/v1/subjects", headers=headers)
    assert (revoked.status_code, error_code(revoked)) == (401, "unauthorized")
    assert revoked.headers["WWW-Authenticate"] == "Bearer"

    expiring = client.post(
        "/v1/api-keys",
        headers=org.admin,
        json={
            "name": "expires",
            "scopes": ["enroll"],
            "expires_in_days": 1,
        },
    ).json()
    expires = datetime.fromisoformat(expiring["expires_at"])
    assert timedelta(hours=23) < expires - utcnow() <= timedelta(days=1)
    headers = {"Authorization": f"Bearer {expiring['api_key']}"}
    assert client.get("/v1/subjects", headers=headers).status_code == 200
    with runtime.engine.begin() as conn:  # a day passes
        conn.execute(
            sa.update(api_keys)
            .where(api_keys.c.key_id == expiring["key_id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    # The edit went around the service, which caches the key: forget it, as a restart would.
    runtime.api_keys.clear()
    expired = client.get("/v1/subjects", headers=headers)
    assert (expired.status_code, error_code(expired)) == (401, "unauthorized")
    assert expired.headers["WWW-Authenticate"] == "Bearer"

    # An expiry of no days, or a date, is refused up front.
    for expiry in ({"expires_in_days": 0}, {"expires_at": "2099-01-01T00:00:00Z"}):
        refused = client.post(
            "/v1/api-keys", headers=org.admin, json={"name": "x", "scopes": ["enroll"], **expiry}
        )
        assert (refused.status_code, error_code(refused)) == (422, "invalid_request")
