"""Admission: per-key token buckets (429 + Retry-After), the operator's per-org override,
and the process-wide pixel budget."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from app.api.admission import RateLimit, TokenBuckets
from app.crypto import Scope
from app.errors import InvalidSettingsError, NotFoundError
from app.main import create_app
from app.runtime import Runtime
from app.services.ratelimits import set_rate_limit
from models.imaging import PixelBudget
from tests.app.api.conftest import Org
from tests.app.api.helpers import audit_actions, error_code


@pytest.fixture
def limited(runtime: Runtime) -> Iterator[TestClient]:
    """The app with a small limit: bursts of 3, then one request every 20 s (slow enough
    that no test here sees a token come back)."""
    settings = runtime.settings.model_copy(
        update={"rate_limit_per_second": 0.05, "rate_limit_burst": 3}
    )
    with TestClient(create_app(settings, runtime)) as test_client:
        yield test_client


def test_a_key_past_its_burst_gets_429_with_retry_after(
    limited: TestClient, new_org: Callable[[], Org]
) -> None:
    org = new_org()
    statuses = [limited.get("/v1/subjects", headers=org.admin).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = limited.get("/v1/subjects", headers=org.admin)
    assert (refused.status_code, error_code(refused)) == (429, "rate_limited")
    assert refused.headers["retry-after"] == "20"
    assert refused.json()["error"]["details"] == {"retry_after_s": 20}
    assert refused.headers["cache-control"] == "no-store"
    # Another key of the same org has its own bucket.
    other = org.key(Scope.MATCH)
    assert limited.get("/v1/subjects", headers=other).status_code in (200, 403)


def test_a_refused_request_does_no_work(
    limited: TestClient, new_org: Callable[[], Org], runtime: Runtime
) -> None:
    org = new_org()
    for _ in range(3):
        limited.get("/v1/subjects", headers=org.admin)
    before = audit_actions(runtime, org.org_id)
    created = limited.post("/v1/api-keys", headers=org.admin, json={"name": "x", "scopes": []})
    assert created.status_code == 429
    assert audit_actions(runtime, org.org_id) == before


def test_wrong_secrets_do_not_drain_the_owners_bucket(
    limited: TestClient, new_org: Callable[[], Org]
) -> None:
    org = new_org()
    forged = {"Authorization": org.admin["Authorization"][:-4] + "AAAA"}
    assert {limited.get("/v1/subjects", headers=forged).status_code for _ in range(6)} == {401}
    assert limited.get("/v1/subjects", headers=org.admin).status_code == 200


def test_the_operators_override_for_one_org(
    limited: TestClient, new_org: Callable[[], Org], runtime: Runtime
) -> None:
    generous, other = new_org(), new_org()
    assert set_rate_limit(runtime, generous.org_id, 1000.0, 50) == {
        "per_second": 1000.0,
        "burst": 50,
    }
    assert all(
        limited.get("/v1/subjects", headers=generous.admin).status_code == 200 for _ in range(20)
    )
    assert [limited.get("/v1/subjects", headers=other.admin).status_code for _ in range(4)] == [
        200,
        200,
        200,
        429,
    ]
    assert "org.rate_limit.set" in audit_actions(runtime, generous.org_id)
    # The tenant cannot set it through the API, and does not see its own knob as writable.
    patched = limited.patch(
        "/v1/org/settings", headers=generous.admin, json={"rate_limit": {"per_second": 1e6}}
    )
    assert (patched.status_code, error_code(patched)) == (422, "invalid_request")
    assert set_rate_limit(runtime, generous.org_id, None, None) is None  # back to the default


def test_override_input_is_checked(runtime: Runtime, new_org: Callable[[], Org]) -> None:
    org = new_org()
    with pytest.raises(InvalidSettingsError):
        set_rate_limit(runtime, org.org_id, -1.0, None)
    with pytest.raises(InvalidSettingsError):
        set_rate_limit(runtime, org.org_id, 5.0, 0)
    with pytest.raises(NotFoundError):
        set_rate_limit(runtime, "org_does_not_exist", 5.0, None)


def test_token_bucket_refills_at_its_rate() -> None:
    buckets, limit = TokenBuckets(), RateLimit(per_second=2.0, burst=2)
    assert [buckets.take("k", limit, now=100.0) for _ in range(2)] == [0.0, 0.0]
    assert buckets.take("k", limit, now=100.0) == pytest.approx(0.5)
    assert buckets.take("k", limit, now=100.5) == 0.0  # one token back after 0.5 s
    assert buckets.take("k", limit, now=110.0) == 0.0  # capped at the burst, not 20
    assert buckets.take("k", limit, now=110.0) == 0.0
    assert buckets.take("k", limit, now=110.0) > 0
    assert buckets.take("other", limit, now=110.0) == 0.0


def test_the_pixel_budget_bounds_what_is_decoded_at_once() -> None:
    budget = PixelBudget(100)
    inside, most = 0, 0
    lock = threading.Lock()
    go = threading.Barrier(8)

    def frame() -> None:
        nonlocal inside, most
        go.wait()
        with budget.hold(60):
            with lock:
                inside += 1
                most = max(most, inside)
            threading.Event().wait(0.01)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=frame) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert (most, budget.in_use) == (1, 0)  # 60 + 60 > 100: one frame at a time
    with budget.hold(40), budget.hold(60):
        assert budget.in_use == 100
    with pytest.raises(ValueError):
        PixelBudget(0)


def test_the_service_shares_one_budget_between_its_pipelines(runtime: Runtime) -> None:
    pool = runtime.inference
    assert pool.pipeline.budget.total == runtime.settings.decode_pixel_budget
    if pool.solo is not None:
        assert pool.solo.budget is pool.pipeline.budget


def test_a_settings_read_costs_one_token_whether_or_not_it_is_cached(
    limited: TestClient, new_org: Callable[[], Org], runtime: Runtime
) -> None:
    """`GET /v1/org/settings` may be answered on the event loop from the caches or on a
    worker thread from the database; either way the key is charged once."""
    org = new_org()
    statuses = []
    for _ in range(3):
        # The key stays cached, the settings are not: the event loop cannot answer alone.
        runtime.org_settings.clear()
        statuses.append(limited.get("/v1/org/settings", headers=org.admin).status_code)
    assert statuses == [200, 200, 200]
    refused = limited.get("/v1/org/settings", headers=org.admin)
    assert (refused.status_code, error_code(refused)) == (429, "rate_limited")


def test_the_event_loop_path_never_charges_an_org_by_the_wrong_limit(
    limited: TestClient, new_org: Callable[[], Org], runtime: Runtime
) -> None:
    """An org with a generous override whose settings this replica has forgotten (the key
    still cached) is charged by its own limit, not by the default's burst of 3."""
    generous = new_org()
    set_rate_limit(runtime, generous.org_id, 1000.0, 50)
    statuses = []
    for _ in range(10):
        runtime.org_settings.clear()
        statuses.append(limited.get("/v1/org/settings", headers=generous.admin).status_code)
    assert statuses == [200] * 10
