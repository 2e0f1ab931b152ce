"""Promise 6: every state change and match decision writes exactly one audit row; the log
refuses edits on both databases, and `wajah audit verify` finds an edit made behind the
triggers' back.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from app.cli import cli
from app.crypto import Scope
from app.runtime import Runtime
from app.services.lifecycle import start_runtime, stop_runtime
from app.services.orgs import create_org, issue_api_key, update_org_settings
from app.services.principal import Principal
from models.packs import ModelPack
from tests.app.api.conftest import TEST_ROOT_KEY, Org, api_settings
from tests.app.api.helpers import audit_actions, audit_rows, b64, enroll, error_code
from tests.conftest import BACKENDS


def test_each_change_and_decision_leaves_exactly_one_row(
    client: TestClient, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    runtime = org.runtime
    admin = org.admin
    probe = {"image": b64(face_images["person0"])}
    rows = audit_rows(runtime, org.org_id)
    actions_before = audit_actions(runtime, org.org_id)

    def one_row(action: str, response_status: int, call: Callable[[], object]) -> None:
        nonlocal rows
        response = call()
        assert getattr(response, "status_code", None) == response_status, action
        assert audit_rows(runtime, org.org_id) == rows + 1, action
        assert audit_actions(runtime, org.org_id)[-1] == action
        rows += 1

    state: dict[str, str] = {}

    def do_enroll() -> object:
        response = client.post(
            "/v1/subjects/cust-1/enrollments",
            headers=admin,
            json={"frames": [probe["image"], b64(face_images["tom"])]},  # one row per bundle
        )
        state["enrollment"] = response.json()["enrollment_id"]
        return response

    def do_create_key() -> object:
        response = client.post(
            "/v1/api-keys", headers=admin, json={"name": "n", "scopes": ["match"]}
        )
        state["key"] = response.json()["key_id"]
        return response

    one_row("enrollment.create", 201, do_enroll)
    one_row(
        "match.verify",
        200,
        lambda: client.post(
            "/v1/verify", headers=admin, json={"subject_id": "cust-1", "probe": probe}
        ),
    )
    one_row(  # a no-match is a decision too
        "match.verify",
        200,
        lambda: client.post(
            "/v1/verify",
            headers=admin,
            json={"subject_id": "cust-1", "probe": {"image": b64(face_images["person5"])}},
        ),
    )
    one_row(
        "match.search", 200, lambda: client.post("/v1/search", headers=admin, json={"probe": probe})
    )
    one_row(
        "org.settings.update",
        200,
        lambda: client.patch("/v1/org/settings", headers=admin, json={"threshold": 0.5}),
    )
    one_row("api_key.create", 201, do_create_key)
    one_row(
        "api_key.revoke", 200, lambda: client.delete(f"/v1/api-keys/{state['key']}", headers=admin)
    )
    enroll(client, admin, "cust-2", face_images["person2"])
    rows += 1
    one_row(
        "enrollment.retire",
        200,
        lambda: client.post(f"/v1/enrollments/{state['enrollment']}/retire", headers=admin),
    )
    one_row("subject.erase", 200, lambda: client.delete("/v1/subjects/cust-2", headers=admin))
    enroll(client, admin, "cust-3", face_images["person3"])
    rows += 1
    one_row(  # a rejected duplicate is a decision: recorded, though nothing is stored
        "enrollment.duplicate_rejected",
        409,
        lambda: client.post(
            "/v1/subjects/cust-9/enrollments",
            headers=admin,
            json={"frames": [b64(face_images["person3"])], "duplicate_check": "reject"},
        ),
    )
    assert audit_actions(runtime, org.org_id)[len(actions_before) :] == [
        "enrollment.create",
        "match.verify",
        "match.verify",
        "match.search",
        "org.settings.update",
        "api_key.create",
        "api_key.revoke",
        "enrollment.create",
        "enrollment.retire",
        "subject.erase",
        "enrollment.create",
        "enrollment.duplicate_rejected",
    ]

    # Reads, no-op writes and refusals leave nothing.
    untouched = [
        client.get("/v1/subjects", headers=admin),
        client.get("/v1/subjects/cust-1", headers=admin),
        client.get("/v1/subjects/cust-2", headers=admin),
        client.get("/v1/api-keys", headers=admin),
        client.get("/v1/org/settings", headers=admin),
        client.get("/v1/audit", headers=admin),
        client.get("/readyz"),
        client.patch("/v1/org/settings", headers=admin, json={"threshold": 0.5}),  # no change
        client.delete(f"/v1/api-keys/{state['key']}", headers=admin),  # already revoked
    ]
    assert [r.status_code for r in untouched] == [200] * 9
    refused = [
        # retired: nothing active to verify against
        client.post("/v1/verify", headers=admin, json={"subject_id": "cust-1", "probe": probe}),
        client.post("/v1/verify", headers=admin, json={"subject_id": "cust-2", "probe": probe}),
        client.post("/v1/verify", headers=admin, json={"subject_id": "nobody", "probe": probe}),
        client.post(
            "/v1/verify",
            headers=admin,
            json={"subject_id": "cust-3", "probe": {"image": b64(b"not an image")}},
        ),
        client.post("/v1/search", headers=admin, json={"probe": {"image": b64(b"\x00" * 99)}}),
        client.post(
            "/v1/subjects/cust-9/enrollments",
            headers=admin,
            json={"frames": [b64(face_images["person4"])]},  # refused by the pose gate
        ),
        client.post(
            "/v1/subjects/cust-2/enrollments", headers=admin, json={"frames": [probe["image"]]}
        ),
        client.post(f"/v1/enrollments/{state['enrollment']}/retire", headers=admin),
        client.delete("/v1/subjects/cust-2", headers=admin),
        client.delete("/v1/api-keys/key_nope", headers=admin),
        client.patch("/v1/org/settings", headers=admin, json={"threshold": 0.1}),
        client.post("/v1/api-keys", headers=admin, json={"name": "", "scopes": ["match"]}),
        client.post("/v1/search", headers=org.key(Scope.ENROLL), json={"probe": probe}),
    ]
    rows += 1  # org.key() above issued a key: that is a change, and recorded
    assert [(r.status_code, error_code(r)) for r in refused] == [
        (409, "conflict"),
        (404, "subject_not_found"),
        (404, "subject_not_found"),
        (415, "unsupported_image_type"),
        (415, "unsupported_image_type"),
        (422, "no_usable_frame"),
        (410, "subject_erased"),
        (409, "enrollment_not_active"),
        (410, "subject_erased"),
        (404, "api_key_not_found"),
        (422, "invalid_settings"),
        (422, "invalid_request"),
        (403, "forbidden"),
    ]
    assert audit_rows(runtime, org.org_id) == rows


# --- tampering, on a runtime of its own (triggers are dropped) ------------------------------


@pytest.fixture(params=BACKENDS)
def own_runtime(
    request: pytest.FixtureRequest, tmp_path: Path, default_pack: ModelPack
) -> Iterator[Runtime]:
    """A runtime on a fresh database: SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tamper.db'}"
    else:
        base: URL = request.getfixturevalue("postgres_database")
        schema = f"tamper_{secrets.token_hex(6)}"
        admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        admin.dispose()
        url = base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    runtime = start_runtime(api_settings(tmp_path / "home", url, default_pack.directory.parent))
    try:
        yield runtime
    finally:
        stop_runtime(runtime)


