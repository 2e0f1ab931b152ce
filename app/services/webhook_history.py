"""Webhook delivery history: what the API shows of deliveries and their attempts, and the
redelivery an org asks for. The history is kept `retention.webhook_days` (30 by default;
`app.services.retention`, class `webhook_deliveries`).

Lists are oldest first with the house's opaque cursor (`app.services.pages`). Another org's
endpoint, event or delivery is the same 404 as a missing one.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from app.errors import NotFoundError
from app.runtime import Runtime
from app.services import pages
from app.services.principal import Principal, record
from app.services.webhooks import WebhookNotFoundError
from app.storage import read_transaction, utcnow, write_transaction
from app.storage import webhook_deliveries as store
from app.storage.webhook_deliveries import AttemptRow, DeliveryRow

_ID = re.compile(r"^(wh|evt|dlv)_[0-9a-f]{32}$")


class WebhookEventNotFoundError(NotFoundError):
    code = "webhook_event_not_found"


class WebhookDeliveryNotFoundError(NotFoundError):
    code = "webhook_delivery_not_found"


def _well_formed(value: str, prefix: str) -> bool:
    return bool(_ID.fullmatch(value)) and value.startswith(prefix + "_")


def attempt_view(row: AttemptRow) -> dict[str, Any]:
    return {
        "attempted_at": row.attempted_at,
        "status_code": row.status_code,
        "latency_ms": row.latency_ms,
        "error_class": row.error_class,
    }


def delivery_view(row: DeliveryRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "webhook_id": row.endpoint_id,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "status": row.status,
        "attempts": row.attempts,
        "last_attempt_at": row.last_attempt_at,
        "last_status_code": row.last_status_code,
        "last_error_class": row.last_error_class,
        "next_attempt_at": row.next_attempt_at if row.status == store.PENDING else None,
        "completed_at": row.completed_at,
        "created_at": row.created_at,
    }


def _page(rows: list[DeliveryRow], limit: int) -> tuple[list[dict[str, Any]], str | None]:
    page = rows[:limit]
    more = len(rows) > limit
    cursor = (
        pages.encode(*pages.hex_id_position(page[-1].created_at, page[-1].id)) if more else None
    )
    return [delivery_view(r) for r in page], cursor


def _after(cursor: str | None) -> tuple[datetime, str] | None:
    return None if cursor is None else pages.after_hex_id(cursor, "dlv")


def deliveries_to_endpoint(
    runtime: Runtime,
    principal: Principal,
    endpoint_id: str,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the deliveries to an endpoint of the caller's org, oldest first."""
    after = _after(cursor)
    with read_transaction(runtime.engine) as conn:
        if not _well_formed(endpoint_id, "wh") or not store.endpoint_exists(
            conn, principal.org_id, endpoint_id
        ):
            raise WebhookNotFoundError("no such webhook")
        rows = store.list_deliveries(
            conn, principal.org_id, endpoint_id=endpoint_id, after=after, limit=limit + 1
        )
    return _page(rows, limit)


def deliveries_of_event(
    runtime: Runtime,
    principal: Principal,
    event_id: str,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of an event's deliveries (one per endpoint subscribed when it happened)."""
    after = _after(cursor)
    with read_transaction(runtime.engine) as conn:
        if not _well_formed(event_id, "evt") or not store.event_exists(
            conn, principal.org_id, event_id
        ):
            raise WebhookEventNotFoundError("no such webhook event")
        rows = store.list_deliveries(
            conn, principal.org_id, event_id=event_id, after=after, limit=limit + 1
        )
    return _page(rows, limit)


def _find(conn: Any, principal: Principal, endpoint_id: str, delivery_id: str) -> DeliveryRow:
    if not _well_formed(endpoint_id, "wh") or not store.endpoint_exists(
        conn, principal.org_id, endpoint_id
    ):
        raise WebhookNotFoundError("no such webhook")
    row = (
        store.get_delivery(conn, principal.org_id, delivery_id)
        if _well_formed(delivery_id, "dlv")
        else None
    )
    if row is None or row.endpoint_id != endpoint_id:
        raise WebhookDeliveryNotFoundError("no such delivery for this webhook")
    return row


def get_delivery(
    runtime: Runtime, principal: Principal, endpoint_id: str, delivery_id: str
) -> dict[str, Any]:
    """A delivery with every attempt made of it, first first."""
    with read_transaction(runtime.engine) as conn:
        row = _find(conn, principal, endpoint_id, delivery_id)
        attempts = store.attempts_of(conn, principal.org_id, delivery_id)
    return {**delivery_view(row), "attempt_log": [attempt_view(a) for a in attempts]}


def redeliver(
    runtime: Runtime,
    principal: Principal,
    endpoint_id: str,
    delivery_id: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Make the delivery pending and due now, whatever its state (a failed one too): the
    worker sends it again under the same webhook-id. A delivery already due is left as it
    is, so asking twice sends it once. Audited when it changed something."""
    moment = now or utcnow()
    with write_transaction(runtime.engine) as conn:
        _find(conn, principal, endpoint_id, delivery_id)
        changed = store.redeliver(conn, principal.org_id, delivery_id, moment)
        if changed:
            store.note_new_deliveries(conn)
            record(
                conn,
                runtime,
                principal,
                org_id=principal.org_id,
                action="webhook.redeliver",
                target=delivery_id,
                details={"webhook_id": endpoint_id},
            )
        row = store.get_delivery(conn, principal.org_id, delivery_id)
    assert row is not None
    return delivery_view(row)
