"""Small row-level helpers the domain services build on. No business rules here.

Enrollment change stream
    Each org has a counter (``org_counters``). Every enrollment insert *and* every status
    change takes the next value as the row's ``seq``; the insert's value also becomes the
    row's permanent ``vector_id`` (its int64 FAISS id). The counter row stays locked until
    commit, so seqs become visible in increasing order: an index snapshot taken at position
    P (:func:`current_seq`) plus a replay of ``seq > P`` is complete. Seqs have gaps (a
    status change moves a row to a new seq; readers must not assume density).

    Replay after loading a snapshot at P::

        for change in enrollment_changes_since(conn, org_id, P):
            if change.status == "active": index.add(change.vector_id, change.vector)
            else: index.remove(change.vector_id)      # idempotent
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.storage._upsert import upsert_statement
from app.storage.ids import new_id
from app.storage.schema import enrollments, frames, org_counters, orgs, subjects, utcnow

EnrollmentStatus = Literal["active", "retired", "erased"]
FLOAT32_BYTES = 4

DEFAULT_ORG_SETTINGS: dict[str, Any] = {
    # None: use the model pack's calibrated threshold.
    "threshold": None,
    "duplicate_policy": "off",
    "retention": {"frames_days": 90, "request_logs_days": 90, "webhook_days": 30},
    "watchlist_sharing": False,
    "data_residency": "ID-only",
}


@dataclass(frozen=True, slots=True)
class EnrollmentRef:
    id: str
    vector_id: int
    seq: int


@dataclass(frozen=True, slots=True)
class EnrollmentChange:
    seq: int
    vector_id: int
    status: str
    # None unless active (erased rows have no vector left; retired ones leave the index).
    vector: bytes | None


def insert_org(
    conn: Connection,
    *,
    name: str,
    settings: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> str:
    org_id = new_id("org")
    merged = copy.deepcopy(DEFAULT_ORG_SETTINGS)
    merged.update(settings or {})
    conn.execute(
        sa.insert(orgs).values(id=org_id, name=name, settings=merged, created_at=now or utcnow())
    )
    return org_id


def insert_subject(
    conn: Connection,
    *,
    org_id: str,
    subject_id: str,
    nik_sealed: bytes | None = None,
    email_sealed: bytes | None = None,
    phone_sealed: bytes | None = None,
    now: datetime | None = None,
) -> str:
    """Insert an active subject; returns its primary key (``sub_...``).

    A duplicate ``(org_id, subject_id)`` raises ``sqlalchemy.exc.IntegrityError``.
    """
    pk = new_id("sub")
    moment = now or utcnow()
    conn.execute(
        sa.insert(subjects).values(
            id=pk,
            org_id=org_id,
            subject_id=subject_id,
            nik_sealed=nik_sealed,
            email_sealed=email_sealed,
            phone_sealed=phone_sealed,
            status="active",
            created_at=moment,
            updated_at=moment,
        )
    )
    return pk


def allocate_seq(conn: Connection, org_id: str) -> int:
    """Next position in ``org_id``'s enrollment change stream (locks it until commit)."""
    return allocate_seq_range(conn, org_id, 1)


def current_seq(conn: Connection, org_id: str) -> int:
    """The newest allocated position (0 if none): what an index snapshot records."""
    value = conn.execute(
        sa.select(org_counters.c.enrollment_seq).where(org_counters.c.org_id == org_id)
    ).scalar_one_or_none()
    return int(value or 0)


def insert_enrollment(
    conn: Connection,
    *,
    org_id: str,
    subject_pk: str,
    vector: bytes,
    dimension: int,
    model_id: str,
    hashed_ref: bytes | None,
    quality: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    enrollment_id: str | None = None,
    bundle_id: str | None = None,
    frame_index: int | None = None,
) -> EnrollmentRef:
    """Insert an active enrollment; ``vector`` is ``dimension`` little-endian float32s.

    ``enrollment_id`` lets the caller use an id it already bound into the hashed reference.
    """
    if dimension <= 0 or len(vector) != dimension * FLOAT32_BYTES:
        raise ValueError(f"vector has {len(vector)} bytes, expected {dimension} float32")
    enrollment_id = enrollment_id or new_id("enr")
    seq = allocate_seq(conn, org_id)
    moment = now or utcnow()
    conn.execute(
        sa.insert(enrollments).values(
            id=enrollment_id,
            org_id=org_id,
            subject_pk=subject_pk,
            vector_id=seq,
            seq=seq,
            vector=vector,
            dimension=dimension,
            model_id=model_id,
            hashed_ref=hashed_ref,
            status="active",
            quality=dict(quality) if quality is not None else None,
            created_at=moment,
            updated_at=moment,
            bundle_id=bundle_id,
            frame_index=frame_index,
        )
    )
    return EnrollmentRef(id=enrollment_id, vector_id=seq, seq=seq)


def allocate_seq_range(conn: Connection, org_id: str, count: int) -> int:
    """Reserve ``count`` consecutive positions at once; returns the first (locks until commit)."""
    if count <= 0:
        raise ValueError("count must be positive")
    row = conn.execute(_bump_seq(conn.dialect.name), {"org_id": org_id, "count": count}).one()
    return int(row.enrollment_seq) - count + 1


@cache
def _bump_seq(dialect: str) -> sa.Insert:
    """Add ``count`` to an org's counter, creating it the first time; built once per dialect
    (every enrollment runs it)."""
    count = sa.bindparam("count", type_=sa.Integer)
    return upsert_statement(
        dialect,
        org_counters,
        values={"org_id": sa.bindparam("org_id"), "enrollment_seq": count},
        key="org_id",
        on_conflict_set={"enrollment_seq": org_counters.c.enrollment_seq + count},
        returning=(org_counters.c.enrollment_seq,),
    )


