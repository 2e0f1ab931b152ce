"""Webhook endpoints through the service verbs: secrets shown once, sealed, rotated with an
overlap; the helpers the delivery worker reads them with."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from app.crypto import DecryptionError
from app.runtime import Runtime
from app.services import closure, keys, webhooks
from app.services.orgs import update_org_settings
from app.services.principal import Principal
from app.storage import read_transaction, utcnow
from app.storage import webhooks as webhook_rows

RECEIVER = "http://127.0.0.1:9/hooks?token=abc"


def test_created_endpoint_signs_with_its_secret_only(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    made = webhooks.create_endpoint(runtime, admin, RECEIVER, ["enrollment.created"], "crm")
    secret = made["secret"]
    assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 44
    assert webhooks.signing_secrets(runtime, admin.org_id, made["id"]) == [secret]
    target = webhooks.endpoint_for_delivery(runtime, admin.org_id, made["id"])
    assert target is not None
    assert (target.url, target.enabled, target.secrets) == (RECEIVER, True, [secret])
    assert secret not in repr(target)
    assert "secret" not in webhooks.get_endpoint(runtime, admin, made["id"])


def test_rotation_keeps_the_previous_secret_for_the_overlap(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    made = webhooks.create_endpoint(runtime, admin, RECEIVER, ["key.rotated"])
    rotated = webhooks.rotate_secret(runtime, admin, made["id"], timedelta(hours=2))
    assert rotated["secret"] != made["secret"]
    now = utcnow()
    assert webhooks.signing_secrets(runtime, admin.org_id, made["id"], now) == [
        rotated["secret"],
        made["secret"],
    ]
    later = now + timedelta(hours=2, seconds=1)
    assert webhooks.signing_secrets(runtime, admin.org_id, made["id"], later) == [rotated["secret"]]
    again = webhooks.rotate_secret(runtime, admin, made["id"], timedelta(0))
    assert again["previous_secret_expires_at"] is None
    assert webhooks.signing_secrets(runtime, admin.org_id, made["id"]) == [again["secret"]]


def test_a_secret_sealed_for_one_endpoint_opens_for_no_other(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    one = webhooks.create_endpoint(runtime, admin, RECEIVER, ["key.rotated"])
    other = webhooks.create_endpoint(runtime, admin, RECEIVER, ["key.rotated"])
    sealed = webhooks._seal(runtime, admin.org_id, one["id"], one["secret"])
    assert webhooks.open_secret(runtime, admin.org_id, one["id"], sealed) == one["secret"]
    with pytest.raises(DecryptionError):
        webhooks.open_secret(runtime, admin.org_id, other["id"], sealed)


def test_secrets_sign_after_a_kek_rotation_and_the_old_versions_destruction(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    made = webhooks.create_endpoint(runtime, admin, RECEIVER, ["key.rotated"])
    rotated = webhooks.rotate_secret(runtime, admin, made["id"], timedelta(hours=1))

    # A new primary alone: destroying the old version is refused while the secrets need it.
    runtime.kms.rotate(admin.org_id)
    keys.retire_kek_version(runtime, admin.org_id, 1)
    with pytest.raises(keys.KeyInUseError) as refused:
        keys.destroy_kek_version(runtime, admin.org_id, 1)
    assert refused.value.details["dependents"]["webhook_secrets"] == 1

    report = keys.rotate_org_keys(runtime, admin.org_id, resume=True)
    assert report.rewrapped["webhook_secrets"] == 2  # the current and the previous secret
    assert keys.dependents(runtime, admin.org_id, keys.Family.ORG, 1)["webhook_secrets"] == 0
    keys.destroy_kek_version(runtime, admin.org_id, 1)

    secrets = webhooks.signing_secrets(runtime, admin.org_id, made["id"])
    assert secrets == [rotated["secret"], made["secret"]]
    body, sent_at = '{"type":"key.rotated"}', datetime.now(UTC)
    for secret in secrets:
        signature = Webhook(secret).sign("evt_1", sent_at, body)
        headers = {"webhook-id": "evt_1", "webhook-timestamp": str(int(sent_at.timestamp()))}
        Webhook(secret).verify(body, {**headers, "webhook-signature": signature})


def test_a_closed_orgs_purge_deletes_its_webhooks(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    webhooks.create_endpoint(runtime, admin, RECEIVER, ["org.settings.changed"])
    update_org_settings(runtime, admin, {"duplicate_policy": "flag"})  # an event to deliver
    closure.close_org(runtime, admin.org_id, grace_days=1)

    receipt = closure.purge_org(runtime, admin.org_id, utcnow())

    assert (receipt["webhook_endpoints_deleted"], receipt["webhook_events_deleted"]) == (1, 1)
    with read_transaction(runtime.engine) as conn:
        assert webhook_rows.endpoints_of(conn, admin.org_id) == []
        assert webhook_rows.events_of(conn, admin.org_id) == []
