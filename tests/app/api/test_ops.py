"""Liveness, readiness and security.txt."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from app.runtime import Runtime


def test_health_and_readiness(client: TestClient, runtime: Runtime) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert (body["status"], body["models"], body["database"], body["indexes"]) == (
        "ready",
        True,
        True,
        True,
    )
    assert body["model_id"] == runtime.model_id
    assert body["index"]["tampered_embeddings"] == 0


def test_security_txt(client: TestClient) -> None:
    response = client.get("/.well-known/security.txt")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    fields = dict(line.split(": ", 1) for line in response.text.strip().splitlines())
    assert fields["Contact"] == "mailto:security@wajah.dev"
    expires = datetime.strptime(fields["Expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(days=364) < expires - datetime.now(UTC) <= timedelta(days=365)


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    echoed = client.get("/healthz", headers={"X-Request-ID": "trace-42"})
    assert echoed.headers["x-request-id"] == "trace-42"
    made_up = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert made_up.headers["x-request-id"].startswith("req_")
    refused = client.get("/v1/subjects", headers={"X-Request-ID": "trace-43"})
    assert refused.json()["error"]["request_id"] == "trace-43"
