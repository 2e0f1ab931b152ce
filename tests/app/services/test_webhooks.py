"""Webhook endpoints through the service verbs: secrets shown once, sealed, rotated with an
overlap; the helpers the delivery worker reads them with."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from app.crypto import DecryptionError
from app.runtime import Runtime
from app.services import webhooks
from app.services.principal import Principal
from app.storage import utcnow

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
