"""The API request log: a row per authenticated request (route template, method, status,
latency, key id, request id, time), written off the request path, listed by the org's admin
keys newest first with an opaque cursor; no PII, no subject id; another org sees nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.crypto import Scope
from app.runtime import Runtime
from app.services.request_logs import RequestLogBuffer, flush
from app.storage.retention import RequestLogRow
from app.storage.schema import request_log
from tests.app.api.conftest import Org
from tests.app.api.helpers import enroll, error_code

SECRET_SUBJECT = "nik-3171234567890123"
PII = {"nik": "3171234567890123", "email": "budi@example.co.id"}


def _flushed(client: TestClient, runtime: Runtime) -> None:
    flush(runtime, client.app.state.request_log)  # type: ignore[attr-defined]


def test_requests_are_logged_without_pii_or_subject_ids_and_listed_by_the_org(
    client: TestClient,
    runtime: Runtime,
    new_org: Callable[[], Org],
    face_images: dict[str, bytes],
) -> None:
    org, other = new_org(), new_org()
    enroll(client, org.admin, SECRET_SUBJECT, face_images["person2"], pii=PII)
    enroller = org.key(Scope.ENROLL)
    assert client.get(f"/v1/subjects/{SECRET_SUBJECT}", headers=enroller).status_code == 200
    missing = client.get("/v1/subjects/nobody", headers={**enroller, "X-Request-ID": "trace-1"})
    assert missing.status_code == 404
    assert client.get("/v1/subjects", headers={"Authorization": "Bearer nope"}).status_code == 401
    _flushed(client, runtime)

    page = client.get("/v1/request-logs", headers=org.admin)
    assert page.status_code == 200, page.text
    items = page.json()["items"]
    assert [(r["method"], r["route"], r["status"]) for r in items] == [
        ("GET", "/v1/subjects/{subject_id}", 404),
        ("GET", "/v1/subjects/{subject_id}", 200),
        ("POST", "/v1/subjects/{subject_id}/enrollments", 201),
    ]
    assert items[0]["request_id"] == "trace-1"
    assert items[0]["key_id"] == items[1]["key_id"] != items[2]["key_id"]
    assert all(r["latency_ms"] > 0 for r in items)
    assert all(datetime.fromisoformat(r["occurred_at"]).tzinfo is not None for r in items)

    # Nothing personal in the rows the database holds, nor in what the org is shown.
    with runtime.engine.connect() as conn:
        stored = [dict(r._mapping) for r in conn.execute(sa.select(request_log))]
    text = json.dumps(stored, default=str) + page.text
    for secret in (SECRET_SUBJECT, "nobody", *PII.values()):
        assert secret not in text
    assert client.get("/v1/request-logs", headers=other.admin).json() == {
        "items": [],
        "next_cursor": None,
    }


def test_request_logs_page_with_an_opaque_cursor(
    client: TestClient, runtime: Runtime, new_org: Callable[[], Org]
) -> None:
    org = new_org()
    for _ in range(5):
        assert client.get("/v1/subjects", headers=org.admin).status_code == 200
    _flushed(client, runtime)
    seen: list[str] = []
    cursor = None
    for _ in range(4):
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = client.get("/v1/request-logs", headers=org.admin, params=params).json()
        seen += [r["occurred_at"] for r in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and seen == sorted(seen, reverse=True)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
        ({"cursor": "A" * 33}, "invalid_cursor"),
        ({"limit": 0}, "invalid_request"),
        ({"limit": 201}, "invalid_request"),
        ({"limit": "ten"}, "invalid_request"),
    ],
)
def test_bad_request_log_queries_are_422(
    client: TestClient, new_org: Callable[[], Org], params: dict[str, object], code: str
) -> None:
    org = new_org()
    response = client.get("/v1/request-logs", headers=org.admin, params=params)
    assert response.status_code == 422 and error_code(response) == code


def test_only_admin_keys_list_request_logs(client: TestClient, new_org: Callable[[], Org]) -> None:
    org = new_org()
    response = client.get("/v1/request-logs", headers=org.key(Scope.ENROLL, Scope.MATCH))
    assert response.status_code == 403 and error_code(response) == "forbidden"
    assert client.get("/v1/request-logs").status_code == 401


def test_a_full_queue_drops_and_counts_rather_than_waiting() -> None:
    buffer = RequestLogBuffer(capacity=2)
    row = RequestLogRow("org_x", datetime.now(UTC), "r", "GET", "/v1/subjects", 200, 1.0, "k")
    assert [buffer.offer(row) for _ in range(3)] == [True, True, False]
    assert (len(buffer), buffer.dropped) == (2, 1)
    assert len(buffer.take()) == 2 and len(buffer) == 0
