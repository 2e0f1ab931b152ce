"""Retention for every data class, each at its boundary with a frozen clock (`now` passed to
the sweeps), and org closure: keys refused at once, data kept through the grace period, then
purged and the keys destroyed, with receipts. On SQLite and PostgreSQL.

The sweeps run over the whole database, so this module has a runtime (and database) of its
own; each test asserts on its own orgs only.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from app.crypto import Scope
from app.errors import (
    InvalidSettingsError,
    NotFoundError,
    OrgClosedError,
    UnauthorizedError,
)
from app.runtime import Runtime
from app.services import closure, retention, webhooks
from app.services.audit import make_checkpoint, verify_log
from app.services.lifecycle import start_runtime, stop_runtime
from app.services.orgs import create_org, issue_operator_key, update_org_settings
from app.services.principal import Principal, authenticate
from app.services.subjects import CaptureBundle, enroll_subject
from app.storage import audit as audit_store
from app.storage import read_transaction, utcnow, write_transaction
from app.storage import retention as retention_store
from app.storage import rights as rights_store
from app.storage import webhooks as webhook_rows
from app.storage.retention import RequestLogRow
from app.storage.schema import audit_anchors, audit_log, frames, idempotency_keys, subjects
from models.packs import ModelPack
from tests.app.api.conftest import api_settings
from tests.conftest import BACKENDS

MICRO = timedelta(microseconds=1)


@pytest.fixture(scope="module", params=BACKENDS)
def own(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    default_pack: ModelPack,
) -> Iterator[Runtime]:
    """A runtime over a database of this module's own."""
    home = tmp_path_factory.mktemp("retention-home")
    if request.param == "sqlite":
        url = f"sqlite:///{home / 'wajah.db'}"
    else:
        base = request.getfixturevalue("postgres_database")
        schema = f"ret_{secrets.token_hex(6)}"
        admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        admin.dispose()
        url = base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    started = start_runtime(api_settings(home, url, default_pack.directory.parent))
    yield started
    stop_runtime(started)


@pytest.fixture()
def admin_of(own: Runtime) -> Callable[[], tuple[Principal, str]]:
    def make() -> tuple[Principal, str]:
        _, key = create_org(own, "Retention Bank")
        return authenticate(own, key.plaintext, Scope.ADMIN), key.plaintext

    return make


def _audit_actions(runtime: Runtime, chain: str) -> list[str]:
    with read_transaction(runtime.engine) as conn:
        return list(
            conn.execute(
                sa.select(audit_log.c.action)
                .where(audit_log.c.chain == chain)
                .order_by(audit_log.c.chain_seq)
            ).scalars()
        )


def _system_details(runtime: Runtime, action: str) -> list[dict[str, Any]]:
    """Details of the system log's rows of ``action``, opened."""
    with read_transaction(runtime.engine) as conn:
        page = audit_store.list_audit(conn, sealer=runtime.cipher, org_id=None, limit=500)
    return [e.details for e in page.entries if e.action == action]


# --- frames -------------------------------------------------------------------------------------


def test_frames_are_shredded_at_their_purge_after_not_a_microsecond_before(
    own: Runtime, admin_of: Callable[[], tuple[Principal, str]], face_images: dict[str, bytes]
) -> None:
    principal, _ = admin_of()
    enroll_subject(own, principal, "cust-1", CaptureBundle([face_images["person0"]]))
    with read_transaction(own.engine) as conn:
        row = conn.execute(sa.select(frames).where(frames.c.org_id == principal.org_id)).one()
    # The enrollment's moment + 90 days (the row's created_at is taken a moment later).
    assert round((row.purge_after - row.created_at) / timedelta(days=1)) == 90

    assert principal.org_id not in retention.purge_expired_frames(own, row.purge_after - MICRO)
    assert own.objects.exists(row.object_key)
    assert retention.purge_expired_frames(own, row.purge_after)[principal.org_id] == 1
    assert not own.objects.exists(row.object_key)
    assert "retention.purge_frames" in _audit_actions(own, principal.org_id)


# --- request logs -------------------------------------------------------------------------------


def _log_request(runtime: Runtime, org_id: str, at: datetime, n: int = 1) -> None:
    rows = [
        RequestLogRow(org_id, at, f"req_{i}", "GET", "/v1/subjects", 200, 1.5, "k")
        for i in range(n)
    ]
    with write_transaction(runtime.engine) as conn:
        retention_store.insert_request_logs(conn, rows)


def _request_rows(runtime: Runtime, org_id: str) -> int:
    with read_transaction(runtime.engine) as conn:
        return len(retention_store.request_logs_page(conn, org_id, None, 1000))


