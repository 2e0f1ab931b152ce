"""Over HTTP: a lone request's capture runs on every core, and decides like one core."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.app.api.conftest import Org
from tests.app.api.helpers import b64, enroll


def test_a_lone_verify_runs_solo_and_scores_like_a_busy_one(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    pool = org.runtime.inference
    if pool.solo is None:
        pytest.skip("one usable core: no solo pipeline")
    enroll(client, org.admin, "solo", face_images["person0"])
    body = {"subject_id": "solo", "probe": {"image": b64(face_images["person1"])}}
    before = pool.solo_runs
    alone = client.post("/v1/verify", json=body, headers=org.admin)
    assert alone.status_code == 200, alone.text
    assert pool.solo_runs == before + 1
    with pool.request():  # another request in flight: this capture gets one core
        busy = client.post("/v1/verify", json=body, headers=org.admin)
    assert busy.status_code == 200, busy.text
    assert pool.solo_runs == before + 1
    assert busy.json()["decision"] == alone.json()["decision"] == "no_match"
    assert abs(busy.json()["score"] - alone.json()["score"]) < 1e-4
