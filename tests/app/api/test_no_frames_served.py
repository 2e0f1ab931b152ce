"""Promise 2: frames are sealed and never served.

Every route of the OpenAPI document is called as the owner of the frames, on success and on
refusal paths, and no response holds a frame's bytes, their base64, or an image's magic
bytes. Every file of the object store is sealed: no image magic, no frame bytes.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from httpx import Response

from app.main import create_app
from app.runtime import Runtime
from tests.app.api.conftest import Org
from tests.app.api.helpers import b64, enroll, object_keys

MAGIC = [b"\xff\xd8\xff", b"\x89PNG", b"/9j/", b"iVBOR"]


def frame_fingerprints(frame: bytes) -> list[bytes]:
    """Pieces any copy of the frame would contain: raw chunks and base64 at each alignment."""
    middle = len(frame) // 2
    pieces = [frame[:32], frame[middle : middle + 64], frame[-32:]]
    for shift in range(3):
        encoded = base64.b64encode(frame[middle + shift : middle + shift + 300])
        pieces.append(encoded[4:100])  # skip the padding-dependent edges
        urlsafe = base64.urlsafe_b64encode(frame[middle + shift : middle + shift + 300])
        pieces.append(urlsafe[4:100])
    return pieces


def assert_no_frame(response: Response, frames: list[bytes], label: str) -> None:
    body = response.content + "".join(f"{k}:{v}" for k, v in response.headers.items()).encode()
    for magic in MAGIC:
        assert magic not in body, f"{label}: image magic {magic!r} in the response"
    for frame in frames:
        for piece in frame_fingerprints(frame):
            assert piece not in body, f"{label}: frame bytes in the response"


def test_no_route_ever_returns_frame_bytes(
    client: TestClient,
    new_org: Callable[[], Org],
    face_images: dict[str, bytes],
    runtime: Runtime,
) -> None:
    org = new_org()
    jpeg, png = face_images["person0"], face_images["tom"]
    assert jpeg.startswith(b"\xff\xd8\xff") and png.startswith(b"\x89PNG")
    frames = [jpeg, png, face_images["person2"], face_images["person3"]]
    owner = org.admin

    # The subjects the calls below read, retire and erase; each enroll response is checked.
    responses: list[tuple[str, Response]] = []
    multipart = client.post(
        "/v1/subjects/cust-1/enrollments",
        headers={**owner, "Idempotency-Key": "frames-1"},
        files=[("frames", ("a.jpg", jpeg, "image/jpeg")), ("frames", ("b.png", png, "image/png"))],
        data={"duplicate_check": "flag", "nik": "3171234567890123"},
    )
    assert multipart.status_code == 201, multipart.text
    responses.append(("enroll multipart", multipart))
    replay = client.post(
        "/v1/subjects/cust-1/enrollments",
        headers={**owner, "Idempotency-Key": "frames-1"},
        files=[("frames", ("a.jpg", jpeg, "image/jpeg")), ("frames", ("b.png", png, "image/png"))],
        data={"duplicate_check": "flag", "nik": "3171234567890123"},
    )
    assert replay.headers["Idempotent-Replayed"] == "true"
    responses.append(("enroll replay", replay))
    to_retire = enroll(client, owner, "cust-2", face_images["person2"])
    enroll(client, owner, "cust-3", face_images["person3"])
    key_id = client.post("/v1/api-keys", headers=owner, json={"name": "k", "scopes": ["match"]})
    probe = {"image": b64(jpeg)}
    hook = {"url": "http://127.0.0.1:9/hooks", "events": ["enrollment.created"]}
    hook_id = client.post("/v1/webhooks", headers=owner, json=hook).json()["id"]

    def on_hook(suffix: str = "") -> str:
        return f"/v1/webhooks/{hook_id}{suffix}"

    def delivery() -> dict[str, Any]:  # of the enrollment.created of cust-4 (the first call)
        items: list[dict[str, Any]] = client.get(on_hook("/deliveries"), headers=owner).json()[
            "items"
        ]
        return items[0]

    calls: dict[tuple[str, str], Callable[[], list[Response]]] = {
        ("post", "/v1/subjects/{subject_id}/enrollments"): lambda: [
            client.post(
                "/v1/subjects/cust-4/enrollments",
                headers=owner,
                json={"frames": [b64(png), b64(b"garbage")], "duplicate_check": "flag"},
            ),
            # Refusals carry per-frame reports and candidates: still no frame in them.
            client.post(
                "/v1/subjects/cust-5/enrollments",
                headers=owner,
                json={"frames": [b64(face_images["person4"]), b64(jpeg[:500])]},
            ),
            client.post(
                "/v1/subjects/cust-6/enrollments",
                headers=owner,
                json={"frames": [b64(jpeg)], "duplicate_check": "reject"},
            ),
        ],
        # A document is sealed like a frame: neither the answer nor a refusal holds it.
        ("post", "/v1/compare"): lambda: [
            client.post(
                "/v1/compare",
                headers=owner,
                json={"probe": probe, "reference": {"image": b64(jpeg)}},
            ),
            client.post(
                "/v1/compare",
                headers=owner,
                json={
                    "probe": probe,
                    "reference": {"image": b64(png), "kind": "photo"},
                    "enroll": {"subject_id": "cust-7"},
                },
            ),
            client.post(
                "/v1/compare",
                headers=owner,
                json={"probe": probe, "reference": {"image": b64(jpeg[:500])}},
            ),
        ],
        ("get", "/v1/subjects"): lambda: [client.get("/v1/subjects", headers=owner)],
        ("get", "/v1/subjects/{subject_id}"): lambda: [
            client.get("/v1/subjects/cust-1", headers=owner)
        ],
        ("delete", "/v1/subjects/{subject_id}"): lambda: [
            client.delete("/v1/subjects/cust-3", headers=owner),
            client.get("/v1/subjects/cust-3", headers=owner),
        ],
        ("get", "/v1/subjects/{subject_id}/export"): lambda: [
            client.get("/v1/subjects/cust-1/export?include_vectors=true", headers=owner),
            client.get("/v1/subjects/cust-3/export", headers=owner),
        ],
        ("patch", "/v1/subjects/{subject_id}"): lambda: [
            client.patch(
                "/v1/subjects/cust-1", headers=owner, json={"pii": {"phone": "+6281234567890"}}
            ),
            client.patch("/v1/subjects/cust-1", headers=owner, json={"pii": {"nik": "1"}}),
        ],
        ("post", "/v1/enrollments/{enrollment_id}/retire"): lambda: [
            client.post(f"/v1/enrollments/{to_retire['enrollment_id']}/retire", headers=owner),
            client.get("/v1/subjects/cust-2", headers=owner),
        ],
        ("post", "/v1/verify"): lambda: [
            client.post("/v1/verify", headers=owner, json={"subject_id": "cust-1", "probe": probe}),
            client.post("/v1/verify", headers=owner, json={"subject_id": "cust-2", "probe": probe}),
        ],
        ("post", "/v1/search"): lambda: [
            client.post("/v1/search", headers=owner, json={"probe": probe, "top_k": 10})
        ],
        ("post", "/v1/webhooks"): lambda: [client.post("/v1/webhooks", headers=owner, json=hook)],
        ("get", "/v1/webhooks"): lambda: [client.get("/v1/webhooks", headers=owner)],
        ("get", "/v1/webhooks/{webhook_id}"): lambda: [client.get(on_hook(), headers=owner)],
        ("get", "/v1/webhooks/{webhook_id}/deliveries"): lambda: [
            client.get(on_hook("/deliveries"), headers=owner)
        ],
        ("get", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}"): lambda: [
            client.get(on_hook(f"/deliveries/{delivery()['id']}"), headers=owner)
        ],
        ("get", "/v1/webhook-events/{event_id}/deliveries"): lambda: [
            client.get(f"/v1/webhook-events/{delivery()['event_id']}/deliveries", headers=owner)
        ],
        ("post", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): lambda: [
            client.post(on_hook(f"/deliveries/{delivery()['id']}/redeliver"), headers=owner)
        ],
        ("patch", "/v1/webhooks/{webhook_id}"): lambda: [
            client.patch(on_hook(), headers=owner, json={"enabled": False})
        ],
        ("post", "/v1/webhooks/{webhook_id}/rotate-secret"): lambda: [
            client.post(on_hook("/rotate-secret"), headers=owner)
        ],
        ("delete", "/v1/webhooks/{webhook_id}"): lambda: [client.delete(on_hook(), headers=owner)],
        ("post", "/v1/liveness/challenges"): lambda: [
            client.post("/v1/liveness/challenges", headers=owner)
        ],
        ("post", "/v1/api-keys"): lambda: [
            client.post("/v1/api-keys", headers=owner, json={"name": "n", "scopes": ["enroll"]})
        ],
        ("get", "/v1/api-keys"): lambda: [client.get("/v1/api-keys", headers=owner)],
        ("delete", "/v1/api-keys/{key_id}"): lambda: [
            client.delete(f"/v1/api-keys/{key_id.json()['key_id']}", headers=owner)
        ],
        ("get", "/v1/org/settings"): lambda: [client.get("/v1/org/settings", headers=owner)],
        ("patch", "/v1/org/settings"): lambda: [
            client.patch("/v1/org/settings", headers=owner, json={"duplicate_policy": "flag"})
        ],
        ("get", "/v1/audit"): lambda: [client.get("/v1/audit?limit=200", headers=owner)],
        ("get", "/v1/request-logs"): lambda: [
            client.get("/v1/request-logs?limit=200", headers=owner)
        ],
        ("get", "/healthz"): lambda: [client.get("/healthz")],
        ("get", "/readyz"): lambda: [client.get("/readyz")],
        ("get", "/metrics"): lambda: [client.get("/metrics", headers=owner)],
    }
    # Shared watchlists: the owner with two other orgs that opt in; one is removed, one leaves.
    others = [new_org(), new_org()]
    for member in [org, *others]:
        client.patch("/v1/org/settings", headers=member.admin, json={"watchlist_sharing": True})
    shared: dict[str, Any] = {}

    def create_watchlist() -> list[Response]:
        created = client.post("/v1/watchlists", headers=owner, json={"name": "fraud"})
        shared["id"] = created.json()["watchlist_id"]
        return [created]

    def contribute() -> list[Response]:
        url = f"/v1/watchlists/{shared['id']}/entries"
        from_subject = client.post(
            url, headers=owner, json={"subject_id": "cust-1", "reason_code": "confirmed_fraud"}
        )
        from_capture = client.post(
            url, headers=owner, json={"probe": probe, "reason_code": "synthetic_identity"}
        )
        shared["entries"] = from_subject.json()["entry_ids"] + from_capture.json()["entry_ids"]
        return [from_subject, from_capture]

    def wl(path: str = "") -> str:
        return f"/v1/watchlists/{shared['id']}{path}"

    calls |= {
        ("post", "/v1/watchlists"): create_watchlist,
        ("get", "/v1/watchlists"): lambda: [client.get("/v1/watchlists", headers=owner)],
        ("post", "/v1/watchlists/{watchlist_id}/invitations"): lambda: [
            client.post(wl("/invitations"), headers=owner, json={"org_id": o.org_id})
            for o in others
        ],
        ("post", "/v1/watchlists/{watchlist_id}/membership"): lambda: [
            client.post(wl("/membership"), headers=o.admin) for o in others
        ],
        ("post", "/v1/watchlists/{watchlist_id}/entries"): contribute,
        ("post", "/v1/watchlists/{watchlist_id}/screen"): lambda: [
            client.post(wl("/screen"), headers=h, json={"probe": probe})
            for h in (owner, others[0].admin)
        ],
        ("delete", "/v1/watchlists/{watchlist_id}/entries"): lambda: [
            client.delete(wl("/entries"), headers=owner, params={"entry_id": shared["entries"]})
        ],
        ("delete", "/v1/watchlists/{watchlist_id}/members/{org_id}"): lambda: [
            client.delete(wl(f"/members/{others[0].org_id}"), headers=owner)
        ],
        ("delete", "/v1/watchlists/{watchlist_id}/membership"): lambda: [
            client.delete(wl("/membership"), headers=others[1].admin)
        ],
        ("delete", "/v1/watchlists/{watchlist_id}"): lambda: [client.delete(wl(), headers=owner)],
    }
    paths: dict[str, dict[str, Any]] = create_app(runtime.settings, runtime).openapi()["paths"]
    routes = {(method, path) for path, item in paths.items() for method in item}
    assert routes == set(calls), "a route is not covered here: add it to `calls`"

    for route, call in calls.items():
        for n, response in enumerate(call()):
            assert response.status_code < 500, (route, response.text)
            responses.append((f"{route} #{n}", response))
    statuses = {label: r.status_code for label, r in responses}
    assert statuses["('post', '/v1/subjects/{subject_id}/enrollments') #0"] == 201
    assert statuses["('post', '/v1/subjects/{subject_id}/enrollments') #1"] == 422
    assert statuses["('post', '/v1/subjects/{subject_id}/enrollments') #2"] == 409
    assert statuses["('delete', '/v1/subjects/{subject_id}') #0"] == 200
    assert statuses["('post', '/v1/enrollments/{enrollment_id}/retire') #0"] == 200
    assert statuses["('post', '/v1/verify') #0"] == 200
    assert statuses["('post', '/v1/verify') #1"] == 409
    assert statuses["('get', '/v1/audit') #0"] == 200
    watchlist_calls = {k: v for k, v in statuses.items() if "/v1/watchlists" in k}
    assert set(watchlist_calls.values()) <= {200, 201}, watchlist_calls
    webhook_calls = {k: v for k, v in statuses.items() if "/v1/webhook" in k}
    assert set(webhook_calls.values()) <= {200, 201, 202}, webhook_calls
    assert statuses["('post', '/v1/watchlists/{watchlist_id}/screen') #1"] == 200
    for label, response in responses:
        assert_no_frame(response, frames, label)


def test_stored_objects_are_sealed(
    client: TestClient,
    new_org: Callable[[], Org],
    face_images: dict[str, bytes],
    runtime: Runtime,
) -> None:
    org = new_org()
    before = set(object_keys(runtime))
    frames = [face_images["person0"], face_images["tom"], face_images["person5"]]
    enroll(client, org.admin, "sealed-1", *frames)
    assert len(set(object_keys(runtime)) - before) == 3  # one sealed object per frame

    for path in object_keys(runtime):  # every object, this test's and earlier ones'
        data = runtime.objects.get(path)
        assert not data.startswith((b"\xff\xd8\xff", b"\x89PNG")), path
        # Full signatures, long enough never to occur by chance in ciphertext.
        assert b"\x89PNG\r\n\x1a\n" not in data, path
        assert b"JFIF\x00" not in data and b"Exif\x00\x00" not in data, path
        for frame in frames:
            assert data != frame
            for piece in frame_fingerprints(frame)[:3]:
                assert piece not in data, path