def audit_verify(runtime: Runtime) -> tuple[int, str]:
    settings = runtime.settings
    result = CliRunner().invoke(
        cli,
        ["audit", "verify"],
        env={
            "WAJAH_HOME": str(settings.home),
            "WAJAH_DATABASE_URL": settings.resolved_database_url,
            "WAJAH_ROOT_KEY": TEST_ROOT_KEY,
        },
    )
    return result.exit_code, result.output


def test_tampering_is_refused_by_the_database_and_detected_by_audit_verify(
    own_runtime: Runtime,
) -> None:
    runtime = own_runtime
    org_id, first_key = create_org(runtime, "Tamper Bank")
    admin = Principal(org_id, first_key.key_id, frozenset({Scope.ADMIN}))
    issue_api_key(runtime, admin, "second", [Scope.MATCH], None)
    update_org_settings(runtime, admin, {"duplicate_policy": "flag"})
    assert audit_actions(runtime, org_id) == [
        "org.create",
        "api_key.create",
        "api_key.create",
        "org.settings.update",
    ]
    assert audit_verify(runtime) == (
        0,
        f"audit log intact: {audit_rows(runtime, org_id)} rows checked\n",
    )

    postgres = runtime.engine.dialect.name == "postgresql"
    refused = [
        f"UPDATE audit_log SET target = 'edited' WHERE chain = '{org_id}'",
        f"DELETE FROM audit_log WHERE chain = '{org_id}' AND chain_seq = 4",
        "TRUNCATE audit_log"
        if postgres
        else "INSERT OR REPLACE INTO audit_log SELECT * FROM audit_log LIMIT 1",
    ]
    for statement in refused:
        with (
            pytest.raises(sa.exc.DBAPIError, match="append-only|audit"),
            runtime.engine.begin() as conn,
        ):
            conn.exec_driver_sql(statement)
    assert audit_rows(runtime, org_id) == 4

    # Someone with the database owner's powers goes around the triggers.
    with runtime.engine.begin() as conn:
        if postgres:
            conn.exec_driver_sql("ALTER TABLE audit_log DISABLE TRIGGER USER")
        else:
            conn.exec_driver_sql("DROP TRIGGER audit_log_no_update")
        conn.exec_driver_sql(
            f"UPDATE audit_log SET target = 'someone-else' WHERE chain = '{org_id}' "
            "AND chain_seq = 2"
        )
        edited = conn.exec_driver_sql(
            f"SELECT id FROM audit_log WHERE chain = '{org_id}' AND chain_seq = 2"
        ).scalar_one()
    code, output = audit_verify(runtime)
    assert code == 1
    assert f"audit chain {org_id} broken at row seq 2 (id {edited})" in " ".join(output.split())
    assert "row edited" in output
