"""Source-document rows (migration 0010): where each sealed ID-document image lives in the
object store, its wrapped DEK, and whose it is. Deleting the row drops the DEK: the shred."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.storage.schema import source_documents, utcnow

#: Rows one sweep statement handles at most.
BATCH = 500


def insert_document(
    conn: Connection,
    *,
    document_id: str,
    org_id: str,
    subject_id: str | None,
    wrapped_dek: bytes,
    kek_version: int,
    media_type: str,
    byte_size: int,
    now: datetime | None = None,
) -> None:
    """Record a sealed document already written to the object store under its id."""
    conn.execute(
        sa.insert(source_documents).values(
            id=document_id,
            org_id=org_id,
            subject_id=subject_id,
            object_key=document_id,
            wrapped_dek=wrapped_dek,
            kek_version=kek_version,
            media_type=media_type,
            byte_size=byte_size,
            created_at=now or utcnow(),
        )
    )


def find_document(conn: Connection, org_id: str, document_id: str) -> Any:
    return conn.execute(
        sa.select(source_documents).where(
            source_documents.c.org_id == org_id, source_documents.c.id == document_id
        )
    ).first()


def documents_of_subject(conn: Connection, org_id: str, subject_id: str) -> list[Any]:
    """``(id, media_type, byte_size, created_at)`` of the subject's documents, oldest first
    (what an export lists: never the bytes, never the key)."""
    return list(
        conn.execute(
            sa.select(
                source_documents.c.id,
                source_documents.c.media_type,
                source_documents.c.byte_size,
                source_documents.c.created_at,
            )
            .where(source_documents.c.org_id == org_id, source_documents.c.subject_id == subject_id)
            .order_by(source_documents.c.created_at, source_documents.c.id)
        )
    )


def delete_documents_of_subject(conn: Connection, org_id: str, subject_id: str) -> list[Any]:
    """Delete the subject's document rows; returns their ``(id, object_key)`` (the objects
    are deleted after the commit)."""
    where = sa.and_(
        source_documents.c.org_id == org_id, source_documents.c.subject_id == subject_id
    )
    rows = list(
        conn.execute(sa.select(source_documents.c.id, source_documents.c.object_key).where(where))
    )
    if rows:
        conn.execute(sa.delete(source_documents).where(where))
    return rows


def delete_org_documents(conn: Connection, org_id: str) -> list[str]:
    """Delete up to `BATCH` of the org's document rows, tied to a subject or not; their
    object keys."""
    return _delete_batch(conn, source_documents.c.org_id == org_id)


def delete_expired(conn: Connection, org_id: str, before: datetime) -> list[str]:
    """Delete up to `BATCH` of the org's documents created before ``before``; their object
    keys."""
    return _delete_batch(
        conn,
        sa.and_(source_documents.c.org_id == org_id, source_documents.c.created_at < before),
    )


def _delete_batch(conn: Connection, where: Any) -> list[str]:
    rows = list(
        conn.execute(
            sa.select(source_documents.c.id, source_documents.c.object_key)
            .where(where)
            .order_by(source_documents.c.created_at)
            .limit(BATCH)
        )
    )
    if rows:
        conn.execute(
            sa.delete(source_documents).where(source_documents.c.id.in_([r.id for r in rows]))
        )
    return [r.object_key for r in rows]


def live_object_keys(conn: Connection, object_keys: Sequence[str]) -> set[str]:
    """Which of ``object_keys`` a document row still points to."""
    return set(
        conn.execute(
            sa.select(source_documents.c.object_key).where(
                source_documents.c.object_key.in_(list(object_keys))
            )
        ).scalars()
    )


def count_documents(conn: Connection, org_id: str) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(source_documents)
            .where(source_documents.c.org_id == org_id)
        ).scalar_one()
    )
