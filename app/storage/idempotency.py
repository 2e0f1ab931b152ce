"""Idempotency records: one row per (org, `Idempotency-Key`), reserved before the work runs
and completed with the response the first request got."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from app.storage.schema import idempotency_keys, utcnow


def find(conn: Connection, org_id: str, key: str) -> Any:
    """The record (``request_hash, response_status, response_body, created_at``) or None."""
    return conn.execute(
        sa.select(idempotency_keys).where(
            idempotency_keys.c.org_id == org_id, idempotency_keys.c.key == key
        )
    ).first()


def delete(conn: Connection, org_id: str, key: str) -> None:
    conn.execute(
        sa.delete(idempotency_keys).where(
            idempotency_keys.c.org_id == org_id, idempotency_keys.c.key == key
        )
    )


def reserve(conn: Connection, org_id: str, key: str, request_hash: bytes, owner: str) -> bool:
    """Insert a reservation (no response yet); False if another one holds the key."""
    try:
        with conn.begin_nested():
            conn.execute(
                sa.insert(idempotency_keys).values(
                    org_id=org_id,
                    key=key,
                    request_hash=request_hash,
                    created_at=utcnow(),
                    owner=owner,
                )
            )
    except IntegrityError:
        return False
    return True


def store_response(
    conn: Connection,
    org_id: str,
    key: str,
    status: int,
    body: bytes,
    subject_id: str | None = None,
) -> None:
    """Store the answer; ``subject_id`` links the record to the subject it is about (an
    erasure deletes it). A later store without one keeps the link."""
    values: dict[str, Any] = {"response_status": status, "response_body": body}
    if subject_id is not None:
        values["subject_id"] = subject_id
    conn.execute(
        sa.update(idempotency_keys)
        .where(idempotency_keys.c.org_id == org_id, idempotency_keys.c.key == key)
        .values(**values)
    )


def delete_for_subject(conn: Connection, org_id: str, subject_id: str) -> int:
    """Delete the org's records about a subject; how many."""
    return int(
        conn.execute(
            sa.delete(idempotency_keys).where(
                idempotency_keys.c.org_id == org_id, idempotency_keys.c.subject_id == subject_id
            )
        ).rowcount
        or 0
    )


def release(conn: Connection, org_id: str, key: str) -> None:
    """Drop a reservation that has no response (its request failed)."""
    conn.execute(
        sa.delete(idempotency_keys).where(
            idempotency_keys.c.org_id == org_id,
            idempotency_keys.c.key == key,
            idempotency_keys.c.response_status.is_(None),
        )
    )


def release_unanswered(conn: Connection, owner: str | None, before: datetime | None) -> int:
    """Drop reservations without a response: every one (both None), or those of ``owner``
    and those created before ``before``."""
    stmt = sa.delete(idempotency_keys).where(idempotency_keys.c.response_status.is_(None))
    if owner is not None or before is not None:
        stmt = stmt.where(
            sa.or_(
                idempotency_keys.c.owner == owner,
                idempotency_keys.c.created_at < (before or utcnow()),
            )
        )
    return int(conn.execute(stmt).rowcount or 0)