def test_request_logs_go_after_90_days_or_the_orgs_own_period(
    own: Runtime, admin_of: Callable[[], tuple[Principal, str]]
) -> None:
    default, _ = admin_of()
    short, _ = admin_of()
    update_org_settings(own, short, {"retention": {"request_logs_days": 7}})
    at = utcnow() - timedelta(days=30)
    _log_request(own, default.org_id, at, 3)
    _log_request(own, short.org_id, at, 2)

    # 7 days after: the short org's rows expire, not a microsecond before.
    before = retention.purge_request_logs(own, at + timedelta(days=7))
    assert short.org_id not in before and _request_rows(own, short.org_id) == 2
    after = retention.purge_request_logs(own, at + timedelta(days=7) + MICRO)
    assert after[short.org_id] == 2 and default.org_id not in after
    assert _request_rows(own, short.org_id) == 0

    assert default.org_id not in retention.purge_request_logs(own, at + timedelta(days=90))
    assert _request_rows(own, default.org_id) == 3
    done = retention.purge_request_logs(own, at + timedelta(days=90) + MICRO)
    assert done[default.org_id] == 3 and _request_rows(own, default.org_id) == 0
    assert "retention.purge_request_logs" in _audit_actions(own, default.org_id)


def test_request_logs_purge_in_batches(own: Runtime, admin_of: Callable[..., Any]) -> None:
    principal, _ = admin_of()
    at = utcnow() - timedelta(days=100)
    _log_request(own, principal.org_id, at, retention_store.DELETE_BATCH + 7)
    assert retention.purge_request_logs(own)[principal.org_id] == retention_store.DELETE_BATCH + 7
    assert _audit_actions(own, principal.org_id).count("retention.purge_request_logs") == 1


# --- idempotency records ------------------------------------------------------------------------


def test_idempotency_records_go_after_24_hours(
    own: Runtime, admin_of: Callable[[], tuple[Principal, str]], face_images: dict[str, bytes]
) -> None:
    from app.services import idempotency

    principal, _ = admin_of()
    hashed = idempotency.request_hash("POST", "/v1/x", b"body")
    assert idempotency.reserve(own, principal.org_id, "retry-1", hashed) is None
    with read_transaction(own.engine) as conn:
        created = conn.execute(
            sa.select(idempotency_keys.c.created_at).where(
                idempotency_keys.c.org_id == principal.org_id
            )
        ).scalar_one()

    edge = created + timedelta(hours=24)
    assert principal.org_id not in retention.purge_idempotency_records(own, edge)
    assert retention.purge_idempotency_records(own, edge + MICRO)[principal.org_id] == 1
    with read_transaction(own.engine) as conn:
        assert retention_store.counts(conn, principal.org_id)["idempotency_records"] == 0
    # A retry now runs again, as a new request.
    assert idempotency.reserve(own, principal.org_id, "retry-1", hashed) is None


# --- retention settings: bad input changes nothing ----------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"audit_days": 2556},  # under the 7 years the law asks
        {"audit_days": 36501},
        {"idempotency_days": 0},
        {"closure_grace_days": 3651},
        {"frames_days": "90"},
        {"frames_days": True},
        {"frames_days": 9.0},
        {"nonsense_days": 3},
    ],
)
def test_bad_retention_settings_are_refused_and_change_nothing(
    own: Runtime, admin_of: Callable[[], tuple[Principal, str]], change: dict[str, Any]
) -> None:
    from app.services.orgs import org_settings

    principal, _ = admin_of()
    before = org_settings(own, principal.org_id)
    with pytest.raises(InvalidSettingsError):
        update_org_settings(own, principal, {"retention": change})
    assert org_settings(own, principal.org_id) == before
    assert before["retention"] == {
        "frames_days": 90,
        "request_logs_days": 90,
        "webhook_days": 30,
        "idempotency_days": 1,
        "audit_days": 2557,
        "closure_grace_days": 365,
        "source_documents_days": 90,
    }


# --- the audit log ------------------------------------------------------------------------------


