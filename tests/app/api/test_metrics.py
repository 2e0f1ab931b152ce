"""`GET /metrics` (admin scope, bounded labels) and the JSON access log."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.crypto import Scope
from app.logs import JsonFormatter
from app.runtime import Runtime
from tests.app.api.conftest import Org
from tests.app.api.helpers import b64, enroll, error_code


def scrape(client: TestClient, org: Org) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = client.get("/metrics", headers=org.admin)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for got, v in found.get(name, []) if labels.items() <= got.items())


def test_metrics_need_an_admin_key(client: TestClient, new_org: Callable[[], Org]) -> None:
    org = new_org()
    assert error_code(client.get("/metrics")) == "unauthorized"
    matcher = client.get("/metrics", headers=org.key(Scope.MATCH))
    assert (matcher.status_code, error_code(matcher)) == (403, "forbidden")
    bad = client.get("/metrics", headers={"Authorization": "Bearer wjh_live_nope_nope"})
    assert bad.status_code == 401


def test_metrics_count_requests_by_route_template_and_time_the_pipeline(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    before = scrape(client, org)
    enroll(client, org.admin, "nik-3171234567890001", face_images["person0"])
    probe = {"image": b64(face_images["person0"])}
    assert client.post("/v1/search", headers=org.admin, json={"probe": probe}).status_code == 200
    assert client.get("/v1/subjects/nik-3171234567890001", headers=org.admin).status_code == 200
    assert client.get("/v1/subjects/nobody-here", headers=org.admin).status_code == 404
    after = scrape(client, org)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/v1/subjects/{subject_id}"
    count = "wajah_http_request_duration_seconds_count"
    assert delta(count, route=route, method="GET", status="200") == 1
    assert delta(count, route=route, method="GET", status="404") == 1
    assert delta(count, route="/v1/search", method="POST", status="200") == 1
    for stage in ("decode", "detect", "gate", "embed"):
        assert delta("wajah_pipeline_stage_duration_seconds_count", stage=stage) == 2, stage
    assert delta("wajah_index_search_duration_seconds_count") == 1
    assert delta("wajah_audit_write_duration_seconds_count") >= 2  # enroll, search (+ read)
    assert value(after, "wajah_index_vectors", kind="org") >= 1
    assert value(after, "wajah_index_namespaces", kind="org") >= 1
    assert value(after, "wajah_http_requests_in_flight") == 1  # the scrape itself
    assert value(after, "wajah_inference_queue_depth") == 0
    # No label carries an org, key or subject: only bounded sets of values.
    text = client.get("/metrics", headers=org.admin).text
    assert org.org_id not in text and "nik-317" not in text and "nobody-here" not in text
    labels = {k for samples in after.values() for got, _ in samples for k in got}
    assert labels <= {"method", "route", "status", "stage", "kind", "le"}


def test_an_unmatched_path_is_one_label(client: TestClient, new_org: Callable[[], Org]) -> None:
    org = new_org()
    for n in range(3):
        client.get(f"/v1/random-{n}", headers=org.admin)
    found = scrape(client, org)
    routes = {got.get("route") for got, _ in found["wajah_http_request_duration_seconds_count"]}
    assert "unmatched" in routes
    assert not any(r and r.startswith("/v1/random") for r in routes)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == "wajah.access"]


def test_access_log_is_json_without_pii_or_keys(
    client: TestClient,
    new_org: Callable[[], Org],
    face_images: dict[str, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    org = new_org()
    subject = "nik-3171234567890002"
    enroll(client, org.admin, subject, face_images["person1"])
    with caplog.at_level(logging.INFO, logger="wajah.access"):
        client.get(f"/v1/subjects/{subject}", headers={**org.admin, "X-Request-ID": "trace-7"})
        client.get("/v1/subjects/also-secret/../x?nik=3171", headers=org.admin)
        client.get("/v1/subjects", headers={"Authorization": "Bearer wjh_live_abc_def"})
    lines = access_lines(caplog)
    assert len(lines) == 3
    first = lines[0]
    assert {k: first[k] for k in ("request_id", "method", "route", "status")} == {
        "request_id": "trace-7",
        "method": "GET",
        "route": "/v1/subjects/{subject_id}",
        "status": 200,
    }
    assert first["org_id"] == org.org_id and isinstance(first["key_id"], str)
    assert str(first["path"]).startswith("/v1/subjects/h:") and len(str(first["path"])) == 31
    assert isinstance(first["latency_ms"], float)
    assert {"time", "level", "logger", "message"} <= set(first)
    assert lines[2]["status"] == 401 and "org_id" not in lines[2]
    raw = "\n".join(json.dumps(line) for line in lines)
    for secret in (subject, "3171", "also-secret", org.admin_key, "wjh_live_abc_def"):
        assert secret not in raw, secret


def test_the_same_subject_gets_the_same_pseudonym(
    client: TestClient, new_org: Callable[[], Org], caplog: pytest.LogCaptureFixture
) -> None:
    org = new_org()
    with caplog.at_level(logging.INFO, logger="wajah.access"):
        for subject in ("a-1", "a-1", "a-2"):
            client.get(f"/v1/subjects/{subject}", headers=org.admin)
    paths = [line["path"] for line in access_lines(caplog)]
    assert paths[0] == paths[1] != paths[2]


def test_plain_and_json_formats(runtime: Runtime) -> None:
    record = logging.LogRecord("wajah", logging.WARNING, __file__, 1, "hello %s", ("x",), None)
    line = json.loads(JsonFormatter().format(record))
    assert (line["level"], line["message"], line["logger"]) == ("warning", "hello x", "wajah")
    record.secret_attribute = "must not appear"
    assert "must not appear" not in JsonFormatter().format(record)