def insert_subjects_bulk(
    conn: Connection, *, org_id: str, subject_ids: Sequence[str], now: datetime | None = None
) -> list[str]:
    """Insert active subjects without PII in one executemany; their primary keys, in order.

    For imports and benchmark galleries; a duplicate ``subject_id`` fails the whole batch.
    """
    moment = now or utcnow()
    pks = [new_id("sub") for _ in subject_ids]
    if pks:
        conn.execute(
            sa.insert(subjects),
            [
                {
                    "id": pk,
                    "org_id": org_id,
                    "subject_id": subject_id,
                    "status": "active",
                    "created_at": moment,
                    "updated_at": moment,
                }
                for pk, subject_id in zip(pks, subject_ids, strict=True)
            ],
        )
    return pks


def insert_enrollments_bulk(
    conn: Connection,
    *,
    org_id: str,
    subject_pks: Sequence[str],
    vectors: Sequence[bytes],
    dimension: int,
    model_id: str,
    hashed_refs: Sequence[bytes | None],
    enrollment_ids: Sequence[str],
    now: datetime | None = None,
) -> list[EnrollmentRef]:
    """Insert many active enrollments: one seq range, one executemany.

    Row ``i`` belongs to ``subject_pks[i]`` and gets ``enrollment_ids[i]``, which the caller
    has already bound into ``hashed_refs[i]`` (the start-up replay drops a row whose reference
    does not verify). Seqs and vector ids are consecutive, in input order, so the change
    stream stays ordered as :func:`insert_enrollment` keeps it. Without frames or quality
    reports: for imports of existing templates and benchmark galleries.
    """
    count = len(vectors)
    if not (len(subject_pks) == len(hashed_refs) == len(enrollment_ids) == count):
        raise ValueError("subject_pks, vectors, hashed_refs and enrollment_ids differ in length")
    if count == 0:
        return []
    size = dimension * FLOAT32_BYTES
    if dimension <= 0 or any(len(v) != size for v in vectors):
        raise ValueError(f"every vector must be {dimension} float32 ({size} bytes)")
    first = allocate_seq_range(conn, org_id, count)
    moment = now or utcnow()
    conn.execute(
        sa.insert(enrollments),
        [
            {
                "id": enrollment_ids[n],
                "org_id": org_id,
                "subject_pk": subject_pks[n],
                "vector_id": first + n,
                "seq": first + n,
                "vector": vectors[n],
                "dimension": dimension,
                "model_id": model_id,
                "hashed_ref": hashed_refs[n],
                "status": "active",
                "quality": None,
                "created_at": moment,
                "updated_at": moment,
                "bundle_id": None,
                "frame_index": None,
            }
            for n in range(count)
        ],
    )
    return [
        EnrollmentRef(id=enrollment_ids[n], vector_id=first + n, seq=first + n)
        for n in range(count)
    ]


def set_enrollment_status(
    conn: Connection,
    *,
    org_id: str,
    enrollment_id: str,
    status: EnrollmentStatus,
    now: datetime | None = None,
) -> int | None:
    """Move an enrollment to ``status`` at a new seq; None if ``org_id`` has no such row.

    Erasing drops the vector and its hashed reference from the row.
    """
    exists = conn.execute(
        sa.select(enrollments.c.id).where(
            enrollments.c.id == enrollment_id, enrollments.c.org_id == org_id
        )
    ).first()
    if exists is None:
        return None
    seq = allocate_seq(conn, org_id)
    values: dict[str, Any] = {"status": status, "seq": seq, "updated_at": now or utcnow()}
    if status == "erased":
        values.update(vector=None, hashed_ref=None)
    conn.execute(
        sa.update(enrollments)
        .where(enrollments.c.id == enrollment_id, enrollments.c.org_id == org_id)
        .values(**values)
    )
    return seq


def enrollment_rows_since(
    conn: Connection, org_id: str, seq: int, *, model_id: str | None = None
) -> Iterator[tuple[int, int, bytes]]:
    """``(seq, vector_id, vector bytes)`` of ``org_id``'s active enrollments after ``seq``,
    in seq order. ``seq=0`` yields every active enrollment (a full rebuild)."""
    stmt = sa.select(enrollments.c.seq, enrollments.c.vector_id, enrollments.c.vector).where(
        enrollments.c.org_id == org_id,
        enrollments.c.seq > seq,
        enrollments.c.status == "active",
    )
    if model_id is not None:
        stmt = stmt.where(enrollments.c.model_id == model_id)
    for row in conn.execute(stmt.order_by(enrollments.c.seq).execution_options(yield_per=1000)):
        yield int(row.seq), int(row.vector_id), bytes(row.vector)


def enrollment_changes_since(conn: Connection, org_id: str, seq: int) -> Iterator[EnrollmentChange]:
    """Every enrollment change of ``org_id`` after ``seq`` (adds *and* removals), in order."""
    stmt = (
        sa.select(
            enrollments.c.seq, enrollments.c.vector_id, enrollments.c.status, enrollments.c.vector
        )
        .where(enrollments.c.org_id == org_id, enrollments.c.seq > seq)
        .order_by(enrollments.c.seq)
        .execution_options(yield_per=1000)
    )
    for row in conn.execute(stmt):
        active = row.status == "active"
        yield EnrollmentChange(
            seq=int(row.seq),
            vector_id=int(row.vector_id),
            status=str(row.status),
            vector=bytes(row.vector) if active else None,
        )


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