def _first_row_time(runtime: Runtime, chain: str) -> datetime:
    with read_transaction(runtime.engine) as conn:
        stamp = conn.execute(
            sa.select(sa.func.min(audit_log.c.occurred_at)).where(audit_log.c.chain == chain)
        ).scalar_one()
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_audit_rows_go_only_past_7_years_and_the_chain_still_verifies(
    own: Runtime, admin_of: Callable[[], tuple[Principal, str]], tmp_path: Any
) -> None:
    principal, _ = admin_of()
    org = principal.org_id
    first = _first_row_time(own, org)
    rows_before = len(_audit_actions(own, org))
    checkpoint = make_checkpoint(own.engine, own.audit_key)
    midnight = first.replace(hour=0, minute=0, second=0, microsecond=0)

    # 2557 days after the first row, the cut-off (midnight UTC) is not past it yet.
    assert org not in retention.purge_audit(own, first + timedelta(days=2557))
    assert len(_audit_actions(own, org)) == rows_before
    later = midnight + timedelta(days=2558)
    purged = retention.purge_audit(own, later)
    assert purged[org] == rows_before
    assert _audit_actions(own, org) == ["retention.purge_audit"]

    with read_transaction(own.engine) as conn:
        anchor = audit_store.anchor_of(conn, org)
    assert anchor is not None and (anchor.through_seq, anchor.purged_rows) == (
        rows_before,
        rows_before,
    )
    # The anchor is signed by the checkpoint key (anyone with the public key can check it).
    from app.crypto import signature_valid

    assert signature_valid(own.audit_key.public_key(), anchor.message(), anchor.signature)
    report = verify_log(own.engine, own.audit_key, checkpoint=checkpoint)
    assert report.ok, report.problems
    # New rows chain on; the next purge moves the anchor forward.
    update_org_settings(own, principal, {"duplicate_policy": "flag"})
    assert verify_log(own.engine, own.audit_key).ok
    assert retention.purge_audit(own, later + timedelta(days=1))[org] == 2
    assert verify_log(own.engine, own.audit_key, checkpoint=checkpoint).ok


def test_an_org_may_keep_its_audit_log_longer(
    own: Runtime, admin_of: Callable[[], tuple[Principal, str]]
) -> None:
    principal, _ = admin_of()
    update_org_settings(own, principal, {"retention": {"audit_days": 3000}})
    first = _first_row_time(own, principal.org_id)
    assert principal.org_id not in retention.purge_audit(own, first + timedelta(days=2600))
    assert principal.org_id in retention.purge_audit(own, first + timedelta(days=3002))


def test_audit_rows_above_the_anchor_cannot_be_deleted_and_a_forged_anchor_is_caught(
    own: Runtime, admin_of: Callable[[], tuple[Principal, str]]
) -> None:
    principal, _ = admin_of()
    org = principal.org_id
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), own.engine.begin() as conn:
        conn.execute(sa.delete(audit_log).where(audit_log.c.chain == org))

    first = _first_row_time(own, org)
    assert org in retention.purge_audit(own, first + timedelta(days=2559))
    update_org_settings(own, principal, {"duplicate_policy": "reject"})
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), own.engine.begin() as conn:
        conn.execute(sa.delete(audit_log).where(audit_log.c.chain == org))
    refused = pytest.raises(sa.exc.DBAPIError, match="only move forward")
    with refused, own.engine.begin() as conn:
        conn.execute(sa.delete(audit_anchors).where(audit_anchors.c.chain == org))

    # Moving the anchor forward without the audit key (to delete the newer rows) is caught.
    with own.engine.begin() as conn:
        conn.execute(
            sa.update(audit_anchors)
            .where(audit_anchors.c.chain == org)
            .values(through_seq=audit_anchors.c.through_seq + 1)
        )
    report = verify_log(own.engine, own.audit_key, chain=org)
    assert not report.ok
    assert "retention anchor is not signed by the audit key" in report.problems[0]


# --- org closure --------------------------------------------------------------------------------


