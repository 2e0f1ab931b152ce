"""Webhook endpoints of an org: the event catalogue, create/list/read/update/delete, and the
signing secret (shown once, sealed under the org KEK, rotated with an overlap).

A secret is ``whsec_<base64 of 32 random bytes>`` (Standard Webhooks 1.0). It is sealed with
`app.crypto.EnvelopeCipher` under the org KEK (purpose ``webhook_secret``, bound to the
endpoint id), returned in the answer that made it and never again, never logged or audited.
A rotation makes a new secret and keeps the old one sealed until ``previous_secret_expires_at``;
until then deliveries carry both signatures (`signing_secrets`). The org KEK's rotation
rewraps both (`app.services.keys`).

Events are written by the services that make the changes, with
`app.storage.webhooks.record_event` in the change's own transaction (the outbox); the delivery
worker reads endpoints with `endpoint_for_delivery` and `signing_secrets`.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from app.crypto import DecryptionError, Purpose
from app.errors import ConflictError, InvalidRequestError, NotFoundError
from app.runtime import Runtime
from app.services import pages
from app.services.idempotency import store_answer
from app.services.principal import Principal, record
from app.services.text import SERVICE_ID, check_text
from app.services.webhook_urls import check_destination, check_url
from app.settings import Mode
from app.storage import Connection, feed, new_id, read_transaction, utcnow, write_transaction
from app.storage import webhooks as rows

#: Every event type an endpoint may subscribe to (the `data` of each in docs/webhooks.md).
EVENT_TYPES = (
    "enrollment.created",
    "enrollment.retired",
    "subject.erased",
    "subject.exported",
    "watchlist.hit",
    "retention.purged",
    "key.rotated",
    "org.settings.changed",
)
MAX_ENDPOINTS_PER_ORG = 20
MAX_DESCRIPTION_LENGTH = 500
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
DEFAULT_OVERLAP = timedelta(hours=24)
MAX_OVERLAP = timedelta(days=7)


class WebhookNotFoundError(NotFoundError):
    """No such endpoint in the caller's org (another org's endpoint is the same 404)."""

    code = "webhook_not_found"


class UnknownEventTypeError(InvalidRequestError):
    code = "unknown_event_type"


class WebhookLimitError(ConflictError):
    code = "webhook_limit_reached"


@dataclass(frozen=True)
class DeliveryTarget:
    """An endpoint as the delivery worker needs it; ``secrets`` is what signs (the current
    one first, then the previous one while its overlap lasts), left out of the repr."""

    endpoint_id: str
    org_id: str
    url: str
    enabled: bool
    failing_since: datetime | None
    secrets: list[str] = field(repr=False)


# --- secrets --------------------------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _seal(runtime: Runtime, org_id: str, endpoint_id: str, secret: str) -> bytes:
    return runtime.cipher.seal(
        secret.encode(), org_id=org_id, object_id=endpoint_id, purpose=Purpose.WEBHOOK_SECRET
    )


def open_secret(runtime: Runtime, org_id: str, endpoint_id: str, sealed: bytes) -> str:
    """A sealed secret, opened (`DecryptionError` if it does not open: tampered, or its KEK
    version destroyed)."""
    return runtime.cipher.open(
        bytes(sealed), org_id=org_id, object_id=endpoint_id, purpose=Purpose.WEBHOOK_SECRET
    ).decode()


def _secrets_of(runtime: Runtime, row: Any, now: datetime) -> list[str]:
    found = [open_secret(runtime, row.org_id, row.id, row.secret_sealed)]
    expires = row.previous_secret_expires_at
    if row.previous_secret_sealed is not None and expires is not None and expires > now:
        # The current secret still signs if the previous one no longer opens.
        with contextlib.suppress(DecryptionError):
            found.append(open_secret(runtime, row.org_id, row.id, row.previous_secret_sealed))
    return found


def signing_secrets(
    runtime: Runtime, org_id: str, endpoint_id: str, now: datetime | None = None
) -> list[str]:
    """The ``whsec_…`` secrets that sign a delivery to this endpoint now: the current one,
    and the previous one while its overlap lasts. `WebhookNotFoundError` if it is gone."""
    with read_transaction(runtime.engine) as conn:
        row = rows.find_endpoint(conn, org_id, endpoint_id)
    if row is None:
        raise WebhookNotFoundError("no such webhook")
    return _secrets_of(runtime, row, now or utcnow())


def endpoint_for_delivery(
    runtime: Runtime,
    org_id: str,
    endpoint_id: str,
    now: datetime | None = None,
    conn: Connection | None = None,
) -> DeliveryTarget | None:
    """The endpoint with its signing secrets, or None if it was deleted. Read in ``conn``
    when given (the worker's claiming transaction), else in a transaction of its own."""
    if conn is None:
        with read_transaction(runtime.engine) as own:
            row = rows.find_endpoint(own, org_id, endpoint_id)
    else:
        row = rows.find_endpoint(conn, org_id, endpoint_id)
    if row is None:
        return None
    return DeliveryTarget(
        endpoint_id=row.id,
        org_id=row.org_id,
        url=row.url,
        enabled=bool(row.enabled),
        failing_since=row.failing_since,
        secrets=_secrets_of(runtime, row, now or utcnow()),
    )


# --- validation -------------------------------------------------------------------------------


def _check_events(events: Sequence[str]) -> list[str]:
    if not isinstance(events, list | tuple) or not events:
        raise InvalidRequestError("events must list at least one event type")
    unknown = sorted({e for e in events if e not in EVENT_TYPES}, key=str)
    if unknown:
        shown = [e[:64] if isinstance(e, str) else repr(e)[:64] for e in unknown[:5]]
        raise UnknownEventTypeError(
            f"unknown event types: {', '.join(shown)}", known=list(EVENT_TYPES)
        )
    return list(dict.fromkeys(events))


def _check_description(description: str | None) -> str | None:
    if description is None:
        return None
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidRequestError(f"description must be at most {MAX_DESCRIPTION_LENGTH} chars")
    return check_text(description, "description")


def _check_target(runtime: Runtime, url: str) -> str:
    settings = runtime.settings
    check_url(url, require_https=settings.mode is Mode.PRODUCTION)
    check_destination(url, settings.webhooks_allow_private)
    return url


def _check_id(endpoint_id: str) -> str:
    if not SERVICE_ID.fullmatch(endpoint_id):
        raise WebhookNotFoundError("no such webhook")
    return endpoint_id


def _host(url: str) -> str:
    """What the audit log names of a URL: its host, never its path or query (which may carry
    a receiver's token)."""
    return check_url(url, require_https=False).hostname or ""


def check_overlap(overlap: timedelta | None) -> timedelta:
    if overlap is None:
        return DEFAULT_OVERLAP
    if not timedelta(0) <= overlap <= MAX_OVERLAP:
        raise InvalidRequestError(f"the overlap must be within 0..{MAX_OVERLAP}")
    return overlap


# --- views ------------------------------------------------------------------------------------


def endpoint_view(row: Any) -> dict[str, Any]:
    """An endpoint as the API shows it: never its secret."""
    return {
        "id": row.id,
        "url": row.url,
        "events": list(row.events),
        "description": row.description,
        "enabled": bool(row.enabled),
        "disabled_at": row.disabled_at,
        "disabled_reason": row.disabled_reason,
        "failing_since": row.failing_since,
        "previous_secret_expires_at": row.previous_secret_expires_at,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def _audit(
    conn: Connection, runtime: Runtime, principal: Principal, action: str, target: str, **d: Any
) -> None:
    record(
        conn, runtime, principal, org_id=principal.org_id, action=action, target=target, details=d
    )


# --- the API's operations -------------------------------------------------------------------


def create_endpoint(
    runtime: Runtime,
    principal: Principal,
    url: str,
    events: Sequence[str],
    description: str | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """A new enabled endpoint; the answer holds its secret, which is never shown again (the
    answer kept for an `Idempotency-Key` replay, in the same transaction, holds none)."""
    org_id = principal.org_id
    events = _check_events(events)
    description = _check_description(description)
    _check_target(runtime, url)  # resolves the host: before the transaction, not inside it
    endpoint_id, secret, now = new_id("wh"), new_secret(), utcnow()
    sealed = _seal(runtime, org_id, endpoint_id, secret)
    with write_transaction(runtime.engine) as conn:
        feed.lock_for_transaction(conn, f"webhooks:{org_id}")
        if rows.count_endpoints(conn, org_id) >= MAX_ENDPOINTS_PER_ORG:
            raise WebhookLimitError(
                f"an org may have at most {MAX_ENDPOINTS_PER_ORG} webhooks; delete one first"
            )
        rows.insert_endpoint(
            conn,
            endpoint_id=endpoint_id,
            org_id=org_id,
            url=url,
            events=events,
            description=description,
            secret_sealed=sealed,
            now=now,
        )
        _audit(
            conn, runtime, principal, "webhook.create", endpoint_id, host=_host(url), events=events
        )
        row = rows.find_endpoint(conn, org_id, endpoint_id)
        if idempotency_key is not None:
            store_answer(conn, org_id, idempotency_key, 201, without_secret(endpoint_view(row)))
    return {**endpoint_view(row), "secret": secret}


def without_secret(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer that showed a secret, as a replay of its request gets it: secret null."""
    return {**answer, "secret": None}


def list_endpoints(runtime: Runtime, principal: Principal) -> list[dict[str, Any]]:
    with read_transaction(runtime.engine) as conn:
        found = rows.endpoints_of(conn, principal.org_id)
    return [endpoint_view(r) for r in found]


def endpoints_page(
    runtime: Runtime, principal: Principal, limit: int = 50, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the org's endpoints, oldest first (at most 20: read whole)."""
    return pages.page_of(
        list_endpoints(runtime, principal),
        limit,
        cursor,
        lambda e: pages.hex_id_position(e["created_at"], e["id"]),
    )


def get_endpoint(runtime: Runtime, principal: Principal, endpoint_id: str) -> dict[str, Any]:
    with read_transaction(runtime.engine) as conn:
        row = rows.find_endpoint(conn, principal.org_id, _check_id(endpoint_id))
    if row is None:
        raise WebhookNotFoundError("no such webhook")
    return endpoint_view(row)


def update_endpoint(
    runtime: Runtime, principal: Principal, endpoint_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """A partial update of url, events, description, enabled; each checked before anything
    changes. ``enabled: true`` re-enables an endpoint the worker disabled (clears
    ``disabled_at``, ``disabled_reason`` and ``failing_since``)."""
    org_id, endpoint_id = principal.org_id, _check_id(endpoint_id)
    values = _checked_changes(runtime, changes)
    now = utcnow()
    with write_transaction(runtime.engine) as conn:
        row = rows.find_endpoint(conn, org_id, endpoint_id)
        if row is None:
            raise WebhookNotFoundError("no such webhook")
        if "enabled" in values:
            values.update(_enabled_values(row, bool(values["enabled"]), now))
        changed = sorted(k for k, v in values.items() if getattr(row, k) != v)
        if changed:
            rows.update_endpoint(conn, org_id, endpoint_id, {**values, "updated_at": now})
            _audit(
                conn,
                runtime,
                principal,
                "webhook.update",
                endpoint_id,
                changed=changed,
                host=_host(values.get("url", row.url)),
            )
            row = rows.find_endpoint(conn, org_id, endpoint_id)
    return endpoint_view(row)


def _checked_changes(runtime: Runtime, changes: dict[str, Any]) -> dict[str, Any]:
    unknown = set(changes) - {"url", "events", "description", "enabled"}
    if unknown:
        raise InvalidRequestError(f"cannot change {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    if "events" in changes:
        values["events"] = _check_events(changes["events"])
    if "description" in changes:
        values["description"] = _check_description(changes["description"])
    if "enabled" in changes:
        if not isinstance(changes["enabled"], bool):
            raise InvalidRequestError("enabled must be true or false")
        values["enabled"] = changes["enabled"]
    if "url" in changes:
        values["url"] = _check_target(runtime, changes["url"])
    return values


def _enabled_values(row: Any, enabled: bool, now: datetime) -> dict[str, Any]:
    if enabled:
        return {"disabled_at": None, "disabled_reason": None, "failing_since": None}
    if not row.enabled:
        return {}  # disabled already: keep when and why
    return {"disabled_at": now, "disabled_reason": "disabled by the org"}


def delete_endpoint(runtime: Runtime, principal: Principal, endpoint_id: str) -> dict[str, Any]:
    """Delete the endpoint; its pending deliveries are dropped. Answers what was removed."""
    org_id, endpoint_id = principal.org_id, _check_id(endpoint_id)
    with write_transaction(runtime.engine) as conn:
        row = rows.find_endpoint(conn, org_id, endpoint_id)
        if row is None:
            raise WebhookNotFoundError("no such webhook")
        dropped = rows.delete_endpoint(conn, org_id, endpoint_id)
        _audit(
            conn,
            runtime,
            principal,
            "webhook.delete",
            endpoint_id,
            host=_host(row.url),
            pending_deliveries_dropped=dropped,
        )
    return {**endpoint_view(row), "pending_deliveries_dropped": dropped, "deleted_at": utcnow()}


def rotate_secret(
    runtime: Runtime,
    principal: Principal,
    endpoint_id: str,
    overlap: timedelta | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """A new secret (in this answer only); the current one becomes the previous one and
    keeps signing for ``overlap`` (24 h by default, 0 to drop it at once). A previous secret
    from an earlier rotation is dropped."""
    org_id, endpoint_id = principal.org_id, _check_id(endpoint_id)
    overlap = check_overlap(overlap)
    secret, now = new_secret(), utcnow()
    sealed = _seal(runtime, org_id, endpoint_id, secret)
    with write_transaction(runtime.engine) as conn:
        row = rows.find_endpoint(conn, org_id, endpoint_id)
        if row is None:
            raise WebhookNotFoundError("no such webhook")
        keep = overlap > timedelta(0)
        rows.update_endpoint(
            conn,
            org_id,
            endpoint_id,
            {
                "secret_sealed": sealed,
                # Same endpoint, same purpose: the sealed bytes move as they are.
                "previous_secret_sealed": bytes(row.secret_sealed) if keep else None,
                "previous_secret_expires_at": now + overlap if keep else None,
                "updated_at": now,
            },
        )
        _audit(
            conn,
            runtime,
            principal,
            "webhook.rotate_secret",
            endpoint_id,
            overlap_seconds=int(overlap.total_seconds()),
        )
        row = rows.find_endpoint(conn, org_id, endpoint_id)
        if idempotency_key is not None:
            store_answer(conn, org_id, idempotency_key, 200, without_secret(endpoint_view(row)))
    return {**endpoint_view(row), "secret": secret}
