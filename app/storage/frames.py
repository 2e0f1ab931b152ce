"""Sealed-frame rows: where each frame's payload lives in the object store, its wrapped DEK
and KEK version, and when retention purges it. Dropping the wrapped DEK is the shred."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.storage.ids import new_id
from app.storage.schema import frames, utcnow


def insert_frame(
    conn: Connection,
    *,
    org_id: str,
    enrollment_id: str,
    object_key: str,
    wrapped_dek: bytes,
    kek_version: int,
    purge_after: datetime,
    frame_id: str | None = None,
    now: datetime | None = None,
) -> str:
    """Record a sealed frame already written to the object store under ``object_key``.

    ``frame_id`` lets the caller use the id it sealed the frame under (the cipher binds the
    object id into the ciphertext, so the id must exist before the row does).
    """
    frame_id = frame_id or new_id("frm")
    conn.execute(
        sa.insert(frames).values(
            id=frame_id,
            org_id=org_id,
            enrollment_id=enrollment_id,
            object_key=object_key,
            wrapped_dek=wrapped_dek,
            kek_version=kek_version,
            purge_after=purge_after,
            created_at=now or utcnow(),
        )
    )
    return frame_id


def frames_of_enrollments(
    conn: Connection, org_id: str, enrollment_ids: Sequence[str]
) -> list[Any]:
    """``(id, object_key)`` of every frame of these enrollments."""
    return list(
        conn.execute(
            sa.select(frames.c.id, frames.c.object_key).where(
                frames.c.org_id == org_id, frames.c.enrollment_id.in_(list(enrollment_ids))
            )
        )
    )


def shred(conn: Connection, frame_ids: Sequence[str], now: datetime) -> None:
    """Drop the wrapped DEKs: the ciphertext, wherever copies survive, can't be opened."""
    conn.execute(
        sa.update(frames)
        .where(frames.c.id.in_(list(frame_ids)))
        .values(wrapped_dek=None, purged_at=now)
    )


def expired(conn: Connection, now: datetime, limit: int) -> list[Any]:
    """``(id, org_id, object_key)`` of unpurged frames past ``purge_after``, oldest first."""
    return list(
        conn.execute(
            sa.select(frames.c.id, frames.c.org_id, frames.c.object_key)
            .where(frames.c.purge_after <= now, frames.c.purged_at.is_(None))
            .order_by(frames.c.purge_after)
            .limit(limit)
        )
    )


def live_object_keys(conn: Connection, object_keys: Sequence[str]) -> set[str]:
    """Which of ``object_keys`` an unpurged frame row still points to."""
    return set(
        conn.execute(
            sa.select(frames.c.object_key).where(
                frames.c.object_key.in_(list(object_keys)), frames.c.purged_at.is_(None)
            )
        ).scalars()
    )


def count_wrapped(conn: Connection, org_id: str) -> int:
    """Frames of the org whose DEK still exists (what a key rotation rewraps)."""
    return int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(frames)
            .where(frames.c.org_id == org_id, frames.c.wrapped_dek.is_not(None))
        ).scalar_one()
    )


def wrapped_after(conn: Connection, org_id: str, after_id: str, limit: int) -> list[Any]:
    """``(id, wrapped_dek)`` of the org's unshredded frames with id > ``after_id``, by id."""
    return list(
        conn.execute(
            sa.select(frames.c.id, frames.c.wrapped_dek)
            .where(
                frames.c.org_id == org_id,
                frames.c.wrapped_dek.is_not(None),
                frames.c.id > after_id,
            )
            .order_by(frames.c.id)
            .limit(limit)
        )
    )


def set_wrapped_dek(conn: Connection, frame_id: str, wrapped_dek: bytes, kek_version: int) -> None:
    conn.execute(
        sa.update(frames)
        .where(frames.c.id == frame_id)
        .values(wrapped_dek=wrapped_dek, kek_version=kek_version)
    )
