"""The transactional outbox: each change writes its event, and one pending delivery per
enabled endpoint subscribed to its type, in the change's own transaction; a change that
fails or is refused writes nothing. Payloads hold ids and counts, never PII, frames,
vectors, or anything of another org. (`retention.purged`: tests/app/services/test_retention.py.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from app.errors import EnrollmentNotActiveError, InvalidSettingsError
from app.runtime import Runtime
from app.services import keys, rights, webhooks
from app.services.matching import Probe
from app.services.orgs import update_org_settings
from app.services.principal import Principal
from app.services.subjects import CaptureBundle, enroll_subject, erase_subject, retire_enrollment
from app.services.watchlists import Contribution, contribute, screen
from app.storage import read_transaction, write_transaction
from app.storage import webhooks as webhook_rows
from tests.app.services.helpers import recapture
from tests.app.services.test_watchlists import shared_watchlist

RECEIVER = "http://127.0.0.1:9/hooks"
PII = {"nik": "3171012345678901", "email": "siti@example.co.id", "phone": "+6281234567890"}


@dataclass
class Hooks:
    """One org's three endpoints: subscribed to the type, subscribed but disabled, and
    subscribed to everything else."""

    subscribed: str
    disabled: str
    other: str


def hooks_for(runtime: Runtime, admin: Principal, event_type: str, *tested: str) -> Hooks:
    """``tested``: the other types this test makes events of (`other` takes none of them)."""
    others = [t for t in webhooks.EVENT_TYPES if t not in (event_type, *tested)]
    subscribed = webhooks.create_endpoint(runtime, admin, RECEIVER, [event_type])["id"]
    disabled = webhooks.create_endpoint(runtime, admin, RECEIVER, [event_type])["id"]
    webhooks.update_endpoint(runtime, admin, disabled, {"enabled": False})
    other = webhooks.create_endpoint(runtime, admin, RECEIVER, others)["id"]
    return Hooks(subscribed, disabled, other)


def outbox(runtime: Runtime, org_id: str, event_type: str) -> list[dict[str, Any]]:
    """The org's events of a type, each payload parsed, with the endpoints it goes to."""
    with read_transaction(runtime.engine) as conn:
        events = webhook_rows.events_of(conn, org_id, event_type)
        return [
            {
                **json.loads(e.payload),
                "to": sorted(
                    d.endpoint_id for d in webhook_rows.deliveries_of_event(conn, org_id, e.id)
                ),
                "deliveries": webhook_rows.deliveries_of_event(conn, org_id, e.id),
            }
            for e in events
        ]


