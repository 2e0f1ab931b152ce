"""Issue 20 over HTTP: webhook endpoints (create, list, read, change, delete, rotate the
secret), the secret shown exactly once and stored nowhere in the clear, and bad input
refused with a clear 4xx that changes nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.crypto import Scope
from app.main import create_app
from app.runtime import Runtime
from app.services import webhooks
from app.settings import Mode
from app.storage import read_transaction, utcnow, write_transaction
from app.storage import webhooks as webhook_rows
from app.storage.schema import metadata
from tests.app.api.conftest import Org
from tests.app.api.helpers import audit_actions, audit_rows, error_code

RECEIVER = "http://127.0.0.1:9/hooks/wajah?token=receiver-token-123"
HOOK = {"url": RECEIVER, "events": ["enrollment.created"], "description": "CRM sync"}


@pytest.fixture
def org(new_org: Callable[[], Org]) -> Org:
    return new_org()


@pytest.fixture
def strict(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The operator's default: private destinations refused (the suite allows them)."""
    settings = runtime.settings.model_copy(update={"webhooks_allow_private": False})
    monkeypatch.setattr(runtime, "settings", settings)
    yield


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- the endpoints' life ---------------------------------------------------------------------


def test_create_read_list_change_rotate_and_delete(
    client: TestClient, org: Org, runtime: Runtime
) -> None:
    created = client.post("/v1/webhooks", headers=org.admin, json=HOOK)
    assert created.status_code == 201, created.text
    hook = created.json()
    secret = hook.pop("secret")
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert hook["id"].startswith("wh_")
    assert (hook["url"], hook["events"], hook["description"]) == (
        RECEIVER,
        ["enrollment.created"],
        "CRM sync",
    )
    assert hook["enabled"] is True and hook["disabled_at"] is None
    path = f"/v1/webhooks/{hook['id']}"

    read = client.get(path, headers=org.admin)
    assert read.status_code == 200 and read.json() == hook
    assert client.get("/v1/webhooks", headers=org.admin).json() == {
        "items": [hook],
        "next_cursor": None,
    }

    changed = client.patch(
        path,
        headers=org.admin,
        json={"events": ["subject.erased", "org.settings.changed"], "description": None},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["events"] == ["subject.erased", "org.settings.changed"]
    assert changed.json()["description"] is None

    rotated = client.post(f"{path}/rotate-secret", headers=org.admin, json={"overlap_s": 3600})
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret.startswith("whsec_") and new_secret != secret
    expires = parse_time(rotated.json()["previous_secret_expires_at"])
    assert timedelta(minutes=59) < expires - utcnow() <= timedelta(hours=1)
    assert webhooks.signing_secrets(runtime, org.org_id, hook["id"]) == [new_secret, secret]
    default = client.post(f"{path}/rotate-secret", headers=org.admin)  # no body: 24 h
    expires = parse_time(default.json()["previous_secret_expires_at"])
    assert timedelta(hours=23, minutes=59) < expires - utcnow() <= timedelta(hours=24)
    assert webhooks.signing_secrets(runtime, org.org_id, hook["id"])[1] == new_secret

    # A change reported to the endpoint leaves a pending delivery, which the delete drops.
    client.patch("/v1/org/settings", headers=org.admin, json={"duplicate_policy": "flag"})
    deleted = client.delete(path, headers=org.admin)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["id"] == hook["id"]
    assert deleted.json()["pending_deliveries_dropped"] == 1
    assert "secret" not in deleted.json()
    for gone in (client.get(path, headers=org.admin), client.delete(path, headers=org.admin)):
        assert gone.status_code == 404 and error_code(gone) == "webhook_not_found"
    assert client.get("/v1/webhooks", headers=org.admin).json()["items"] == []
    assert [a for a in audit_actions(runtime, org.org_id) if a.startswith("webhook.")] == [
        "webhook.create",
        "webhook.update",
        "webhook.rotate_secret",
        "webhook.rotate_secret",
        "webhook.delete",
    ]


def test_audit_names_the_host_never_the_query_or_the_secret(client: TestClient, org: Org) -> None:
    secret = client.post("/v1/webhooks", headers=org.admin, json=HOOK).json()["secret"]
    entries = client.get("/v1/audit", headers=org.admin).json()["items"]
    [create] = [e for e in entries if e["action"] == "webhook.create"]
    assert create["details"] == {"host": "127.0.0.1", "events": ["enrollment.created"]}
    text = json.dumps(entries)
    assert "receiver-token-123" not in text and secret not in text


def test_re_enabling_clears_the_failure_state(
    client: TestClient, org: Org, runtime: Runtime
) -> None:
    hook = client.post("/v1/webhooks", headers=org.admin, json=HOOK).json()
    path = f"/v1/webhooks/{hook['id']}"
    off = client.patch(path, headers=org.admin, json={"enabled": False}).json()
    assert off["enabled"] is False and off["disabled_reason"] == "disabled by the org"
    assert off["disabled_at"] is not None
    # As the delivery worker leaves an endpoint that kept failing.
    since = utcnow() - timedelta(days=3)
    with write_transaction(runtime.engine) as conn:
        failing = {"failing_since": since, "disabled_reason": "failing for 72 h"}
        webhook_rows.update_endpoint(conn, org.org_id, hook["id"], failing)
    assert client.get(path, headers=org.admin).json()["failing_since"] is not None

    on = client.patch(path, headers=org.admin, json={"enabled": True})
    assert on.status_code == 200, on.text
    assert on.json()["enabled"] is True
    assert (on.json()["disabled_at"], on.json()["disabled_reason"], on.json()["failing_since"]) == (
        None,
        None,
        None,
    )


def test_lists_page_with_an_opaque_cursor(client: TestClient, org: Org) -> None:
    made = [
        client.post("/v1/webhooks", headers=org.admin, json=HOOK).json()["id"] for _ in range(5)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/webhooks", headers=org.admin, params=params).json()
        seen += [h["id"] for h in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made
    bad = client.get("/v1/webhooks", headers=org.admin, params={"cursor": "not a cursor"})
    assert bad.status_code == 422 and error_code(bad) == "invalid_cursor"


def test_an_org_has_at_most_20_endpoints(client: TestClient, org: Org) -> None:
    for _ in range(webhooks.MAX_ENDPOINTS_PER_ORG):
        assert client.post("/v1/webhooks", headers=org.admin, json=HOOK).status_code == 201
    refused = client.post("/v1/webhooks", headers=org.admin, json=HOOK)
    assert refused.status_code == 409 and error_code(refused) == "webhook_limit_reached"
    assert len(client.get("/v1/webhooks", headers=org.admin).json()["items"]) == 20


def test_webhooks_need_the_admin_scope(client: TestClient, org: Org) -> None:
    enroller = org.key(Scope.ENROLL, Scope.MATCH)
    assert client.post("/v1/webhooks", headers=enroller, json=HOOK).status_code == 403
    assert client.get("/v1/webhooks", headers=enroller).status_code == 403
    assert client.get("/v1/webhooks").status_code == 401


# --- the secret --------------------------------------------------------------------------------


def _stored_values(runtime: Runtime) -> Iterator[tuple[str, Any]]:
    """Every text, JSON and binary value of every table."""
    with read_transaction(runtime.engine) as conn:
        for table in metadata.sorted_tables:
            columns = [
                c
                for c in table.columns
                if isinstance(c.type, sa.String | sa.Text | sa.LargeBinary | sa.JSON)
            ]
            if not columns:
                continue
            for row in conn.execute(sa.select(*columns)):
                for column, value in zip(columns, row, strict=True):
                    if value is not None:
                        yield f"{table.name}.{column.name}", value


def _holds(value: Any, needles: list[bytes]) -> bool:
    if isinstance(value, memoryview | bytearray):
        value = bytes(value)
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    if isinstance(value, str):
        raw = value.encode()
    return any(n in raw for n in needles)


def test_the_secret_is_shown_once_and_kept_nowhere_in_the_clear(
    runtime: Runtime, org: Org, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[str] = []
    with TestClient(create_app(runtime.settings, runtime)) as client:
        retry = {**org.admin, "Idempotency-Key": "hook-1"}
        first = client.post("/v1/webhooks", headers=retry, json=HOOK)
        replay = client.post("/v1/webhooks", headers=retry, json=HOOK)
        assert first.status_code == replay.status_code == 201
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json() == {**first.json(), "secret": None}
        path = f"/v1/webhooks/{first.json()['id']}"
        rotated = client.post(f"{path}/rotate-secret", headers=org.admin, json={"overlap_s": 60})
        answers = [
            r.text
            for r in (
                first,
                replay,
                rotated,
                client.get(path, headers=org.admin),
                client.get("/v1/webhooks", headers=org.admin),
                client.patch(path, headers=org.admin, json={"description": "again"}),
                client.get("/v1/audit", headers=org.admin),
            )
        ]
    # The client is closed: its request log was written (flushed at shutdown).
    secrets = [first.json()["secret"], rotated.json()["secret"]]
    for secret in secrets:
        assert sum(a.count(secret) for a in answers) == 1
    assert webhooks.signing_secrets(runtime, org.org_id, first.json()["id"]) == secrets[::-1]

    needles = [s.encode() for s in secrets]
    needles += [s[len("whsec_") :].encode() for s in secrets]  # its base64 alone
    needles += [base64.b64decode(s[len("whsec_") :]) for s in secrets]  # its 32 bytes
    stored = list(_stored_values(runtime))
    found = [where for where, value in stored if _holds(value, needles)]
    assert found == []
    # The scan does read the rows the secret lives beside (and the request log, flushed).
    assert ("webhook_endpoints.url", RECEIVER) in stored
    assert any(w == "webhook_endpoints.secret_sealed" for w, _ in stored)
    assert any(w == "idempotency_keys.response_body" for w, _ in stored)
    assert any(w.startswith("request_log.") for w, _ in stored)
    assert not any(s in caplog.text for s in secrets)
    assert not any(s[len("whsec_") :] in caplog.text for s in secrets)


# --- bad input -----------------------------------------------------------------------------


def _state(client: TestClient, org: Org, runtime: Runtime) -> tuple[Any, int]:
    return client.get("/v1/webhooks", headers=org.admin).json(), audit_rows(runtime, org.org_id)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({**HOOK, "url": "ftp://example.com/hooks"}, "invalid_webhook_url"),
        ({**HOOK, "url": "/hooks"}, "invalid_webhook_url"),
        ({**HOOK, "url": "http://"}, "invalid_webhook_url"),
        ({**HOOK, "url": "https://user:pass@127.0.0.1/hooks"}, "invalid_webhook_url"),
        ({**HOOK, "url": "https://127.0.0.1/" + "a" * 2048}, "invalid_webhook_url"),
        ({**HOOK, "url": "https://127.0.0.1/a b"}, "invalid_webhook_url"),
        ({**HOOK, "url": "https://127.0.0.1/\x00"}, "invalid_webhook_url"),
        ({**HOOK, "url": "https://127.0.0.1:99999/"}, "invalid_webhook_url"),
        ({**HOOK, "url": 42}, "invalid_request"),
        ({**HOOK, "events": ["enrollment.created", "subject.deleted"]}, "unknown_event_type"),
        ({**HOOK, "events": ["*"]}, "unknown_event_type"),
        ({**HOOK, "events": []}, "invalid_request"),
        ({**HOOK, "events": "enrollment.created"}, "invalid_request"),
        ({**HOOK, "description": "x" * 501}, "invalid_request"),
        ({**HOOK, "description": "bad\x00text"}, "invalid_request"),
        ({**HOOK, "secret": "whsec_mine"}, "invalid_request"),
        ({"events": ["enrollment.created"]}, "invalid_request"),
    ],
)
def test_create_refuses_bad_input(
    client: TestClient, org: Org, runtime: Runtime, body: dict[str, Any], code: str
) -> None:
    before = _state(client, org, runtime)
    refused = client.post("/v1/webhooks", headers=org.admin, json=body)
    assert refused.status_code == 422, refused.text
    assert error_code(refused) == code
    assert _state(client, org, runtime) == before


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://127.0.0.1/hooks", "IP address"),
        ("https://[::1]/hooks", "IP address"),
        ("https://169.254.169.254/latest/meta-data", "IP address"),
        ("https://localhost/hooks", "loopback"),
        ("https://no-such-host.invalid/hooks", "does not resolve"),
    ],
)
def test_private_destinations_are_refused_unless_allowed(
    client: TestClient, org: Org, runtime: Runtime, strict: None, url: str, why: str
) -> None:
    before = _state(client, org, runtime)
    refused = client.post("/v1/webhooks", headers=org.admin, json={**HOOK, "url": url})
    assert refused.status_code == 422, refused.text
    assert error_code(refused) == "webhook_destination_forbidden"
    assert why in refused.json()["error"]["message"]
    assert _state(client, org, runtime) == before


