"""Webhook deliveries as the worker sees them: claiming due ones, recording attempts, the
history per endpoint and per event, and its purge (`app.services.webhook_delivery` decides
when and what).

A delivery (`webhook_deliveries`) is one event for one endpoint; it is `pending` until an
attempt succeeds (`succeeded`) or the retry schedule runs out (`failed`). Every attempt is a
`webhook_attempts` row. Claiming a delivery pushes its `next_attempt_at` forward by a lease
(longer than an attempt can take): another replica's claim skips it until the lease ends, so
a replica that dies mid-attempt leaves the delivery to be retried, not lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from app.storage import feed
from app.storage.schema import (
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    webhook_events,
)

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
#: Rows one DELETE removes at most (a purge never holds a long lock on a busy table).
PURGE_BATCH = 5000
#: What the worker's connection notes when a transaction wrote deliveries (see `nudge_after`).
NUDGE_KEY = "wajah_webhook_nudge"


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A claimed delivery with what sending it takes (the endpoint's URL, the event)."""

    id: str
    org_id: str
    endpoint_id: str
    event_id: str
    attempts: int  # before this one
    lease_until: datetime  # the claim: our next_attempt_at, until we finish
    url: str
    event_type: str
    payload: str


def note_new_deliveries(conn: Connection) -> None:
    """Mark this connection's transaction as having written due deliveries: when it is
    returned to the pool (after its commit), this process's worker is woken (`nudge_after`);
    on PostgreSQL every replica's is, by the change feed's notification ``wh:due``."""
    conn.info[NUDGE_KEY] = True
    feed.announce(conn, "wh", "due")


def nudge_after(engine: Engine, wake: Callable[[], None]) -> Callable[..., None]:
    """Call ``wake`` whenever a connection of ``engine`` whose transaction wrote deliveries
    (`note_new_deliveries`) goes back to the pool: after its commit, so the woken worker
    finds the rows. Returns the listener, for `stop_nudging`."""

    def on_checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None and record.info.pop(NUDGE_KEY, False):
            wake()

    sa.event.listen(engine, "checkin", on_checkin)
    return on_checkin


def stop_nudging(engine: Engine, listener: Callable[..., None]) -> None:
    sa.event.remove(engine, "checkin", listener)


def any_due(conn: Connection, now: datetime) -> bool:
    """Whether some delivery to an enabled endpoint is due: a read, so an idle worker never
    takes SQLite's write lock."""
    found = conn.execute(
        sa.select(webhook_deliveries.c.id)
        .join(webhook_endpoints, webhook_endpoints.c.id == webhook_deliveries.c.endpoint_id)
        .where(
            webhook_deliveries.c.status == PENDING,
            webhook_deliveries.c.next_attempt_at <= now,
            webhook_endpoints.c.enabled.is_(True),
        )
        .limit(1)
    ).first()
    return found is not None


