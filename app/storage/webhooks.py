"""Webhooks: an org's endpoints, the event outbox and the deliveries fanned out from it.

Row-level reads and writes only; what may be created or changed is decided by
`app.services.webhooks`. `record_event` is the outbox: it writes the event and one pending
delivery per subscribed, enabled endpoint of the org in the CALLER's transaction, so the
event commits (or rolls back) with the change it reports.

Event payload (JSON, what the receiver gets as the body)::

    {"id": "evt_<32 hex>", "type": "enrollment.created", "version": 1,
     "timestamp": "2026-12-03T11:39:54.123456Z", "org_id": "org_<32 hex>",
     "data": {"subject_id": "...", "enrollment_id": "enr_<32 hex>"}}

``data`` holds ids and counts only: never PII, frames, vectors, or another org's ids.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.storage.ids import new_id
from app.storage.schema import (
    utcnow,
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    webhook_events,
)
from app.storage.webhook_deliveries import note_new_deliveries

EVENT_VERSION = 1

# --- endpoints ----------------------------------------------------------------------------------


def insert_endpoint(
    conn: Connection,
    *,
    endpoint_id: str,
    org_id: str,
    url: str,
    events: list[str],
    description: str | None,
    secret_sealed: bytes,
    now: datetime,
) -> None:
    conn.execute(
        sa.insert(webhook_endpoints).values(
            id=endpoint_id,
            org_id=org_id,
            url=url,
            events=events,
            description=description,
            secret_sealed=secret_sealed,
            enabled=True,
            created_at=now,
            updated_at=now,
        )
    )


def find_endpoint(conn: Connection, org_id: str, endpoint_id: str) -> Any:
    """The endpoint row if it belongs to ``org_id`` (another org's id finds nothing)."""
    return conn.execute(
        sa.select(webhook_endpoints).where(
            webhook_endpoints.c.id == endpoint_id, webhook_endpoints.c.org_id == org_id
        )
    ).first()


def endpoints_of(conn: Connection, org_id: str) -> list[Any]:
    """Every endpoint of the org (a short list: the service caps it), oldest first."""
    return list(
        conn.execute(
            sa.select(webhook_endpoints)
            .where(webhook_endpoints.c.org_id == org_id)
            .order_by(webhook_endpoints.c.created_at, webhook_endpoints.c.id)
        )
    )


def count_endpoints(conn: Connection, org_id: str) -> int:
    stmt = sa.select(sa.func.count()).where(webhook_endpoints.c.org_id == org_id)
    return int(conn.execute(stmt).scalar_one())


def update_endpoint(
    conn: Connection, org_id: str, endpoint_id: str, values: Mapping[str, Any]
) -> bool:
    """Set columns of the org's endpoint (``updated_at`` included by the caller)."""
    result = conn.execute(
        sa.update(webhook_endpoints)
        .where(webhook_endpoints.c.id == endpoint_id, webhook_endpoints.c.org_id == org_id)
        .values(**values)
    )
    return bool(result.rowcount)


def delete_endpoint(conn: Connection, org_id: str, endpoint_id: str) -> int:
    """Delete the endpoint and its pending deliveries; returns how many pending deliveries
    were dropped. Finished deliveries and attempts stay for the history's retention."""
    dropped = conn.execute(
        sa.delete(webhook_deliveries).where(
            webhook_deliveries.c.org_id == org_id,
            webhook_deliveries.c.endpoint_id == endpoint_id,
            webhook_deliveries.c.status == "pending",
        )
    ).rowcount
    conn.execute(
        sa.delete(webhook_endpoints).where(
            webhook_endpoints.c.id == endpoint_id, webhook_endpoints.c.org_id == org_id
        )
    )
    return int(dropped)


def count_pending(conn: Connection, org_id: str, endpoint_id: str) -> int:
    stmt = sa.select(sa.func.count()).where(
        webhook_deliveries.c.org_id == org_id,
        webhook_deliveries.c.endpoint_id == endpoint_id,
        webhook_deliveries.c.status == "pending",
    )
    return int(conn.execute(stmt).scalar_one())


# --- the outbox ---------------------------------------------------------------------------------


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_payload(
    event_id: str, org_id: str, event_type: str, data: Mapping[str, Any], now: datetime
) -> str:
    """The event's JSON body, as stored and as delivered (see the module docstring)."""
    body = {
        "id": event_id,
        "type": event_type,
        "version": EVENT_VERSION,
        "timestamp": _timestamp(now),
        "org_id": org_id,
        "data": dict(data),
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=False)


def subscribed_endpoints(conn: Connection, org_id: str, event_type: str) -> list[str]:
    """Ids of the org's enabled endpoints subscribed to ``event_type``."""
    rows = conn.execute(
        sa.select(webhook_endpoints.c.id, webhook_endpoints.c.events).where(
            webhook_endpoints.c.org_id == org_id, webhook_endpoints.c.enabled.is_(True)
        )
    )
    return [row.id for row in rows if event_type in (row.events or [])]


def record_event(
    conn: Connection,
    org_id: str,
    event_type: str,
    data: Mapping[str, Any],
    now: datetime | None = None,
) -> str | None:
    """Write the event to the outbox in the caller's transaction and fan it out into one
    pending delivery per enabled endpoint of the org subscribed to its type; returns the
    event id. ``data``: ids and counts only (the module docstring).

    No enabled endpoint of the org subscribes to the type: nothing is written (None), so an
    org without webhooks pays one indexed read per change and keeps no event history."""
    endpoint_ids = subscribed_endpoints(conn, org_id, event_type)
    if not endpoint_ids:
        return None
    now = now or utcnow()
    event_id = new_id("evt")
    payload = event_payload(event_id, org_id, event_type, data, now)
    conn.execute(
        sa.insert(webhook_events).values(
            id=event_id, org_id=org_id, type=event_type, occurred_at=now, payload=payload
        )
    )
    deliveries = [
        {
            "id": new_id("dlv"),
            "org_id": org_id,
            "endpoint_id": endpoint_id,
            "event_id": event_id,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for endpoint_id in endpoint_ids
    ]
    conn.execute(sa.insert(webhook_deliveries), deliveries)
    note_new_deliveries(conn)  # this process's worker wakes after the commit
    return event_id


def find_event(conn: Connection, org_id: str, event_id: str) -> Any:
    return conn.execute(
        sa.select(webhook_events).where(
            webhook_events.c.id == event_id, webhook_events.c.org_id == org_id
        )
    ).first()


def events_of(conn: Connection, org_id: str, event_type: str | None = None) -> list[Any]:
    """The org's events (of one type), oldest first."""
    stmt = sa.select(webhook_events).where(webhook_events.c.org_id == org_id)
    if event_type is not None:
        stmt = stmt.where(webhook_events.c.type == event_type)
    return list(conn.execute(stmt.order_by(webhook_events.c.occurred_at, webhook_events.c.id)))


def deliveries_of_event(conn: Connection, org_id: str, event_id: str) -> list[Any]:
    return list(
        conn.execute(
            sa.select(webhook_deliveries).where(
                webhook_deliveries.c.org_id == org_id, webhook_deliveries.c.event_id == event_id
            )
        )
    )


# --- the org's closure ---------------------------------------------------------------------------


def delete_org(conn: Connection, org_id: str) -> dict[str, int]:
    """Every webhook row of the org (endpoints are org configuration; events, deliveries and
    attempts name its subjects by id): what a closed org's purge removes."""
    counts = {}
    for name, table in (
        ("webhook_attempts", webhook_attempts),
        ("webhook_deliveries", webhook_deliveries),
        ("webhook_events", webhook_events),
        ("webhook_endpoints", webhook_endpoints),
    ):
        counts[name] = int(conn.execute(sa.delete(table).where(table.c.org_id == org_id)).rowcount)
    return counts
