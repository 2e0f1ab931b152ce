"""Issue 22: the OpenAPI document says what the server does, and the server does it.

Operation ids, named components, documented errors, examples; 405 with the whole `Allow`,
unreadable JSON 422, a body of another media type 415; one pagination style on every list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.crypto import Scope
from app.services.orgs import threshold_bounds
from tests.app.api.conftest import Org
from tests.app.api.helpers import error_code

VERBS = {
    "add", "close", "compare", "create", "enroll", "erase", "export", "get", "healthz", "invite",
    "join", "leave", "list", "metrics", "readyz", "rectify", "redeliver", "remove", "retire",
    "revoke", "rotate", "screen", "search", "update", "verify", "withdraw",
}  # fmt: skip


@pytest.fixture
def org(new_org: Callable[[], Org]) -> Org:
    return new_org()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def has_example(document: dict[str, Any], operation: dict[str, Any]) -> bool:
    for parameter in operation.get("parameters", []):
        if "example" in parameter or "examples" in parameter.get("schema", {}):
            return True
    bodies = list(operation.get("requestBody", {}).get("content", {}).values())
    for status, response in operation["responses"].items():
        if status.startswith("2"):
            bodies += list(response.get("content", {}).values())
    for body in bodies:
        if "example" in body or "examples" in body:
            return True
        if "examples" in resolve(document, body.get("schema", {})):
            return True
    return False


def test_operation_ids_are_short_unique_verb_phrases(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))
    for operation_id in ids:
        assert re.fullmatch(r"[a-z]+(_[a-z]+){0,3}", operation_id), operation_id
        assert operation_id.split("_")[0] in VERBS, operation_id
    assert {"enroll", "verify", "search", "list_subjects", "get_subject", "erase_subject"} <= set(
        ids
    )


def test_every_operation_is_described_with_an_example_and_its_errors(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert "$defs" not in json.dumps(document)  # what generated clients cannot resolve
    for method, path, operation in operations(document):
        label = f"{method.upper()} {path}"
        assert operation.get("summary") and operation.get("description"), label
        assert has_example(document, operation), label
        for status, response in operation["responses"].items():
            if int(status) >= 400 and path != "/readyz":  # its 503 is the readiness report
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (label, status)
                assert "Codes: `" in response["description"], (label, status)
        if path.startswith("/v1/") or path == "/metrics":
            assert {"401", "403", "429", "503"} <= set(operation["responses"]), label
        if "requestBody" in operation:
            assert {"413", "415", "422"} <= set(operation["responses"]), label


def test_enroll_bodies_are_named_components_bounded_by_the_settings(
    client: TestClient, org: Org
) -> None:
    document = client.get("/openapi.json").json()
    body = document["paths"]["/v1/subjects/{subject_id}/enrollments"]["post"]["requestBody"]
    assert {k: v["schema"] for k, v in body["content"].items()} == {
        "application/json": {"$ref": "#/components/schemas/EnrollJson"},
        "multipart/form-data": {"$ref": "#/components/schemas/EnrollForm"},
    }
    limit = org.runtime.settings.max_frames_per_request
    for name in ("EnrollJson", "EnrollForm"):
        frames = document["components"]["schemas"][name]["properties"]["frames"]
        assert (frames["minItems"], frames["maxItems"]) == (1, limit)
    threshold = document["components"]["schemas"]["OrgSettingsPatch"]["properties"]["threshold"]
    number = next(b for b in threshold["anyOf"] if b.get("type") == "number")
    assert (number["minimum"], number["maximum"]) == threshold_bounds(org.runtime)
    parameters = document["paths"]["/v1/subjects/{subject_id}/enrollments"]["post"]["parameters"]
    assert "Idempotency-Key" in [p["name"] for p in parameters]
    for status in ("DuplicateCheck", "SubjectStatus", "MembershipState", "Decision"):
        assert "enum" in document["components"]["schemas"][status]


def test_405_allows_every_method_of_the_path(client: TestClient, org: Org) -> None:
    for path, allowed in (
        ("/v1/subjects/cust-1", "DELETE, GET, PATCH"),
        ("/v1/api-keys", "GET, POST"),
        ("/v1/org/settings", "GET, PATCH"),
        ("/v1/watchlists/wl_x/membership", "DELETE, POST"),
    ):
        for method in ("PUT", "OPTIONS"):
            response = client.request(method, path, headers=org.admin)
            assert (response.status_code, error_code(response)) == (405, "method_not_allowed")
            assert response.headers["Allow"] == allowed, (method, path)


def test_unreadable_json_is_422_and_another_media_type_415(client: TestClient, org: Org) -> None:
    json_type = {**org.admin, "Content-Type": "application/json"}
    for path, method in (("/v1/api-keys", "POST"), ("/v1/org/settings", "PATCH")):
        for content in (b"\xff\xfe", b'{"name": "a'):
            unreadable = client.request(method, path, headers=json_type, content=content)
            assert (unreadable.status_code, error_code(unreadable)) == (422, "invalid_request")
        for media in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
            other = client.request(
                method, path, headers={**org.admin, "Content-Type": media}, content=b"name=a"
            )
            assert (other.status_code, error_code(other)) == (415, "unsupported_media_type")
    problem = client.post(
        "/v1/api-keys",
        headers={**org.admin, "Content-Type": "application/problem+json"},
        json={"name": "suffix +json is JSON", "scopes": ["match"]},
    )
    assert problem.status_code == 201, problem.text


def page_through(client: TestClient, org: Org, path: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        page = client.get(path, headers=org.admin, params=params).json()
        assert set(page) == {"items", "next_cursor"}
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", cursor)


def test_every_list_pages_with_an_opaque_cursor(
    client: TestClient, new_org: Callable[[], Org]
) -> None:
    org = new_org()
    keys = [org.key(Scope.MATCH) for _ in range(4)]
    assert len(keys) == 4
    client.patch("/v1/org/settings", headers=org.admin, json={"watchlist_sharing": True})
    made = [
        client.post("/v1/watchlists", headers=org.admin, json={"name": f"list {n}"}).json()
        for n in range(3)
    ]
    listed_keys = client.get("/v1/api-keys", headers=org.admin).json()["items"]
    assert len(listed_keys) == 5
    assert page_through(client, org, "/v1/api-keys", 2) == listed_keys
    assert [w["watchlist_id"] for w in page_through(client, org, "/v1/watchlists", 2)] == [
        w["watchlist_id"] for w in made
    ]
    audit = page_through(client, org, "/v1/audit", 3)
    assert [e["seq"] for e in audit] == list(range(len(audit), 0, -1))
    # A cursor of the right shape that this API never issued is a position, not an error.
    made_up = client.get("/v1/api-keys", headers=org.admin, params={"cursor": "A" * 32})
    assert made_up.status_code == 200
    assert made_up.json()["items"] == listed_keys[:50]


def test_delete_answers_what_it_removed(client: TestClient, new_org: Callable[[], Org]) -> None:
    org = new_org()
    created = client.post(
        "/v1/api-keys", headers=org.admin, json={"name": "temp", "scopes": ["match"]}
    ).json()
    first = client.delete(f"/v1/api-keys/{created['key_id']}", headers=org.admin)
    again = client.delete(f"/v1/api-keys/{created['key_id']}", headers=org.admin)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert first.json()["key_id"] == created["key_id"]
    assert first.json()["revoked_at"] is not None
