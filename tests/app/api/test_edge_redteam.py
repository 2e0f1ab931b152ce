"""Red-team leftovers of issue 18: an overflowing probe norm, Pillow's words in a 413, a
coerced top_k, and /readyz counting the vectors the index holds now."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app.runtime import Runtime
from tests.app.api.conftest import Org
from tests.app.api.helpers import b64, enroll, error_code, org_state
from tests.models.test_imaging import png_bomb


@pytest.fixture
def org(client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]) -> Org:
    made = new_org()
    enroll(client, made.admin, "cust-1", face_images["person0"])
    return made


def test_a_probe_whose_norm_overflows_is_refused_by_verify_and_search(
    client: TestClient, org: Org, runtime: Runtime
) -> None:
    # Every value is finite; the sum of squares is not (128 × 1e616).
    probe = {"vector": [1e308] * runtime.pipeline.dimension, "model_id": runtime.model_id}
    before = org_state(runtime, org.org_id)
    verify = client.post(
        "/v1/verify", headers=org.admin, json={"subject_id": "cust-1", "probe": probe}
    )
    search = client.post("/v1/search", headers=org.admin, json={"probe": probe})
    assert (verify.status_code, error_code(verify)) == (422, "invalid_probe")
    assert (search.status_code, error_code(search)) == (422, "invalid_probe")
    assert verify.json()["error"]["message"] == search.json()["error"]["message"]
    assert org_state(runtime, org.org_id) == before  # no audit row for a refused decision


def test_a_large_negative_vector_with_a_finite_norm_still_verifies(
    client: TestClient, org: Org, runtime: Runtime
) -> None:
    # The norm check refuses overflow, not large values: 1e150 squared is 1e300.
    probe = {"vector": [-1e150] * runtime.pipeline.dimension, "model_id": runtime.model_id}
    response = client.post(
        "/v1/verify", headers=org.admin, json={"subject_id": "cust-1", "probe": probe}
    )
    assert response.status_code == 200, response.text
    assert response.json()["decision"] == "no_match"


def test_a_bomb_past_pillows_own_limit_gets_our_message(client: TestClient, org: Org) -> None:
    # 20000 × 20000 is past Pillow's hard limit (2 × 89.5 MP), which fires inside open().
    response = client.post(
        "/v1/verify",
        headers=org.admin,
        json={"subject_id": "cust-1", "probe": {"image": b64(png_bomb())}},
    )
    assert (response.status_code, error_code(response)) == (413, "image_dimensions_too_large")
    message = response.json()["error"]["message"]
    assert message == "the image has too many pixels; the limit is 40000000"
    for pillow_words in ("DOS", "decompression", "178956970", "Image size"):
        assert pillow_words not in message


@pytest.mark.parametrize("top_k", [3.5, "3", True, None, [3]])
def test_top_k_takes_integers_only(client: TestClient, org: Org, top_k: object) -> None:
    probe = {
        "vector": [1.0] + [0.0] * (org.runtime.pipeline.dimension - 1),
        "model_id": org.runtime.model_id,
    }
    response = client.post("/v1/search", headers=org.admin, json={"probe": probe, "top_k": top_k})
    assert (response.status_code, error_code(response)) == (422, "invalid_request")
    assert response.json()["error"]["details"]["errors"][0]["loc"] == ["body", "top_k"]


@pytest.mark.parametrize("top_k", [3, 3.0])  # 3.0 is an integer to JSON Schema
def test_top_k_as_an_integer_is_served(client: TestClient, org: Org, top_k: object) -> None:
    probe = {
        "vector": [1.0] + [0.0] * (org.runtime.pipeline.dimension - 1),
        "model_id": org.runtime.model_id,
    }
    response = client.post("/v1/search", headers=org.admin, json={"probe": probe, "top_k": top_k})
    assert response.status_code == 200, response.text


def test_readyz_counts_the_vectors_held_now(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    before = client.get("/readyz").json()["index"]
    made = new_org()
    enroll(client, made.admin, "cust-a", face_images["person1"])
    enroll(client, made.admin, "cust-b", face_images["person2"])
    after = client.get("/readyz").json()["index"]
    assert after["vectors"] == before["vectors"] + 2
    assert after["orgs"] == before["orgs"] + 1
    assert after["vectors_at_start"] == before["vectors_at_start"]
    erased = client.delete("/v1/subjects/cust-a", headers=made.admin)
    assert erased.status_code in (200, 204), erased.text
    assert client.get("/readyz").json()["index"]["vectors"] == before["vectors"] + 1