def claim_due(
    conn: Connection, now: datetime, limit: int, lease_until: datetime
) -> list[DueDelivery]:
    """The oldest due deliveries of enabled endpoints (at most ``limit``), leased to the
    caller until ``lease_until``.

    On PostgreSQL the rows are locked with ``FOR UPDATE SKIP LOCKED``, so replicas claiming
    at the same moment take disjoint batches, and the lease is written in the same
    transaction; on SQLite the write transaction's lock serialises claims.
    """
    query = (
        sa.select(
            webhook_deliveries.c.id,
            webhook_deliveries.c.org_id,
            webhook_deliveries.c.endpoint_id,
            webhook_deliveries.c.event_id,
            webhook_deliveries.c.attempts,
            webhook_endpoints.c.url,
            webhook_events.c.type,
            webhook_events.c.payload,
        )
        .join(webhook_endpoints, webhook_endpoints.c.id == webhook_deliveries.c.endpoint_id)
        .join(webhook_events, webhook_events.c.id == webhook_deliveries.c.event_id)
        .where(
            webhook_deliveries.c.status == PENDING,
            webhook_deliveries.c.next_attempt_at <= now,
            webhook_endpoints.c.enabled.is_(True),
        )
        .order_by(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=webhook_deliveries)
    )
    rows = conn.execute(query).all()
    if rows:
        conn.execute(
            sa.update(webhook_deliveries)
            .where(webhook_deliveries.c.id.in_([r.id for r in rows]))
            .values(next_attempt_at=lease_until)
        )
    return [
        DueDelivery(
            id=r.id,
            org_id=r.org_id,
            endpoint_id=r.endpoint_id,
            event_id=r.event_id,
            attempts=r.attempts,
            lease_until=lease_until,
            url=r.url,
            event_type=r.type,
            payload=r.payload,
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class AttemptResult:
    attempted_at: datetime
    status_code: int | None
    latency_ms: float
    error_class: str | None  # None: a 2xx


def record_attempt(conn: Connection, delivery: DueDelivery, result: AttemptResult) -> None:
    conn.execute(
        sa.insert(webhook_attempts).values(
            org_id=delivery.org_id,
            delivery_id=delivery.id,
            endpoint_id=delivery.endpoint_id,
            event_id=delivery.event_id,
            attempted_at=result.attempted_at,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error_class=result.error_class,
        )
    )


def settle(
    conn: Connection,
    delivery: DueDelivery,
    *,
    status: str,
    attempted_at: datetime,
    next_attempt_at: datetime | None,
) -> bool:
    """After an attempt: the delivery `succeeded`, `failed` for good, or stays `pending`
    until ``next_attempt_at``. Only while the caller's lease holds (a redelivery asked for
    meanwhile, or a claim by another replica after the lease ran out, wins); returns whether
    it did."""
    finished = status != PENDING
    updated = conn.execute(
        sa.update(webhook_deliveries)
        .where(
            webhook_deliveries.c.id == delivery.id,
            webhook_deliveries.c.status == PENDING,
            webhook_deliveries.c.next_attempt_at == delivery.lease_until,
        )
        .values(
            status=status,
            attempts=webhook_deliveries.c.attempts + 1,
            last_attempt_at=attempted_at,
            next_attempt_at=None if finished else next_attempt_at,
            completed_at=attempted_at if finished else None,
        )
    )
    return updated.rowcount == 1


def release(conn: Connection, delivery: DueDelivery, due_at: datetime) -> bool:
    """Hand a claimed delivery back unsent (the worker is stopping): due at ``due_at``
    instead of when the lease ends. Only while the caller's lease holds."""
    updated = conn.execute(
        sa.update(webhook_deliveries)
        .where(
            webhook_deliveries.c.id == delivery.id,
            webhook_deliveries.c.status == PENDING,
            webhook_deliveries.c.next_attempt_at == delivery.lease_until,
        )
        .values(next_attempt_at=due_at)
    )
    return updated.rowcount == 1


# --- endpoints' health --------------------------------------------------------------------------


def endpoint_succeeded(conn: Connection, endpoint_id: str) -> None:
    conn.execute(
        sa.update(webhook_endpoints)
        .where(webhook_endpoints.c.id == endpoint_id, webhook_endpoints.c.failing_since.isnot(None))
        .values(failing_since=None)
    )


def endpoint_failed(conn: Connection, endpoint_id: str, now: datetime) -> datetime | None:
    """Note a failed attempt; returns since when the endpoint has been failing (None: it is
    gone or disabled already)."""
    conn.execute(
        sa.update(webhook_endpoints)
        .where(webhook_endpoints.c.id == endpoint_id, webhook_endpoints.c.failing_since.is_(None))
        .values(failing_since=now)
    )
    since: datetime | None = conn.execute(
        sa.select(webhook_endpoints.c.failing_since).where(
            webhook_endpoints.c.id == endpoint_id, webhook_endpoints.c.enabled.is_(True)
        )
    ).scalar_one_or_none()
    return since


def disable_endpoint(conn: Connection, endpoint_id: str, now: datetime, reason: str) -> bool:
    updated = conn.execute(
        sa.update(webhook_endpoints)
        .where(webhook_endpoints.c.id == endpoint_id, webhook_endpoints.c.enabled.is_(True))
        .values(enabled=False, disabled_at=now, disabled_reason=reason, updated_at=now)
    )
    return updated.rowcount == 1


# --- history ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: str
    org_id: str
    endpoint_id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    completed_at: datetime | None
    created_at: datetime
    last_status_code: int | None
    last_error_class: str | None


@dataclass(frozen=True, slots=True)
class AttemptRow:
    id: int
    delivery_id: str
    endpoint_id: str
    event_id: str
    attempted_at: datetime
    status_code: int | None
    latency_ms: float
    error_class: str | None


def _delivery_query() -> sa.Select[Any]:
    return sa.select(
        webhook_deliveries.c.id,
        webhook_deliveries.c.org_id,
        webhook_deliveries.c.endpoint_id,
        webhook_deliveries.c.event_id,
        webhook_events.c.type.label("event_type"),
        webhook_deliveries.c.status,
        webhook_deliveries.c.attempts,
        webhook_deliveries.c.next_attempt_at,
        webhook_deliveries.c.last_attempt_at,
        webhook_deliveries.c.completed_at,
        webhook_deliveries.c.created_at,
    ).join(webhook_events, webhook_events.c.id == webhook_deliveries.c.event_id)


def _with_last_attempts(conn: Connection, rows: Sequence[Any]) -> list[DeliveryRow]:
    ids = [r.id for r in rows]
    last: dict[str, Any] = {}
    if ids:
        latest = (
            sa.select(sa.func.max(webhook_attempts.c.id))
            .where(webhook_attempts.c.delivery_id.in_(ids))
            .group_by(webhook_attempts.c.delivery_id)
        )
        for a in conn.execute(
            sa.select(
                webhook_attempts.c.delivery_id,
                webhook_attempts.c.status_code,
                webhook_attempts.c.error_class,
            ).where(webhook_attempts.c.id.in_(latest))
        ):
            last[a.delivery_id] = a
    return [
        DeliveryRow(
            **r._asdict(),
            last_status_code=last[r.id].status_code if r.id in last else None,
            last_error_class=last[r.id].error_class if r.id in last else None,
        )
        for r in rows
    ]


def list_deliveries(
    conn: Connection,
    org_id: str,
    *,
    endpoint_id: str | None = None,
    event_id: str | None = None,
    after: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> list[DeliveryRow]:
    """An org's deliveries to one endpoint or of one event, oldest first, after the
    position ``(created_at, id)``; at most ``limit``."""
    query = _delivery_query().where(webhook_deliveries.c.org_id == org_id)
    if endpoint_id is not None:
        query = query.where(webhook_deliveries.c.endpoint_id == endpoint_id)
    if event_id is not None:
        query = query.where(webhook_deliveries.c.event_id == event_id)
    if after is not None:
        created, row_id = after
        query = query.where(
            sa.or_(
                webhook_deliveries.c.created_at > created,
                sa.and_(
                    webhook_deliveries.c.created_at == created, webhook_deliveries.c.id > row_id
                ),
            )
        )
    query = query.order_by(webhook_deliveries.c.created_at, webhook_deliveries.c.id).limit(limit)
    return _with_last_attempts(conn, conn.execute(query).all())


def get_delivery(conn: Connection, org_id: str, delivery_id: str) -> DeliveryRow | None:
    row = conn.execute(
        _delivery_query().where(
            webhook_deliveries.c.org_id == org_id, webhook_deliveries.c.id == delivery_id
        )
    ).one_or_none()
    return None if row is None else _with_last_attempts(conn, [row])[0]


def attempts_of(conn: Connection, org_id: str, delivery_id: str) -> list[AttemptRow]:
    """Every attempt of a delivery, first first."""
    rows = conn.execute(
        sa.select(*_ATTEMPT_COLUMNS)
        .where(webhook_attempts.c.org_id == org_id, webhook_attempts.c.delivery_id == delivery_id)
        .order_by(webhook_attempts.c.id)
    )
    return [AttemptRow(**r._asdict()) for r in rows]


_ATTEMPT_COLUMNS = (
    webhook_attempts.c.id,
    webhook_attempts.c.delivery_id,
    webhook_attempts.c.endpoint_id,
    webhook_attempts.c.event_id,
    webhook_attempts.c.attempted_at,
    webhook_attempts.c.status_code,
    webhook_attempts.c.latency_ms,
    webhook_attempts.c.error_class,
)


def list_attempts(
    conn: Connection,
    org_id: str,
    *,
    endpoint_id: str | None = None,
    event_id: str | None = None,
    after_id: int = 0,
    limit: int = 50,
) -> list[AttemptRow]:
    """An org's attempts at one endpoint or for one event, in the order they were made."""
    query = sa.select(*_ATTEMPT_COLUMNS).where(
        webhook_attempts.c.org_id == org_id, webhook_attempts.c.id > after_id
    )
    if endpoint_id is not None:
        query = query.where(webhook_attempts.c.endpoint_id == endpoint_id)
    if event_id is not None:
        query = query.where(webhook_attempts.c.event_id == event_id)
    rows = conn.execute(query.order_by(webhook_attempts.c.id).limit(limit))
    return [AttemptRow(**r._asdict()) for r in rows]


def redeliver(conn: Connection, org_id: str, delivery_id: str, now: datetime) -> bool:
    """Make a delivery pending and due now (a failed or succeeded one too). A delivery
    already due (or claimed right now) is left as it is. Returns whether anything changed."""
    updated = conn.execute(
        sa.update(webhook_deliveries)
        .where(
            webhook_deliveries.c.org_id == org_id,
            webhook_deliveries.c.id == delivery_id,
            sa.or_(
                webhook_deliveries.c.status != PENDING,
                webhook_deliveries.c.next_attempt_at > now,
            ),
        )
        .values(status=PENDING, next_attempt_at=now, completed_at=None)
    )
    return updated.rowcount == 1


def endpoint_exists(conn: Connection, org_id: str, endpoint_id: str) -> bool:
    return (
        conn.execute(
            sa.select(webhook_endpoints.c.id).where(
                webhook_endpoints.c.org_id == org_id, webhook_endpoints.c.id == endpoint_id
            )
        ).first()
        is not None
    )


def event_exists(conn: Connection, org_id: str, event_id: str) -> bool:
    return (
        conn.execute(
            sa.select(webhook_events.c.id).where(
                webhook_events.c.org_id == org_id, webhook_events.c.id == event_id
            )
        ).first()
        is not None
    )


# --- retention ----------------------------------------------------------------------------------


def purge_history(conn: Connection, org_id: str, cutoff: datetime) -> int:
    """Delete one batch of an org's history older than ``cutoff``: attempts made before it,
    then deliveries created before it that are finished (or stuck pending so long their
    endpoint has been disabled for the whole period), then events before it that no
    delivery refers to any more. Returns the rows deleted (< `PURGE_BATCH`: done)."""
    old_attempts = (
        sa.select(webhook_attempts.c.id)
        .where(webhook_attempts.c.org_id == org_id, webhook_attempts.c.attempted_at < cutoff)
        .limit(PURGE_BATCH)
    )
    deleted = conn.execute(
        sa.delete(webhook_attempts).where(webhook_attempts.c.id.in_(old_attempts))
    ).rowcount
    old_deliveries = (
        sa.select(webhook_deliveries.c.id)
        .where(
            webhook_deliveries.c.org_id == org_id,
            webhook_deliveries.c.created_at < cutoff,
            sa.or_(
                webhook_deliveries.c.status != PENDING,
                webhook_deliveries.c.next_attempt_at < cutoff,
            ),
            ~sa.exists().where(webhook_attempts.c.delivery_id == webhook_deliveries.c.id),
        )
        .limit(PURGE_BATCH)
    )
    deleted += conn.execute(
        sa.delete(webhook_deliveries).where(webhook_deliveries.c.id.in_(old_deliveries))
    ).rowcount
    old_events = (
        sa.select(webhook_events.c.id)
        .where(
            webhook_events.c.org_id == org_id,
            webhook_events.c.occurred_at < cutoff,
            ~sa.exists().where(webhook_deliveries.c.event_id == webhook_events.c.id),
        )
        .limit(PURGE_BATCH)
    )
    deleted += conn.execute(
        sa.delete(webhook_events).where(webhook_events.c.id.in_(old_events))
    ).rowcount
    return int(deleted)


def orgs_with_history(conn: Connection) -> list[str]:
    rows = conn.execute(sa.select(webhook_events.c.org_id).distinct())
    return [str(r[0]) for r in rows]
