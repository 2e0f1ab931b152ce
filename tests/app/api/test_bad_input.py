"""Promise 7: bad input on every endpoint gets a clear 4xx with a stable code, and changes
nothing (no subject, enrollment, frame, audit row or sealed object); never a 5xx.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image

from app.api.edge import max_body_bytes
from app.crypto.apikeys import parse_api_key
from app.runtime import Runtime
from models.imaging import encode_jpeg
from models.pipeline import FacePipeline
from tests.app.api.conftest import Org
from tests.app.api.helpers import b64, enroll, error_code, org_state
from tests.models.test_imaging import png_bomb

Expected = dict[str, tuple[int, str]]


@pytest.fixture(scope="module")
def bad_images(group_photo_path: Any) -> dict[str, bytes]:
    gif = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(gif, "GIF")
    jpeg_of_nothing = encode_jpeg(np.full((240, 320, 3), 128, np.uint8))
    return {
        "garbage": b"this is not an image, just some bytes " * 8,
        "gif": gif.getvalue(),
        "empty": b"",
        "bomb": png_bomb(),
        "no_face": jpeg_of_nothing,
        "two_faces": group_photo_path.read_bytes(),
    }


@pytest.fixture
def org(client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]) -> Org:
    made = new_org()
    enroll(client, made.admin, "cust-1", face_images["person0"])
    return made


def run_unchanged(client: TestClient, org: Org, calls: Iterator[tuple[str, Response]]) -> Expected:
    """Make the calls; assert each is refused below 500 and that the org holds what it held."""
    runtime: Runtime = org.runtime
    before = org_state(runtime, org.org_id)
    settings = client.get("/v1/org/settings", headers=org.admin).json()
    keys = client.get("/v1/api-keys", headers=org.admin).json()["items"]
    seen: Expected = {}
    for label, response in calls:
        assert response.status_code < 500, (label, response.text)
        body = response.json()
        assert set(body) == {"error"}, (label, body)
        assert {"code", "message", "request_id"} <= set(body["error"]), (label, body)
        seen[label] = (response.status_code, error_code(response))
    assert org_state(runtime, org.org_id) == before
    assert client.get("/v1/org/settings", headers=org.admin).json() == settings
    assert [k["key_id"] for k in client.get("/v1/api-keys", headers=org.admin).json()["items"]] == [
        k["key_id"] for k in keys
    ]
    return seen


def frame_codes(response: Response) -> list[str]:
    return [f["error"]["code"] for f in response.json()["error"]["details"]["frames"]]


# --- enroll ---------------------------------------------------------------------------------


def test_enroll_refuses_bad_input(
    client: TestClient,
    org: Org,
    face_images: dict[str, bytes],
    bad_images: dict[str, bytes],
    runtime: Runtime,
) -> None:
    good = face_images["person2"]
    url = "/v1/subjects/cust-2/enrollments"
    headers = org.admin
    responses: dict[str, Response] = {}

    def calls() -> Iterator[tuple[str, Response]]:
        def post(label: str, **kwargs: Any) -> tuple[str, Response]:
            path = kwargs.pop("url", url)
            response = client.post(path, headers={**headers, **kwargs.pop("extra", {})}, **kwargs)
            responses[label] = response
            return label, response

        for name in ("garbage", "gif", "empty", "bomb", "no_face", "two_faces"):
            yield post(f"json {name}", json={"frames": [b64(bad_images[name])]})
        yield post("json truncated jpeg", json={"frames": [b64(good[: len(good) // 2])]})
        yield post("json pose", json={"frames": [b64(face_images["person4"])]})
        yield post(
            "multipart bad frames",
            files=[
                ("frames", ("a.gif", bad_images["gif"], "image/gif")),
                ("frames", ("b.jpg", b"", "image/jpeg")),
                ("frames", ("c.png", bad_images["bomb"], "image/png")),
            ],
        )
        yield post("json 9 frames", json={"frames": [b64(good)] * 9})
        yield post("multipart 9 frames", files=[("frames", ("f.jpg", good, "image/jpeg"))] * 9)
        yield post("multipart 40 frames", files=[("frames", ("f.jpg", b"x", "image/jpeg"))] * 40)
        yield post("json no frames", json={"frames": []})
        yield post("multipart no frames", files=[("other", ("f.jpg", good, "image/jpeg"))])
        yield post("invalid base64", json={"frames": ["!!not base64!!"]})
        yield post("frames not a list", json={"frames": b64(good)})
        yield post("frame not a string", json={"frames": [123]})
        yield post("bad duplicate_check", json={"frames": [b64(good)], "duplicate_check": "x"})
        yield post("pii not an object", json={"frames": [b64(good)], "pii": "3171234567890123"})
        yield post("unknown field", json={"frames": [b64(good)], "selfie": True})
        yield post("unknown pii field", json={"frames": [b64(good)], "pii": {"name": "Budi"}})
        yield post("body is a list", json=[b64(good)])
        yield post("body is null", content=b"null", extra={"content-type": "application/json"})
        yield post(
            "malformed json", content=b'{"frames": [', extra={"content-type": "application/json"}
        )
        yield post("no content type", content=json.dumps({"frames": [b64(good)]}).encode())
        yield post("text/plain", content=b"frames", extra={"content-type": "text/plain"})
        yield post(
            "malformed multipart",
            content=b"--nope\r\ngarbage",
            extra={"content-type": "multipart/form-data; boundary=xyz"},
        )
        for nik in ("317123456789012", "31712345678901234", "3171abcd67890123", ""):
            yield post(f"nik {nik!r}", json={"frames": [b64(good)], "pii": {"nik": nik}})
        yield post(
            "multipart nik letters",
            files=[("frames", ("f.jpg", good, "image/jpeg"))],
            data={"nik": "NIK3171234567890"},
        )
        yield post("bad email", json={"frames": [b64(good)], "pii": {"email": "budi at bank"}})
        yield post("bad phone", json={"frames": [b64(good)], "pii": {"phone": "call me"}})
        yield post(
            "subject id 200 chars",
            url=f"/v1/subjects/{'a' * 200}/enrollments",
            json={"frames": [b64(good)]},
        )
        yield post(
            "subject id ../x", url="/v1/subjects/..%2Fx/enrollments", json={"frames": [b64(good)]}
        )
        yield post(
            "subject id with space",
            url="/v1/subjects/a%20b/enrollments",
            json={"frames": [b64(good)]},
        )
        yield post("subject id -x", url="/v1/subjects/-x/enrollments", json={"frames": [b64(good)]})
        yield post(
            "empty subject id", url="/v1/subjects//enrollments", json={"frames": [b64(good)]}
        )
        yield post(
            "idempotency key too long",
            json={"frames": [b64(good)]},
            extra={"Idempotency-Key": "k" * 300},
        )
        too_big = b"x" * (max_body_bytes(runtime.settings) + 1)
        yield post("oversized body", content=too_big, extra={"content-type": "application/json"})
        yield post(
            "content-length lies",
            content=b"{}",
            extra={"content-type": "application/json", "content-length": "9" * 30},
        )

    seen = run_unchanged(client, org, calls())
    assert seen == {
        "json garbage": (422, "no_usable_frame"),
        "json gif": (422, "no_usable_frame"),
        "json empty": (422, "no_usable_frame"),
        "json bomb": (422, "no_usable_frame"),
        "json no_face": (422, "no_usable_frame"),
        "json two_faces": (422, "no_usable_frame"),
        "json truncated jpeg": (422, "no_usable_frame"),
        "json pose": (422, "no_usable_frame"),
        "multipart bad frames": (422, "no_usable_frame"),
        "json 9 frames": (422, "too_many_frames"),
        "multipart 9 frames": (422, "too_many_frames"),
        "multipart 40 frames": (422, "too_many_frames"),
        "json no frames": (422, "invalid_request"),
        "multipart no frames": (422, "invalid_request"),
        "invalid base64": (422, "invalid_request"),
        "frames not a list": (422, "invalid_request"),
        "frame not a string": (422, "invalid_request"),
        "bad duplicate_check": (422, "invalid_request"),
        "pii not an object": (422, "invalid_request"),
        "unknown field": (422, "invalid_request"),
        "unknown pii field": (422, "invalid_request"),
        "body is a list": (422, "invalid_request"),
        "body is null": (422, "invalid_request"),
        "malformed json": (422, "invalid_request"),
        "no content type": (415, "unsupported_media_type"),
        "text/plain": (415, "unsupported_media_type"),
        "malformed multipart": (422, "invalid_request"),
        "nik '317123456789012'": (422, "invalid_pii"),
        "nik '31712345678901234'": (422, "invalid_pii"),
        "nik '3171abcd67890123'": (422, "invalid_pii"),
        "nik ''": (422, "invalid_pii"),
        "multipart nik letters": (422, "invalid_pii"),
        "bad email": (422, "invalid_pii"),
        "bad phone": (422, "invalid_pii"),
        "subject id 200 chars": (422, "invalid_request"),
        "subject id ../x": (404, "not_found"),
        "subject id with space": (422, "invalid_request"),
        "subject id -x": (422, "invalid_request"),
        "empty subject id": (404, "not_found"),
        "idempotency key too long": (422, "invalid_request"),
        "oversized body": (413, "request_too_large"),
        "content-length lies": (413, "request_too_large"),
    }
    assert frame_codes(responses["json garbage"]) == ["unsupported_image_type"]
    assert frame_codes(responses["json gif"]) == ["unsupported_image_type"]
    assert frame_codes(responses["json empty"]) == ["empty_image"]
    assert frame_codes(responses["json bomb"]) == ["image_dimensions_too_large"]
    assert frame_codes(responses["json no_face"]) == ["no_face"]
    assert frame_codes(responses["json two_faces"]) == ["multiple_faces"]
    assert frame_codes(responses["json truncated jpeg"]) == ["corrupt_image"]
    assert frame_codes(responses["json pose"]) == ["extreme_pose"]
    assert frame_codes(responses["multipart bad frames"]) == [
        "unsupported_image_type",
        "empty_image",
        "image_dimensions_too_large",
    ]
    assert responses["nik '317123456789012'"].json()["error"]["details"] == {"field": "nik"}
    # The subject was never created, so a good enrollment afterwards creates it.
    assert enroll(client, org.admin, "cust-2", good)["subject_created"] is True


def test_an_oversized_chunked_enrollment_is_413(
    client: TestClient, org: Org, runtime: Runtime
) -> None:
    chunk = b" " * 65536
    count = max_body_bytes(runtime.settings) // len(chunk) + 2
    response = client.post(
        "/v1/subjects/cust-2/enrollments",
        headers={**org.admin, "content-type": "application/json"},
        content=iter([chunk] * count),  # no Content-Length: the limit must count bytes
    )
    assert (response.status_code, error_code(response)) == (413, "request_too_large")


# --- verify and search ----------------------------------------------------------------------


def probe_cases(
    face_images: dict[str, bytes], bad_images: dict[str, bytes], runtime: Runtime
) -> Iterator[tuple[str, dict[str, Any], tuple[int, str]]]:
    """Bad probes, each with the (status, code) it must get."""
    dim, model = runtime.pipeline.dimension, runtime.model_id
    unit = [1.0] + [0.0] * (dim - 1)
    yield "garbage", {"image": b64(bad_images["garbage"])}, (415, "unsupported_image_type")
    yield "gif", {"image": b64(bad_images["gif"])}, (415, "unsupported_image_type")
    yield "empty image", {"image": ""}, (422, "empty_image")
    yield "bomb", {"image": b64(bad_images["bomb"])}, (413, "image_dimensions_too_large")
    yield "no face", {"image": b64(bad_images["no_face"])}, (422, "no_face")
    yield "two faces", {"image": b64(bad_images["two_faces"])}, (422, "multiple_faces")
    good = face_images["person0"]
    yield "truncated jpeg", {"image": b64(good[: len(good) // 2])}, (422, "corrupt_image")
    yield "invalid base64", {"image": "@@@"}, (422, "invalid_request")
    yield "image not a string", {"image": 7}, (422, "invalid_request")
    yield "neither", {}, (422, "invalid_probe")
    yield "both", {"image": b64(good), "vector": unit, "model_id": model}, (422, "invalid_probe")
    yield "vector without model", {"vector": unit}, (422, "invalid_probe")
    yield "vector other model", {"vector": unit, "model_id": "arcface-r50"}, (422, "invalid_probe")
    yield "vector too short", {"vector": unit[:-1], "model_id": model}, (422, "invalid_probe")
    yield "vector too long", {"vector": [*unit, 0.0], "model_id": model}, (422, "invalid_probe")
    yield "vector 512-d", {"vector": [0.1] * 512, "model_id": model}, (422, "invalid_probe")
    yield "vector empty", {"vector": [], "model_id": model}, (422, "invalid_probe")
    yield "vector zero", {"vector": [0.0] * dim, "model_id": model}, (422, "invalid_probe")
    yield "vector strings", {"vector": ["a"] * dim, "model_id": model}, (422, "invalid_request")
    yield "vector nested", {"vector": [unit], "model_id": model}, (422, "invalid_request")
    yield "unknown probe field", {"image": b64(good), "crop": True}, (422, "invalid_request")


def non_finite_bodies(dim: int, model: str) -> Iterator[tuple[str, bytes]]:
    """Vectors with NaN / Infinity (JSON extensions Python's parser accepts) or 1e999."""
    for name, token in (
        ("nan", "NaN"),
        ("inf", "Infinity"),
        ("-inf", "-Infinity"),
        ("1e999", "1e999"),
    ):
        values = ", ".join([token] + ["0.0"] * (dim - 1))
        yield name, f'{{"vector": [{values}], "model_id": "{model}"}}'.encode()


def test_verify_and_search_refuse_bad_input(
    client: TestClient,
    org: Org,
    face_images: dict[str, bytes],
    bad_images: dict[str, bytes],
    runtime: Runtime,
) -> None:
    expected: Expected = {}
    json_headers = {**org.admin, "content-type": "application/json"}

    def calls() -> Iterator[tuple[str, Response]]:
        for name, probe, outcome in probe_cases(face_images, bad_images, runtime):
            expected[f"verify {name}"] = expected[f"search {name}"] = outcome
            yield (
                f"verify {name}",
                client.post(
                    "/v1/verify", headers=org.admin, json={"subject_id": "cust-1", "probe": probe}
                ),
            )
            yield (
                f"search {name}",
                client.post("/v1/search", headers=org.admin, json={"probe": probe}),
            )
        for name, probe_json in non_finite_bodies(runtime.pipeline.dimension, runtime.model_id):
            expected[f"verify {name}"] = expected[f"search {name}"] = (422, "invalid_probe")
            yield (
                f"verify {name}",
                client.post(
                    "/v1/verify",
                    headers=json_headers,
                    content=b'{"subject_id": "cust-1", "probe": ' + probe_json + b"}",
                ),
            )
            yield (
                f"search {name}",
                client.post(
                    "/v1/search", headers=json_headers, content=b'{"probe": ' + probe_json + b"}"
                ),
            )
        probe = {"image": b64(face_images["person0"])}
        verify_cases: dict[str, tuple[Any, tuple[int, str]]] = {
            "unknown subject": (
                {"subject_id": "nobody", "probe": probe},
                (404, "subject_not_found"),
            ),
            "subject ../x": ({"subject_id": "../x", "probe": probe}, (422, "invalid_request")),
            "subject 200 chars": (
                {"subject_id": "a" * 200, "probe": probe},
                (422, "invalid_request"),
            ),
            "subject empty": ({"subject_id": "", "probe": probe}, (422, "invalid_request")),
            "subject missing": ({"probe": probe}, (422, "invalid_request")),
            "subject a number": ({"subject_id": 42, "probe": probe}, (422, "invalid_request")),
            "probe missing": ({"subject_id": "cust-1"}, (422, "invalid_request")),
            "probe a string": (
                {"subject_id": "cust-1", "probe": probe["image"]},
                (422, "invalid_request"),
            ),
            "unknown field": (
                {"subject_id": "cust-1", "probe": probe, "top_k": 1},
                (422, "invalid_request"),
            ),
            "body a list": ([probe], (422, "invalid_request")),
        }
        for name, (body, outcome) in verify_cases.items():
            expected[f"verify {name}"] = outcome
            yield f"verify {name}", client.post("/v1/verify", headers=org.admin, json=body)
        search_cases: dict[str, tuple[Any, tuple[int, str]]] = {
            "top_k 0": ({"probe": probe, "top_k": 0}, (422, "invalid_request")),
            "top_k 1000": ({"probe": probe, "top_k": 1000}, (422, "invalid_request")),
            "top_k -1": ({"probe": probe, "top_k": -1}, (422, "invalid_request")),
            "top_k string": ({"probe": probe, "top_k": "five"}, (422, "invalid_request")),
            "top_k float": ({"probe": probe, "top_k": 2.5}, (422, "invalid_request")),
            "unknown field": ({"probe": probe, "subject_id": "cust-1"}, (422, "invalid_request")),
        }
        for name, (body, outcome) in search_cases.items():
            expected[f"search {name}"] = outcome
            yield f"search {name}", client.post("/v1/search", headers=org.admin, json=body)
        for path in ("/v1/verify", "/v1/search"):
            expected[f"{path} malformed json"] = (422, "invalid_request")
            yield f"{path} malformed json", client.post(path, headers=json_headers, content=b"{")
            expected[f"{path} no content type"] = (422, "invalid_request")
            yield f"{path} no content type", client.post(path, headers=org.admin, content=b"x")
            expected[f"{path} oversized"] = (413, "request_too_large")
            yield (
                f"{path} oversized",
                client.post(
                    path,
                    headers=json_headers,
                    content=b" " * (max_body_bytes(runtime.settings) + 1),
                ),
            )

    seen = run_unchanged(client, org, calls())
    assert seen == expected


# --- reads, retire, erase -------------------------------------------------------------------


def test_reads_retire_and_erase_refuse_bad_input(client: TestClient, org: Org) -> None:
    def cursor(value: object) -> str:  # the shape cursors had before issue 22
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    cases: dict[str, tuple[str, str, tuple[int, str]]] = {
        "list limit 0": ("GET", "/v1/subjects?limit=0", (422, "invalid_request")),
        "list limit 1000": ("GET", "/v1/subjects?limit=1000", (422, "invalid_request")),
        "list limit x": ("GET", "/v1/subjects?limit=x", (422, "invalid_request")),
        "list cursor garbage": ("GET", "/v1/subjects?cursor=!!!", (422, "invalid_cursor")),
        "list cursor old shape": (
            "GET",
            f"/v1/subjects?cursor={cursor(['2026-01-01T00:00:00+00:00', 'sub_x'])}",
            (422, "invalid_cursor"),
        ),
        "list cursor 31 chars": ("GET", f"/v1/subjects?cursor={'A' * 31}", (422, "invalid_cursor")),
        "list cursor 33 chars": ("GET", f"/v1/subjects?cursor={'A' * 33}", (422, "invalid_cursor")),
        "list cursor padded": ("GET", f"/v1/subjects?cursor={'A' * 30}==", (422, "invalid_cursor")),
        "list cursor 600 chars": (
            "GET",
            f"/v1/subjects?cursor={'A' * 600}",
            (422, "invalid_cursor"),
        ),
        "list cursor NUL": ("GET", f"/v1/subjects?cursor={'A' * 31}%00", (422, "invalid_cursor")),
        "audit limit 0": ("GET", "/v1/audit?limit=0", (422, "invalid_request")),
        "audit limit 201": ("GET", "/v1/audit?limit=201", (422, "invalid_request")),
        "audit cursor 0": ("GET", "/v1/audit?cursor=0", (422, "invalid_cursor")),
        "audit cursor x": ("GET", "/v1/audit?cursor=x", (422, "invalid_cursor")),
        "audit cursor huge": ("GET", f"/v1/audit?cursor={10**30}", (422, "invalid_cursor")),
        "keys cursor x": ("GET", "/v1/api-keys?cursor=x", (422, "invalid_cursor")),
        "watchlists cursor x": ("GET", "/v1/watchlists?cursor=x", (422, "invalid_cursor")),
        "get subject 200 chars": ("GET", f"/v1/subjects/{'a' * 200}", (404, "subject_not_found")),
        "get subject unknown": ("GET", "/v1/subjects/nobody", (404, "subject_not_found")),
        "get subject ../x": ("GET", "/v1/subjects/..%2Fx", (404, "not_found")),
        "erase unknown": ("DELETE", "/v1/subjects/nobody", (404, "subject_not_found")),
        "erase 200 chars": ("DELETE", f"/v1/subjects/{'a' * 200}", (404, "subject_not_found")),
        "erase empty": ("DELETE", "/v1/subjects/", (405, "method_not_allowed")),
        "get subject NUL": ("GET", "/v1/subjects/a%00b", (404, "subject_not_found")),
        "erase NUL": ("DELETE", "/v1/subjects/a%00b", (404, "subject_not_found")),
        "retire unknown": (
            "POST",
            "/v1/enrollments/enr_0123456789abcdef0123456789abcdef/retire",
            (404, "enrollment_not_found"),
        ),
        "retire garbage id": (
            "POST",
            "/v1/enrollments/%00%01/retire",
            (404, "enrollment_not_found"),
        ),
        "retire 300 chars": (
            "POST",
            f"/v1/enrollments/{'e' * 300}/retire",
            (404, "enrollment_not_found"),
        ),
        "wrong method": ("PUT", "/v1/subjects/cust-1", (405, "method_not_allowed")),
        "unknown route": ("GET", "/v1/faces", (404, "not_found")),
    }
    seen = run_unchanged(
        client,
        org,
        (
            (name, client.request(method, path, headers=org.admin))
            for name, (method, path, _) in cases.items()
        ),
    )
    assert seen == {name: outcome for name, (_, _, outcome) in cases.items()}


# --- keys and settings ----------------------------------------------------------------------


def test_keys_and_settings_refuse_bad_input(client: TestClient, org: Org) -> None:
    def key(body: Any) -> Response:
        return client.post("/v1/api-keys", headers=org.admin, json=body)

    def patch(body: Any) -> Response:
        return client.patch("/v1/org/settings", headers=org.admin, json=body)

    nan = {**org.admin, "content-type": "application/json"}
    own_key_id = parse_api_key(org.admin_key).key_id
    cases: dict[str, tuple[Callable[[], Response], tuple[int, str]]] = {
        "key no name": (lambda: key({"scopes": ["match"]}), (422, "invalid_request")),
        "key empty name": (
            lambda: key({"name": "", "scopes": ["match"]}),
            (422, "invalid_request"),
        ),
        "key long name": (
            lambda: key({"name": "n" * 201, "scopes": ["match"]}),
            (422, "invalid_request"),
        ),
        "key no scopes": (lambda: key({"name": "n", "scopes": []}), (422, "invalid_request")),
        "key unknown scope": (
            lambda: key({"name": "n", "scopes": ["root"]}),
            (422, "invalid_request"),
        ),
        "key scopes a string": (
            lambda: key({"name": "n", "scopes": "admin"}),
            (422, "invalid_request"),
        ),
        "key expiry a string": (
            lambda: key({"name": "n", "scopes": ["match"], "expires_in_days": "7"}),
            (422, "invalid_request"),
        ),
        "key expiry no days": (
            lambda: key({"name": "n", "scopes": ["match"], "expires_in_days": 0}),
            (422, "invalid_request"),
        ),
        "key expiry 11 years": (
            lambda: key({"name": "n", "scopes": ["match"], "expires_in_days": 4017}),
            (422, "invalid_request"),
        ),
        "key expiry a fraction": (
            lambda: key({"name": "n", "scopes": ["match"], "expires_in_days": 1.5}),
            (422, "invalid_request"),
        ),
        "key expiry a date": (
            lambda: key({"name": "n", "scopes": ["match"], "expires_at": "2099-01-01T00:00:00Z"}),
            (422, "invalid_request"),
        ),
        "key unknown field": (
            lambda: key({"name": "n", "scopes": ["match"], "org_id": "org_x"}),
            (422, "invalid_request"),
        ),
        "revoke unknown": (
            lambda: client.delete("/v1/api-keys/key_nope", headers=org.admin),
            (404, "api_key_not_found"),
        ),
        "revoke NUL": (
            lambda: client.delete("/v1/api-keys/k%00", headers=org.admin),
            (404, "api_key_not_found"),
        ),
        "revoke own key": (
            lambda: client.delete(f"/v1/api-keys/{own_key_id}", headers=org.admin),
            (409, "cannot_revoke_own_key"),
        ),
        "revoke 300 chars": (
            lambda: client.delete(f"/v1/api-keys/{'k' * 300}", headers=org.admin),
            (404, "api_key_not_found"),
        ),
        "threshold too low": (lambda: patch({"threshold": 0.2}), (422, "invalid_settings")),
        "threshold too high": (lambda: patch({"threshold": 0.99}), (422, "invalid_settings")),
        "threshold negative": (lambda: patch({"threshold": -1}), (422, "invalid_settings")),
        "threshold a string": (lambda: patch({"threshold": "high"}), (422, "invalid_request")),
        "threshold NaN": (
            lambda: client.patch("/v1/org/settings", headers=nan, content=b'{"threshold": NaN}'),
            (422, "invalid_settings"),
        ),
        "threshold Infinity": (
            lambda: client.patch(
                "/v1/org/settings", headers=nan, content=b'{"threshold": Infinity}'
            ),
            (422, "invalid_settings"),
        ),
        "calibration too long": (
            lambda: patch({"threshold": 0.5, "threshold_calibration": "c" * 501}),
            (422, "invalid_request"),
        ),
        "policy unknown": (
            lambda: patch({"duplicate_policy": "sometimes"}),
            (422, "invalid_request"),
        ),
        "retention 0 days": (
            lambda: patch({"retention": {"frames_days": 0}}),
            (422, "invalid_request"),
        ),
        "retention 4000 days": (
            lambda: patch({"retention": {"frames_days": 4000}}),
            (422, "invalid_request"),
        ),
        "retention unknown": (
            lambda: patch({"retention": {"selfies_days": 5}}),
            (422, "invalid_request"),
        ),
        "retention a number": (lambda: patch({"retention": 30}), (422, "invalid_request")),
        "settings unknown field": (
            lambda: patch({"data_residency": "us"}),
            (422, "invalid_request"),
        ),
        "settings a list": (lambda: patch([{"threshold": 0.5}]), (422, "invalid_request")),
        "sharing a string": (
            lambda: patch({"watchlist_sharing": "maybe"}),
            (422, "invalid_request"),
        ),
    }
    seen = run_unchanged(client, org, ((name, call()) for name, (call, _) in cases.items()))
    assert seen == {name: outcome for name, (_, outcome) in cases.items()}


# --- fuzzing the OpenAPI document -----------------------------------------------------------


def test_schemathesis_finds_no_server_error(client: TestClient, org: Org) -> None:
    """Valid and invalid requests generated from the OpenAPI document: never a 5xx.

    Seeded (`derandomize`) and small: a smoke test of every operation, not a long fuzz.
    """
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    server_errors: list[tuple[str, str, int, str]] = []
    fuzzed: set[str] = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(
                max_examples=10,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case: Any) -> None:
                # A real key, so that generated requests reach the handlers behind auth.
                case.headers = {**(case.headers or {}), **org.admin}
                response = case.call()
                if response.status_code >= 500:
                    server_errors.append(
                        (
                            case.operation.label,
                            case.as_curl_command(),
                            response.status_code,
                            response.text[:300],
                        )
                    )

            try:
                call()
            except Unsatisfiable:  # nothing to make invalid (e.g. GET /healthz)
                assert mode == schemathesis.GenerationMode.NEGATIVE
            fuzzed.add(operation.label)
    assert server_errors == []
    paths = client.app.openapi()["paths"]
    assert fuzzed == {f"{m.upper()} {p}" for p, item in paths.items() for m in item}


def test_a_verify_that_fails_early_leaves_no_capture_queued(
    client: TestClient,
    runtime: Runtime,
    new_org: Callable[[], Org],
    face_images: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """verify starts the probe's capture before it looks the subject up; when the lookup
    fails, the queued capture is dropped, so failing requests cannot pile work up behind
    them on the inference pool."""
    import threading

    org = new_org()
    captured: list[bytes] = []
    real_capture = FacePipeline.capture

    def counting_capture(pipeline: FacePipeline, data: bytes) -> Any:
        captured.append(data)
        return real_capture(pipeline, data)

    monkeypatch.setattr(FacePipeline, "capture", counting_capture)
    release = threading.Event()
    # Hold every inference thread: the shared workers and the solo one.
    threads = runtime.inference.workers + (runtime.inference.solo is not None)
    blockers = [runtime.inference.submit(lambda _: release.wait(30)) for _ in range(threads)]
    try:
        body = {"subject_id": "nobody", "probe": {"image": b64(face_images["person0"])}}
        response = client.post("/v1/verify", json=body, headers=org.admin)
        assert response.status_code == 404 and error_code(response) == "subject_not_found"
    finally:
        release.set()
    for blocker in blockers:
        blocker.result()
    runtime.inference.run(lambda _: None)  # the queue has drained
    assert captured == []
    # The same request for an enrolled subject does run its capture.
    enroll(client, org.admin, "somebody", face_images["person0"])
    captured.clear()
    body = {"subject_id": "somebody", "probe": {"image": b64(face_images["person0"])}}
    assert client.post("/v1/verify", json=body, headers=org.admin).status_code == 200
    assert len(captured) == 1
