"""Retention's own rows: the API request log and org closures, and the deletes that expire
rows of other classes by time (`app.services.retention` decides when)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.storage.orgs import DEFAULT_ORG_SETTINGS
from app.storage.schema import (
    api_keys,
    idempotency_keys,
    org_closures,
    orgs,
    request_log,
    subjects,
    watchlist_members,
    watchlists,
)

#: Rows one DELETE removes at most: a sweep never holds a long lock on a busy table.
DELETE_BATCH = 5000
#: The system log's retention (no org setting covers it).
DEFAULT_AUDIT_DAYS: int = DEFAULT_ORG_SETTINGS["retention"]["audit_days"]


def all_org_settings(conn: Connection) -> dict[str, dict[str, Any]]:
    """Every org's settings over the defaults (retention reads each org's own periods)."""
    found: dict[str, dict[str, Any]] = {}
    for row in conn.execute(sa.select(orgs.c.id, orgs.c.settings)):
        merged = copy.deepcopy(DEFAULT_ORG_SETTINGS)
        merged.update(row.settings or {})
        merged["retention"] = {**DEFAULT_ORG_SETTINGS["retention"], **merged["retention"]}
        found[row.id] = merged
    return found


# --- the API request log ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestLogRow:
    """One API request as the edge saw it: no path, query, body or subject id."""

    org_id: str
    occurred_at: datetime
    request_id: str
    method: str
    route: str
    status: int
    latency_ms: float
    key_id: str


def insert_request_logs(conn: Connection, rows: Sequence[RequestLogRow]) -> None:
    if rows:
        conn.execute(
            sa.insert(request_log),
            [
                {
                    "org_id": r.org_id,
                    "occurred_at": r.occurred_at,
                    "request_id": r.request_id,
                    "method": r.method,
                    "route": r.route,
                    "status": r.status,
                    "latency_ms": r.latency_ms,
                    "key_id": r.key_id,
                }
                for r in rows
            ],
        )


def request_logs_page(conn: Connection, org_id: str, below: int | None, limit: int) -> list[Any]:
    """The org's requests newest first, ids below ``below``; ``limit + 1`` rows at most (the
    caller learns from the extra one that there is a next page)."""
    stmt = sa.select(request_log).where(request_log.c.org_id == org_id)
    if below is not None:
        stmt = stmt.where(request_log.c.id < below)
    return list(conn.execute(stmt.order_by(request_log.c.id.desc()).limit(limit + 1)))


def _delete_batched(conn: Connection, table: sa.Table, key: sa.Column[Any], where: Any) -> int:
    chosen = sa.select(key).where(where).limit(DELETE_BATCH).scalar_subquery()
    return int(conn.execute(sa.delete(table).where(key.in_(chosen))).rowcount or 0)


def purge_request_logs(conn: Connection, org_id: str, before: datetime) -> int:
    """Delete up to `DELETE_BATCH` of the org's request rows older than ``before``."""
    where = sa.and_(request_log.c.org_id == org_id, request_log.c.occurred_at < before)
    return _delete_batched(conn, request_log, request_log.c.id, where)


def delete_org_request_logs(conn: Connection, org_id: str) -> int:
    return _delete_batched(conn, request_log, request_log.c.id, request_log.c.org_id == org_id)


def purge_idempotency(conn: Connection, org_id: str, before: datetime) -> int:
    """Delete the org's idempotency records (answered or abandoned) created before
    ``before``; a retry of one runs again."""
    stmt = sa.delete(idempotency_keys).where(
        idempotency_keys.c.org_id == org_id, idempotency_keys.c.created_at < before
    )
    return int(conn.execute(stmt).rowcount or 0)


# --- org closure --------------------------------------------------------------------------------


def closure_of(conn: Connection, org_id: str) -> Any:
    return conn.execute(sa.select(org_closures).where(org_closures.c.org_id == org_id)).first()


def insert_closure(
    conn: Connection, org_id: str, closed_at: datetime, purge_after: datetime
) -> None:
    conn.execute(
        sa.insert(org_closures).values(org_id=org_id, closed_at=closed_at, purge_after=purge_after)
    )


def closed_org_ids(conn: Connection) -> set[str]:
    return set(conn.execute(sa.select(org_closures.c.org_id)).scalars())


def closures_due(conn: Connection, now: datetime) -> list[Any]:
    """Closures whose grace period is over and whose data is not purged yet."""
    stmt = (
        sa.select(org_closures)
        .where(org_closures.c.purge_after <= now, org_closures.c.purged_at.is_(None))
        .order_by(org_closures.c.purge_after)
    )
    return list(conn.execute(stmt))


def mark_org_purged(conn: Connection, org_id: str, now: datetime, receipt_sha256: str) -> None:
    conn.execute(
        sa.update(org_closures)
        .where(org_closures.c.org_id == org_id)
        .values(purged_at=now, receipt_sha256=receipt_sha256)
    )


def revoke_all_api_keys(conn: Connection, org_id: str, now: datetime) -> list[str]:
    """Revoke every key of the org not revoked yet; their ids."""
    live = list(
        conn.execute(
            sa.select(api_keys.c.key_id).where(
                api_keys.c.org_id == org_id, api_keys.c.revoked_at.is_(None)
            )
        ).scalars()
    )
    if live:
        conn.execute(sa.update(api_keys).where(api_keys.c.key_id.in_(live)).values(revoked_at=now))
    return live


def live_subject_ids(conn: Connection, org_id: str, limit: int) -> list[str]:
    """Up to ``limit`` of the org's subjects not erased yet (the purge erases them)."""
    stmt = (
        sa.select(subjects.c.subject_id)
        .where(subjects.c.org_id == org_id, subjects.c.status != "erased")
        .order_by(subjects.c.subject_id)
        .limit(limit)
    )
    return list(conn.execute(stmt).scalars())


def leave_watchlists(conn: Connection, org_id: str, now: datetime) -> tuple[list[str], list[str]]:
    """The org leaves every watchlist it is a member of and closes those it owns; the ids of
    each (entries of the org were withdrawn with its subjects)."""
    left = list(
        conn.execute(
            sa.select(watchlist_members.c.watchlist_id).where(
                watchlist_members.c.org_id == org_id,
                watchlist_members.c.state.in_(("invited", "active")),
            )
        ).scalars()
    )
    if left:
        conn.execute(
            sa.update(watchlist_members)
            .where(
                watchlist_members.c.org_id == org_id,
                watchlist_members.c.watchlist_id.in_(left),
            )
            .values(state="left", left_at=now)
        )
    owned = list(
        conn.execute(
            sa.select(watchlists.c.id).where(
                watchlists.c.owner_org_id == org_id, watchlists.c.status == "open"
            )
        ).scalars()
    )
    if owned:
        conn.execute(
            sa.update(watchlists)
            .where(watchlists.c.id.in_(owned))
            .values(status="closed", closed_at=now)
        )
    return sorted(left), sorted(owned)


def counts(conn: Connection, org_id: str) -> Mapping[str, int]:
    """What the org still holds, for a closure's receipt."""

    def count(table: sa.Table, where: Any) -> int:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(table).where(where)).scalar_one()
        )

    return {
        "subjects_live": count(
            subjects, sa.and_(subjects.c.org_id == org_id, subjects.c.status != "erased")
        ),
        "request_log_rows": count(request_log, request_log.c.org_id == org_id),
        "idempotency_records": count(idempotency_keys, idempotency_keys.c.org_id == org_id),
    }