def test_changing_the_url_is_checked_like_creating_it(
    client: TestClient, org: Org, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = client.post("/v1/webhooks", headers=org.admin, json=HOOK).json()
    path = f"/v1/webhooks/{hook['id']}"
    production = runtime.settings.model_copy(update={"mode": Mode.PRODUCTION})
    monkeypatch.setattr(runtime, "settings", production)
    before = _state(client, org, runtime)
    for body, code in [
        ({"url": "http://127.0.0.1:9/plain"}, "invalid_webhook_url"),  # https in production
        ({"url": "gopher://127.0.0.1/"}, "invalid_webhook_url"),
        ({"events": ["enrollment.created", "nope"]}, "unknown_event_type"),
        ({"enabled": "yes"}, "invalid_request"),
        ({"url": None}, "invalid_request"),
        ({"secret_sealed": "x"}, "invalid_request"),
    ]:
        refused = client.patch(path, headers=org.admin, json=body)
        assert refused.status_code == 422, (body, refused.text)
        assert error_code(refused) == code, body
    assert _state(client, org, runtime) == before
    https = client.patch(path, headers=org.admin, json={"url": "https://127.0.0.1:9/tls"})
    assert https.status_code == 200 and https.json()["url"] == "https://127.0.0.1:9/tls"


def test_another_orgs_webhook_is_404_like_a_missing_one(
    client: TestClient, new_org: Callable[[], Org], runtime: Runtime
) -> None:
    owner, other = new_org(), new_org()
    hook = client.post("/v1/webhooks", headers=owner.admin, json=HOOK).json()
    before = _state(client, owner, runtime)
    for webhook_id in (hook["id"], "wh_00000000000000000000000000000000", "x" * 300, "%00"):
        path = f"/v1/webhooks/{webhook_id}"
        answers = [
            client.get(path, headers=other.admin),
            client.patch(path, headers=other.admin, json={"enabled": False}),
            client.delete(path, headers=other.admin),
            client.post(f"{path}/rotate-secret", headers=other.admin),
        ]
        for answer in answers:
            assert answer.status_code == 404, answer.text
            assert error_code(answer) == "webhook_not_found"
            assert answer.json()["error"]["message"] == "no such webhook"
    assert _state(client, owner, runtime) == before
    assert client.get("/v1/webhooks", headers=other.admin).json()["items"] == []


def test_garbage_bodies_are_refused(client: TestClient, org: Org, runtime: Runtime) -> None:
    hook = client.post("/v1/webhooks", headers=org.admin, json=HOOK).json()
    path = f"/v1/webhooks/{hook['id']}"
    before = _state(client, org, runtime)
    json_headers = {**org.admin, "Content-Type": "application/json"}
    for method, url, content in [
        ("POST", "/v1/webhooks", b"{not json"),
        ("POST", "/v1/webhooks", b'{"url": "http://127.0.0.1/", "events": ["enrollment.crea'),
        ("POST", "/v1/webhooks", b"\xff\xfe"),
        ("POST", "/v1/webhooks", b"[]"),
        ("PATCH", path, b"{"),
        ("POST", f"{path}/rotate-secret", b'{"overlap_s": 604801}'),
        ("POST", f"{path}/rotate-secret", b'{"overlap_s": -1}'),
        ("POST", f"{path}/rotate-secret", b'{"overlap_s": "1h"}'),
    ]:
        refused = client.request(method, url, headers=json_headers, content=content)
        assert refused.status_code == 422, (url, content, refused.text)
    other_type = client.post(
        "/v1/webhooks", headers={**org.admin, "Content-Type": "text/plain"}, content=b"url=x"
    )
    assert other_type.status_code == 415
    assert _state(client, org, runtime) == before