def test_org_close_refuses_keys_at_once_keeps_data_through_grace_then_purges(
    own: Runtime, admin_of: Callable[[], tuple[Principal, str]], face_images: dict[str, bytes]
) -> None:
    principal, key = admin_of()
    org = principal.org_id
    enroll_subject(own, principal, "cust-1", CaptureBundle([face_images["person1"]]))
    _log_request(own, org, utcnow())
    closed_at = utcnow()

    receipt = closure.close_org(own, org, grace_days=30, now=closed_at)

    assert receipt["api_keys_revoked"] == [principal.key_id]
    assert receipt["purge_after"] == (closed_at + timedelta(days=30)).isoformat()
    with pytest.raises(UnauthorizedError):
        authenticate(own, key, Scope.ADMIN)
    with pytest.raises(OrgClosedError):
        closure.close_org(own, org)
    with pytest.raises(OrgClosedError):
        issue_operator_key(own, org, "back door", [Scope.ADMIN], None)
    assert _audit_actions(own, org)[-1] == "org.close"

    # Through the grace period nothing is purged.
    grace_end = closed_at + timedelta(days=30)
    assert org not in closure.purge_closed_orgs(own, grace_end - MICRO)
    with read_transaction(own.engine) as conn:
        assert retention_store.counts(conn, org) == {
            "subjects_live": 1,
            "request_log_rows": 1,
            "idempotency_records": 0,
        }
    assert own.kms.has_org(org)

    assert closure.purge_closed_orgs(own, grace_end) == {org: 1}
    with read_transaction(own.engine) as conn:
        assert retention_store.counts(conn, org) == {
            "subjects_live": 0,
            "request_log_rows": 0,
            "idempotency_records": 0,
        }
        status = conn.execute(
            sa.select(subjects.c.status, subjects.c.nik_sealed).where(subjects.c.org_id == org)
        ).one()
        sealed_frames = conn.execute(
            sa.select(frames.c.wrapped_dek).where(frames.c.org_id == org)
        ).scalars()
        assert (status.status, status.nik_sealed) == ("erased", None)
        assert set(sealed_frames) == {None}
        # Logged like any erasure: a restore of a backup from before the purge erases it again.
        assert [
            (e.org_id, e.subject_id) for e in rights_store.erasures(conn) if e.org_id == org
        ] == [(org, "cust-1")]
    assert not own.kms.has_org(org)
    assert "org.purge" in _audit_actions(own, org)
    purged = [d for d in _system_details(own, "org.purged") if d["org_id"] == org]
    assert len(purged) == 1 and purged[0]["subjects_erased"] == 1
    assert purged[0]["keys_destroyed"] == [f"{org}/subject-keys", org]
    recorded = closure.closure(own, org)
    assert recorded is not None and recorded["receipt_sha256"] == purged[0]["receipt_sha256"]
    # Once: a later round finds nothing, and the chain still verifies (details shredded).
    assert org not in closure.purge_closed_orgs(own, grace_end + timedelta(days=1))
    assert verify_log(own.engine, own.audit_key, chain=org).ok


def test_org_close_default_grace_is_the_orgs_setting(
    own: Runtime, admin_of: Callable[[], tuple[Principal, str]]
) -> None:
    principal, _ = admin_of()
    now = utcnow()
    receipt = closure.close_org(own, principal.org_id, now=now)
    assert receipt["grace_days"] == 365
    assert receipt["purge_after"] == (now + timedelta(days=365)).isoformat()


@pytest.mark.parametrize("org_id", ["org_" + "0" * 32, "nonsense", "", "org_\x00", "x" * 500])
def test_closing_an_unknown_org_is_refused(own: Runtime, org_id: str) -> None:
    with pytest.raises(NotFoundError):
        closure.close_org(own, org_id)


@pytest.mark.parametrize("grace", [0, -1, 3651, True])
def test_a_bad_grace_period_is_refused_and_closes_nothing(
    own: Runtime, admin_of: Callable[[], tuple[Principal, str]], grace: int
) -> None:
    principal, key = admin_of()
    with pytest.raises(InvalidSettingsError):
        closure.close_org(own, principal.org_id, grace_days=grace)
    assert closure.closure(own, principal.org_id) is None
    assert authenticate(own, key, Scope.ADMIN).org_id == principal.org_id


# --- the round ----------------------------------------------------------------------------------


def test_the_round_sweeps_every_class_and_audits_what_it_purged(
    own: Runtime, admin_of: Callable[[], tuple[Principal, str]]
) -> None:
    principal, _ = admin_of()
    _log_request(own, principal.org_id, utcnow() - timedelta(days=91), 4)

    report = retention.run_retention(own)

    assert report is not None
    assert list(report.purged) == [
        "frames",
        "source_documents",
        "request_logs",
        "webhook_deliveries",
        "idempotency",
        "liveness_challenges",
        "audit",
        "customer_records",
    ]
    assert report.purged["request_logs"][principal.org_id] == 4
    rounds = _system_details(own, "retention.round")
    assert rounds[0]["purged"] == report.totals()
    assert rounds[0]["purged"]["request_logs"] >= 4


def test_the_round_tells_each_subscribed_org_what_it_purged_of_it(
    own: Runtime, admin_of: Callable[[], tuple[Principal, str]]
) -> None:
    listening, silent = admin_of()[0], admin_of()[0]
    endpoint = webhooks.create_endpoint(
        own, listening, "http://127.0.0.1:9/h", ["retention.purged"]
    )
    _log_request(own, listening.org_id, utcnow() - timedelta(days=91), 3)
    _log_request(own, silent.org_id, utcnow() - timedelta(days=91), 2)

    assert retention.run_retention(own) is not None

    with read_transaction(own.engine) as conn:
        [event] = webhook_rows.events_of(conn, listening.org_id, "retention.purged")
        [delivery] = webhook_rows.deliveries_of_event(conn, listening.org_id, event.id)
        assert webhook_rows.events_of(conn, silent.org_id) == []
    assert json.loads(event.payload)["data"] == {"purged": {"request_logs": 3}}
    assert (delivery.endpoint_id, delivery.status) == (endpoint["id"], "pending")
