"""Free text with a NUL, another control character or a lone surrogate is a 422 everywhere
and stores nothing, on SQLite and on PostgreSQL (which cannot store a NUL in text at all).

Every request body's free-text field is tried, plus the path and query ids that reach the
database, and the command line's org name.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app.crypto import Scope
from app.errors import InvalidRequestError
from app.services.orgs import create_org
from tests.app.api.conftest import Org
from tests.app.api.helpers import b64, enroll, error_code, org_state

BAD = {
    "NUL": "a\x00b",
    "escape": "a\x1b[31mred",
    "C1": "a\x85b",
    "DEL": "a\x7fb",
}
# JSON can carry a lone surrogate (`"\ud800"`) that Python decodes and UTF-8 cannot encode:
# written into the raw body in place of this marker.
SURROGATE_MARKER = "SURROGATE"


@pytest.fixture
def sharing_org(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> Org:
    org = new_org()
    assert (
        client.patch(
            "/v1/org/settings", headers=org.admin, json={"watchlist_sharing": True}
        ).status_code
        == 200
    )
    enroll(client, org.admin, "cust-1", face_images["person0"])
    return org


def test_control_characters_in_free_text_are_refused_and_change_nothing(
    client: TestClient, sharing_org: Org, face_images: dict[str, bytes]
) -> None:
    org = sharing_org
    lists = org.key(Scope.WATCHLIST)
    watchlist = client.post("/v1/watchlists", headers=lists, json={"name": "fraud"}).json()
    wl = watchlist["watchlist_id"]
    image = b64(face_images["person1"])
    before = org_state(org.runtime, org.org_id)
    settings = client.get("/v1/org/settings", headers=org.admin).json()
    lists_before = client.get("/v1/watchlists", headers=lists).json()

    def bodies(bad: str) -> dict[str, tuple[str, str, dict[str, str], object]]:
        return {
            "api key name": ("POST", "/v1/api-keys", org.admin, {"name": bad, "scopes": ["match"]}),
            "calibration note": (
                "PATCH",
                "/v1/org/settings",
                org.admin,
                {"threshold": 0.5, "threshold_calibration": bad},
            ),
            "watchlist name": ("POST", "/v1/watchlists", lists, {"name": bad}),
            "watchlist region": ("POST", "/v1/watchlists", lists, {"name": "n", "region": bad}),
            "invited org id": ("POST", f"/v1/watchlists/{wl}/invitations", lists, {"org_id": bad}),
            "reason code": (
                "POST",
                f"/v1/watchlists/{wl}/entries",
                lists,
                {"subject_id": "cust-1", "reason_code": bad},
            ),
            "entry subject id": (
                "POST",
                f"/v1/watchlists/{wl}/entries",
                lists,
                {"subject_id": bad, "reason_code": "fraud"},
            ),
            "verify subject id": (
                "POST",
                "/v1/verify",
                org.admin,
                {"subject_id": bad, "probe": {"image": image}},
            ),
            "probe model id": (
                "POST",
                "/v1/search",
                org.admin,
                {"probe": {"vector": [0.1] * 128, "model_id": bad}},
            ),
            "enroll email": (
                "POST",
                "/v1/subjects/cust-2/enrollments",
                org.admin,
                {"frames": [image], "pii": {"email": f"{bad}@example.co.id"}},
            ),
        }

    refused: dict[str, tuple[int, str]] = {}
    for kind, bad in BAD.items():
        for what, (method, path, headers, body) in bodies(bad).items():
            response = client.request(method, path, headers=headers, json=body)
            refused[f"{what}, {kind}"] = (response.status_code, error_code(response))
            assert "must not contain control characters" in response.text, (what, kind)
    for what, (method, path, headers, body) in bodies(SURROGATE_MARKER).items():
        raw = json.dumps(body).replace(SURROGATE_MARKER, "a\\ud800b").encode()
        response = client.request(
            method, path, headers={**headers, "content-type": "application/json"}, content=raw
        )
        refused[f"{what}, lone surrogate"] = (response.status_code, error_code(response))

    # A multipart form's PII is not a JSON body: the service checks it (its own code).
    for kind, bad in BAD.items():
        response = client.post(
            "/v1/subjects/cust-3/enrollments",
            headers=org.admin,
            files=[("frames", ("f.jpg", face_images["person2"], "image/jpeg"))],
            data={"email": f"{bad}@example.co.id"},
        )
        refused[f"multipart email, {kind}"] = (response.status_code, error_code(response))

    multipart = {f"multipart email, {kind}": (422, "invalid_pii") for kind in BAD}
    assert {k: v for k, v in refused.items() if v != (422, "invalid_request")} == multipart
    assert org_state(org.runtime, org.org_id) == before
    assert client.get("/v1/org/settings", headers=org.admin).json() == settings
    assert client.get("/v1/watchlists", headers=lists).json() == lists_before


def test_ids_with_a_nul_in_the_path_or_query_are_not_found(
    client: TestClient, sharing_org: Org
) -> None:
    org = sharing_org
    lists = org.key(Scope.WATCHLIST)
    wl = client.post("/v1/watchlists", headers=lists, json={"name": "fraud"}).json()["watchlist_id"]
    before = org_state(org.runtime, org.org_id)
    calls = {
        "watchlist": ("GET", "/v1/watchlists/wl%00x"),
        "close watchlist": ("DELETE", "/v1/watchlists/wl%00x"),
        "remove member": ("DELETE", f"/v1/watchlists/{wl}/members/org%00x"),
        "withdraw entry": ("DELETE", f"/v1/watchlists/{wl}/entries?entry_id=e%00x"),
        "subjects cursor": ("GET", "/v1/subjects?cursor=a%00b"),
        "retire enrollment": ("POST", "/v1/enrollments/enr%00x/retire"),
    }
    for what, (method, path) in calls.items():
        response = client.request(method, path, headers=lists if "watchlist" in path else org.admin)
        assert 400 <= response.status_code < 500, (what, response.status_code, response.text)
    assert org_state(org.runtime, org.org_id) == before


def test_the_command_lines_org_name_is_checked_by_the_service(client: TestClient) -> None:
    runtime = client.app.state.runtime
    with pytest.raises(InvalidRequestError, match="must not contain control characters"):
        create_org(runtime, "Bank\x00Jago")
