"""POST /v1/liveness/challenges (issue 21, item 4), SQLite and PostgreSQL: issued once per
call, scoped to the key's org, audited without the nonce; its nonce refused when reused,
expired, foreign or garbage (the errors the enroll/verify/compare routes answer)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from app.api.errors import status_for
from app.crypto import Scope
from app.errors import WajahError
from app.services import challenges
from app.services.orgs import audit_page
from app.services.principal import Principal
from app.storage import challenges as store
from app.storage import read_transaction
from tests.app.api.conftest import Org
from tests.app.api.helpers import error_code

PATH = "/v1/liveness/challenges"


@pytest.fixture
def org(new_org: Callable[[], Org]) -> Org:
    return new_org()


def refusal(org: Org, nonce: str, now: datetime | None = None) -> tuple[int, str]:
    """The status and code an answer with this nonce gets (what the API maps it to)."""
    try:
        challenges.consume_challenge(org.runtime, org.org_id, nonce, now=now)
    except WajahError as error:
        return status_for(error), error.code
    return 200, "used"


def test_a_challenge_is_created_with_a_nonce_shown_once(client: TestClient, org: Org) -> None:
    response = client.post(PATH, headers=org.key(Scope.ENROLL))
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "nonce", "sequence", "expires_at", "instructions"}
    assert len(base64.urlsafe_b64decode(body["nonce"] + "=")) == 32
    assert 2 <= len(body["sequence"]) <= 3 and set(body["sequence"]) <= set(challenges.STEPS)
    assert len(body["instructions"]) == len(body["sequence"]) + 1
    # Only the hash is kept; the audit row names the challenge, never the nonce.
    with read_transaction(org.runtime.engine) as conn:
        row = store.find(conn, org.org_id, challenges.nonce_digest(body["nonce"]))
    assert row is not None and row.id == body["id"]
    assert row.expires_at - row.created_at == timedelta(seconds=120)
    assert row.expires_at == datetime.fromisoformat(body["expires_at"])
    client.post(PATH, headers=org.admin)
    principal = Principal(org.org_id, "test", frozenset({Scope.ADMIN}))
    entries = audit_page(org.runtime, principal, None, 50).entries
    created_rows = [e for e in entries if e.action == "liveness.challenge_create"]
    assert len(created_rows) == 2 and body["id"] in {e.target for e in created_rows}
    assert body["nonce"] not in json.dumps([e.details for e in entries], default=str)
    again = client.post(PATH, headers=org.key(Scope.ENROLL)).json()
    assert again["nonce"] != body["nonce"] and again["id"] != body["id"]


def test_the_same_idempotency_key_does_not_replay_a_nonce(client: TestClient, org: Org) -> None:
    headers = {**org.key(Scope.ENROLL), "Idempotency-Key": "challenge-1"}
    first, second = client.post(PATH, headers=headers), client.post(PATH, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json()["nonce"] != second.json()["nonce"]
    assert "Idempotent-Replayed" not in second.headers


def test_keys_without_the_enroll_scope_and_no_key_are_refused(client: TestClient, org: Org) -> None:
    assert client.post(PATH).status_code == 401
    refused = client.post(PATH, headers=org.key(Scope.WATCHLIST))
    assert refused.status_code == 403 and error_code(refused) == "forbidden"
    assert client.post(PATH, headers={"Authorization": "Bearer wjh_live_x_y"}).status_code == 401


def test_a_body_of_another_media_type_or_garbage_changes_nothing(
    client: TestClient, org: Org
) -> None:
    garbage = client.post(
        PATH, headers={**org.admin, "Content-Type": "text/plain"}, content=b"\xff" * 64
    )
    assert garbage.status_code in (201, 415)  # no body is read: nothing to refuse
    assert client.get(PATH, headers=org.admin).status_code == 405


def test_nonces_are_refused_with_stable_codes(
    client: TestClient, org: Org, new_org: Callable[[], Org]
) -> None:
    issued = client.post(PATH, headers=org.admin).json()
    other = new_org()
    assert refusal(other, issued["nonce"]) == (404, "liveness_challenge_not_found")
    assert refusal(org, "not-a-nonce") == (404, "liveness_challenge_not_found")
    assert refusal(org, "A" * 43) == (404, "liveness_challenge_not_found")
    late = datetime.fromisoformat(issued["expires_at"]) + timedelta(seconds=1)
    assert refusal(org, issued["nonce"], late) == (410, "liveness_challenge_expired")
    assert refusal(org, issued["nonce"]) == (200, "used")
    assert refusal(org, issued["nonce"]) == (409, "liveness_challenge_used")


def test_the_operation_is_documented(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operation = document["paths"][PATH]["post"]
    assert operation["operationId"] == "create_liveness_challenge"
    assert {"201", "401", "403", "429", "503"} <= set(operation["responses"])
    schema = document["components"]["schemas"]["LivenessChallengeCreated"]
    assert schema["examples"][0]["sequence"] == ["turn_left", "look_up"]