def only_event(runtime: Runtime, org_id: str, event_type: str, hooks: Hooks) -> dict[str, Any]:
    [event] = outbox(runtime, org_id, event_type)
    assert event["to"] == [hooks.subscribed]  # neither the disabled nor the unsubscribed one
    [delivery] = event["deliveries"]
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    assert delivery.next_attempt_at is not None
    assert event["id"].startswith("evt_") and event["type"] == event_type
    assert event["version"] == 1 and event["org_id"] == org_id
    moment = datetime.strptime(event["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - moment).total_seconds()) < 3600
    assert set(event) == {
        "id",
        "type",
        "version",
        "timestamp",
        "org_id",
        "data",
        "to",
        "deliveries",
    }
    text = json.dumps(event["data"])
    for value in PII.values():
        assert value not in text
    return dict(event["data"])


def test_enrollment_created_and_retired(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    created = hooks_for(runtime, admin, "enrollment.created", "enrollment.retired")
    retired = hooks_for(runtime, admin, "enrollment.retired", "enrollment.created")
    result = enroll_subject(
        runtime, admin, "cust-1", CaptureBundle([face_images["person0"]], pii=PII)
    )
    data = only_event(runtime, admin.org_id, "enrollment.created", created)
    assert data == {"subject_id": "cust-1", "enrollment_id": result.enrollment_id}
    assert outbox(runtime, admin.org_id, "enrollment.retired") == []

    retire_enrollment(runtime, admin, result.enrollment_id)
    data = only_event(runtime, admin.org_id, "enrollment.retired", retired)
    assert data == {"enrollment_id": result.enrollment_id}
    # Retiring it again is refused: no second event.
    with pytest.raises(EnrollmentNotActiveError):
        retire_enrollment(runtime, admin, result.enrollment_id)
    assert len(outbox(runtime, admin.org_id, "enrollment.retired")) == 1


def test_subject_exported_and_erased(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    exported = hooks_for(runtime, admin, "subject.exported", "subject.erased")
    erased = hooks_for(runtime, admin, "subject.erased", "subject.exported")
    enroll_subject(runtime, admin, "cust-2", CaptureBundle([face_images["person1"]], pii=PII))

    document = rights.export_subject(runtime, admin, "cust-2")
    data = only_event(runtime, admin.org_id, "subject.exported", exported)
    assert data == {"subject_id": "cust-2", "export_sha256": document["sha256"]}

    erase_subject(runtime, admin, "cust-2")
    assert only_event(runtime, admin.org_id, "subject.erased", erased) == {"subject_id": "cust-2"}


def test_watchlist_hit_tells_the_screener_nothing_of_the_contributor(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    owner, member = new_admin("Owner Bank"), new_admin("Member Bank")
    face = face_images["person2"]
    watchlist_id, _ = shared_watchlist(runtime, owner, member)
    owner_hooks = hooks_for(runtime, owner, "watchlist.hit")
    member_hooks = hooks_for(runtime, member, "watchlist.hit")
    enroll_subject(runtime, owner, "fraudster-9", CaptureBundle([face]))
    [entry_id] = contribute(
        runtime, owner, watchlist_id, Contribution("confirmed_fraud", subject_id="fraudster-9")
    )["entry_ids"]

    screened = screen(runtime, member, watchlist_id, Probe(image=recapture(face)))

    assert [h["entry_id"] for h in screened["hits"]] == [entry_id]
    data = only_event(runtime, member.org_id, "watchlist.hit", member_hooks)
    assert data == {"watchlist_id": watchlist_id, "screen_id": screened["audit_id"], "hits": 1}
    event = json.dumps(outbox(runtime, member.org_id, "watchlist.hit")[0]["data"])
    for secret in (owner.org_id, entry_id, "fraudster-9", "confirmed_fraud"):
        assert secret not in event
    # The contributor is told nothing; a screening without hits writes no event.
    assert outbox(runtime, owner.org_id, "watchlist.hit") == []
    assert owner_hooks.subscribed  # it was listening
    screen(runtime, member, watchlist_id, Probe(image=face_images["person3"]))
    assert len(outbox(runtime, member.org_id, "watchlist.hit")) == 1


def test_key_rotated(runtime: Runtime, new_admin: Callable[..., Principal]) -> None:
    admin = new_admin()
    hooks = hooks_for(runtime, admin, "key.rotated")
    report = keys.rotate_org_keys(runtime, admin.org_id)
    data = only_event(runtime, admin.org_id, "key.rotated", hooks)
    assert data == {
        "key": "kek",
        "kek_version": report.kek_version,
        "subject_kek_version": report.subject_kek_version,
    }


def test_org_settings_changed_lists_field_names_only(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    hooks = hooks_for(runtime, admin, "org.settings.changed")
    update_org_settings(runtime, admin, {"duplicate_policy": "flag", "watchlist_sharing": True})
    data = only_event(runtime, admin.org_id, "org.settings.changed", hooks)
    assert data == {"changed": ["duplicate_policy", "watchlist_sharing"]}
    # A refused change, and one that changes nothing, write no event.
    with pytest.raises(InvalidSettingsError):
        update_org_settings(runtime, admin, {"duplicate_policy": "sometimes"})
    update_org_settings(runtime, admin, {"duplicate_policy": "flag"})
    assert len(outbox(runtime, admin.org_id, "org.settings.changed")) == 1


def test_an_event_rolls_back_with_its_change(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    hooks = hooks_for(runtime, admin, "subject.erased")
    with pytest.raises(RuntimeError), write_transaction(runtime.engine) as conn:
        event_id = webhook_rows.record_event(
            conn, admin.org_id, "subject.erased", {"subject_id": "x"}
        )
        assert event_id is not None
        assert webhook_rows.find_event(conn, admin.org_id, event_id) is not None
        raise RuntimeError("the change failed after its event was written")
    assert outbox(runtime, admin.org_id, "subject.erased") == []
    with read_transaction(runtime.engine) as conn:
        assert webhook_rows.count_pending(conn, admin.org_id, hooks.subscribed) == 0


def test_an_org_without_a_subscribed_endpoint_keeps_no_events(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    webhooks.create_endpoint(runtime, admin, RECEIVER, ["subject.erased"])
    enroll_subject(runtime, admin, "cust-3", CaptureBundle([face_images["person5"]]))
    assert outbox(runtime, admin.org_id, "enrollment.created") == []


def test_another_orgs_endpoints_get_nothing(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    mine, theirs = new_admin("Mine"), new_admin("Theirs")
    their_hooks = hooks_for(runtime, theirs, "enrollment.created")
    enroll_subject(runtime, mine, "cust-4", CaptureBundle([face_images["person1"]]))
    assert outbox(runtime, theirs.org_id, "enrollment.created") == []
    with read_transaction(runtime.engine) as conn:
        assert webhook_rows.count_pending(conn, theirs.org_id, their_hooks.subscribed) == 0
