"""Active liveness challenges: a single-use nonce, stored only as its SHA-256, with the head
movements it asks for (table `liveness_challenges`, migration 0011)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.storage.schema import liveness_challenges


def insert(
    conn: Connection,
    *,
    challenge_id: str,
    org_id: str,
    nonce_sha256: str,
    sequence: list[str],
    created_at: datetime,
    expires_at: datetime,
) -> None:
    conn.execute(
        sa.insert(liveness_challenges).values(
            id=challenge_id,
            org_id=org_id,
            nonce_sha256=nonce_sha256,
            sequence=sequence,
            created_at=created_at,
            expires_at=expires_at,
        )
    )


def consume(conn: Connection, org_id: str, nonce_sha256: str, now: datetime) -> Any:
    """Mark the org's unused, unexpired challenge with this nonce used, atomically; the row
    (``id, sequence, expires_at``) when this call won it, else None.

    One conditional UPDATE: of two concurrent uses the database lets exactly one match
    ``used_at IS NULL`` (PostgreSQL re-checks the condition once the first commits; SQLite
    writes one transaction at a time)."""
    won = conn.execute(
        sa.update(liveness_challenges)
        .where(
            liveness_challenges.c.org_id == org_id,
            liveness_challenges.c.nonce_sha256 == nonce_sha256,
            liveness_challenges.c.used_at.is_(None),
            liveness_challenges.c.expires_at > now,
        )
        .values(used_at=now)
    )
    if won.rowcount != 1:
        return None
    return find(conn, org_id, nonce_sha256)


def find(conn: Connection, org_id: str, nonce_sha256: str) -> Any:
    """The org's challenge with this nonce (``id, sequence, expires_at, used_at``) or None;
    another org's is None too."""
    return conn.execute(
        sa.select(
            liveness_challenges.c.id,
            liveness_challenges.c.sequence,
            liveness_challenges.c.created_at,
            liveness_challenges.c.expires_at,
            liveness_challenges.c.used_at,
        ).where(
            liveness_challenges.c.org_id == org_id,
            liveness_challenges.c.nonce_sha256 == nonce_sha256,
        )
    ).first()


def purge_expired(conn: Connection, before: datetime, limit: int) -> dict[str, int]:
    """Delete up to ``limit`` challenges that expired before ``before`` (used or not); how
    many per org."""
    rows = conn.execute(
        sa.select(liveness_challenges.c.id, liveness_challenges.c.org_id)
        .where(liveness_challenges.c.expires_at < before)
        .order_by(liveness_challenges.c.expires_at)
        .limit(limit)
    ).all()
    if not rows:
        return {}
    conn.execute(
        sa.delete(liveness_challenges).where(liveness_challenges.c.id.in_([r.id for r in rows]))
    )
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.org_id] = counts.get(row.org_id, 0) + 1
    return counts
