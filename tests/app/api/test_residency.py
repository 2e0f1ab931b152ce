"""Residency enforced: a deployment in region SG, over the same database as the ID one,
refuses every request and write of an `ID-only` org (403 `residency_mismatch`, nothing
changed, nothing logged for it), serves an org whose residency is `any`, and screens a
shared watchlist only with the entries of contributors whose residency allows SG.
`WAJAH_REGION` is an ISO 3166-1 alpha-2 code, checked at start."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pydantic
import pytest
from fastapi.testclient import TestClient

from app.crypto import Scope
from app.errors import InvalidSettingsError
from app.main import create_app
from app.runtime import Runtime
from app.services.lifecycle import start_runtime, stop_runtime
from app.services.orgs import create_org, issue_operator_key
from app.services.request_logs import flush
from app.services.residency import ResidencyMismatchError, refused_orgs
from app.services.sharing import eligible_orgs
from app.settings import Settings
from app.storage import read_transaction
from tests.app.api.conftest import Org
from tests.app.api.helpers import audit_rows, b64, enroll, error_code


@pytest.fixture(scope="module")
def singapore(runtime: Runtime) -> Iterator[Runtime]:
    """A deployment in SG over the ID deployment's database and keys (not serving indexes)."""
    started = start_runtime(runtime.settings.model_copy(update={"region": "SG"}), serving=False)
    yield started
    stop_runtime(started)


@pytest.fixture()
def sg_client(singapore: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(singapore.settings, singapore)) as test_client:
        yield test_client


def _any_residency(client: TestClient, org: Org) -> None:
    patched = client.patch("/v1/org/settings", headers=org.admin, json={"data_residency": "any"})
    assert patched.status_code == 200, patched.text


@pytest.mark.parametrize("region", ["", "sg", "XX", "ID-only", "IDN", "I D", "ID\n"])
def test_the_region_must_be_an_iso_3166_alpha2_code(region: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="ISO 3166-1 alpha-2"):
        Settings(region=region)
    assert Settings(region="SG").region == "SG"


def test_an_id_only_org_is_refused_on_every_request_and_write_in_sg(
    client: TestClient,
    sg_client: TestClient,
    singapore: Runtime,
    new_org: Callable[[], Org],
    face_images: dict[str, bytes],
) -> None:
    org = new_org()  # ID-only, the default
    enroll(client, org.admin, "cust-1", face_images["person0"])
    rows = audit_rows(singapore, org.org_id)
    requests = [
        ("GET", "/v1/subjects", None),
        ("GET", "/v1/subjects/cust-1", None),
        ("POST", "/v1/subjects/cust-2/enrollments", {"frames": [b64(face_images["person1"])]}),
        ("DELETE", "/v1/subjects/cust-1", None),
        ("PATCH", "/v1/subjects/cust-1", {"pii": {"email": "a@b.id"}}),
        ("PATCH", "/v1/org/settings", {"data_residency": "any"}),
        ("POST", "/v1/api-keys", {"name": "k", "scopes": ["admin"]}),
        ("GET", "/v1/request-logs", None),
    ]
    for method, path, body in requests:
        response = sg_client.request(method, path, headers=org.admin, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert error_code(response) == "residency_mismatch"
        assert "SG" in response.json()["error"]["message"]

    assert audit_rows(singapore, org.org_id) == rows
    assert client.get("/v1/subjects/cust-2", headers=org.admin).status_code == 404
    assert client.get("/v1/subjects/cust-1", headers=org.admin).status_code == 200
    assert client.get("/v1/org/settings", headers=org.admin).json()["data_residency"] == "ID-only"
    # Nothing of it reached its request log from SG; the ID deployment still serves it.
    flush(singapore, sg_client.app.state.request_log)  # type: ignore[attr-defined]
    flush(singapore, client.app.state.request_log)  # type: ignore[attr-defined]
    logged = client.get("/v1/request-logs", headers=org.admin, params={"limit": 200}).json()
    assert [r["status"] for r in logged["items"]] == [200, 200, 404, 201]


def test_an_org_whose_residency_is_any_is_served_in_sg(
    client: TestClient, sg_client: TestClient, new_org: Callable[[], Org]
) -> None:
    org = new_org()
    _any_residency(client, org)
    assert sg_client.get("/v1/subjects", headers=org.admin).status_code == 200
    # ... and may not set a residency that SG would refuse: it would lock itself out.
    refused = sg_client.patch(
        "/v1/org/settings", headers=org.admin, json={"data_residency": "ID-only"}
    )
    assert refused.status_code == 422 and error_code(refused) == "invalid_settings"
    assert sg_client.get("/v1/org/settings", headers=org.admin).json()["data_residency"] == "any"


def test_sg_makes_no_org_it_would_refuse_and_issues_no_key_to_one(
    singapore: Runtime, new_org: Callable[[], Org]
) -> None:
    with pytest.raises(InvalidSettingsError, match="forbids this deployment's region SG"):
        create_org(singapore, "Jakarta Bank")
    org_id, _ = create_org(singapore, "Regional Bank", data_residency="any")
    assert org_id not in refused_orgs(singapore)
    id_only = new_org()
    with pytest.raises(ResidencyMismatchError):
        issue_operator_key(singapore, id_only.org_id, "operator", [Scope.ADMIN], None)
    assert id_only.org_id in refused_orgs(singapore)


def test_screening_checks_contributors_against_the_deployments_region(
    client: TestClient, runtime: Runtime, singapore: Runtime, new_org: Callable[[], Org]
) -> None:
    owner, member = new_org(), new_org()
    for org in (owner, member):
        _any_residency(client, org)
        sharing = client.patch(
            "/v1/org/settings", headers=org.admin, json={"watchlist_sharing": True}
        )
        assert sharing.status_code == 200
    created = client.post("/v1/watchlists", headers=owner.admin, json={"name": "fraud"})
    watchlist_id = created.json()["watchlist_id"]
    invited = client.post(
        f"/v1/watchlists/{watchlist_id}/invitations",
        headers=owner.admin,
        json={"org_id": member.org_id},
    )
    assert invited.status_code in (200, 201), invited.text
    joined = client.post(f"/v1/watchlists/{watchlist_id}/membership", headers=member.admin)
    assert joined.status_code == 200, joined.text
    with read_transaction(runtime.engine) as conn:
        assert eligible_orgs(conn, watchlist_id, "SG") == {owner.org_id, member.org_id}

    # The member keeps its data in Indonesia from now on: the ID deployment still screens
    # its entries, SG no longer does (the watchlist's region is ID, the deployment's SG).
    patched = client.patch(
        "/v1/org/settings", headers=member.admin, json={"data_residency": "ID-only"}
    )
    assert patched.status_code == 200
    with read_transaction(runtime.engine) as conn:
        assert eligible_orgs(conn, watchlist_id, "ID") == {owner.org_id, member.org_id}
        assert eligible_orgs(conn, watchlist_id, "SG") == {owner.org_id}
