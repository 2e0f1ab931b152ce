"""Subjects, their enrollments (one embedding per accepted frame) and the enrollment change
stream. Row-level reads and writes only: no business rules here.

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

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from app.storage import feed
from app.storage._upsert import upsert_statement
from app.storage.ids import new_id
from app.storage.schema import enrollments, org_counters, subjects, utcnow

EnrollmentStatus = Literal["active", "retired", "erased"]
FLOAT32_BYTES = 4


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
    # What the hashed reference binds, for the reader to check it before trusting `vector`.
    id: str = ""
    model_id: str = ""
    hashed_ref: bytes | None = None


def insert_subject(
    conn: Connection,
    *,
    org_id: str,
    subject_id: str,
    nik_sealed: bytes | None = None,
    email_sealed: bytes | None = None,
    phone_sealed: bytes | None = None,
    now: datetime | None = None,
) -> str | None:
    """Insert an active subject; returns its primary key (``sub_...``), or None when the org
    already has a subject of that id (then nothing is written).

    On PostgreSQL an insert racing another transaction's insert of the same id waits for it:
    None once that one commits, the new key if it rolls back. No unique violation escapes.
    """
    pk = new_id("sub")
    moment = now or utcnow()
    values = {
        "id": pk,
        "org_id": org_id,
        "subject_id": subject_id,
        "nik_sealed": nik_sealed,
        "email_sealed": email_sealed,
        "phone_sealed": phone_sealed,
        "status": "active",
        "created_at": moment,
        "updated_at": moment,
    }
    insert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    stmt = (
        insert(subjects)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["org_id", "subject_id"])
        .returning(subjects.c.id)
    )
    return conn.execute(stmt).scalar_one_or_none()


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
    feed.announce(conn, "org", org_id)
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
            enrollments.c.seq,
            enrollments.c.vector_id,
            enrollments.c.status,
            enrollments.c.vector,
            enrollments.c.id,
            enrollments.c.model_id,
            enrollments.c.hashed_ref,
        )
        .where(enrollments.c.org_id == org_id, enrollments.c.seq > seq)
        .order_by(enrollments.c.seq)
        .execution_options(yield_per=1000)
    )
    for row in conn.execute(stmt):
        active = row.status == "active" and row.vector is not None
        yield EnrollmentChange(
            seq=int(row.seq),
            vector_id=int(row.vector_id),
            status=str(row.status),
            vector=bytes(row.vector) if active else None,
            id=str(row.id),
            model_id=str(row.model_id),
            hashed_ref=bytes(row.hashed_ref) if active and row.hashed_ref is not None else None,
        )


# --- subjects ---------------------------------------------------------------------------------


def find_subject(conn: Connection, org_id: str, subject_id: str, *, lock: bool = False) -> Any:
    """The org's subject row (every column), or None.

    ``lock`` holds the row until the transaction ends (``FOR UPDATE`` on PostgreSQL; SQLite's
    write transaction already excludes other writers): what changes a subject takes it, so an
    enrollment and an erasure of one subject on two replicas cannot interleave.
    """
    query = sa.select(subjects).where(
        subjects.c.org_id == org_id, subjects.c.subject_id == subject_id
    )
    return conn.execute(query.with_for_update() if lock else query).first()


def update_subject_pii(
    conn: Connection, subject_pk: str, sealed: Mapping[str, bytes | None]
) -> None:
    """Replace the sealed PII columns named in ``sealed`` (``nik_sealed`` ...); None clears."""
    conn.execute(
        sa.update(subjects).where(subjects.c.id == subject_pk).values(updated_at=utcnow(), **sealed)
    )


def mark_subject_erased(conn: Connection, subject_pk: str, now: datetime) -> None:
    """Status ``erased`` with its PII columns dropped (the sealed PII is shredded)."""
    conn.execute(
        sa.update(subjects)
        .where(subjects.c.id == subject_pk)
        .values(
            status="erased",
            erased_at=now,
            updated_at=now,
            nik_sealed=None,
            email_sealed=None,
            phone_sealed=None,
        )
    )


def subjects_page(
    conn: Connection, org_id: str, after: tuple[datetime, str] | None, limit: int
) -> list[Any]:
    """Up to ``limit`` subjects of the org, oldest first, after ``(created_at, pk)``."""
    stmt = sa.select(subjects).where(subjects.c.org_id == org_id)
    if after is not None:
        created, pk = after
        stmt = stmt.where(
            sa.or_(
                subjects.c.created_at > created,
                sa.and_(subjects.c.created_at == created, subjects.c.id > pk),
            )
        )
    return list(conn.execute(stmt.order_by(subjects.c.created_at, subjects.c.id).limit(limit)))


def active_embedding_counts(
    conn: Connection, org_id: str, subject_pks: list[str]
) -> dict[str, int]:
    rows = conn.execute(
        sa.select(enrollments.c.subject_pk, sa.func.count())
        .where(
            enrollments.c.org_id == org_id,
            enrollments.c.status == "active",
            enrollments.c.subject_pk.in_(subject_pks),
        )
        .group_by(enrollments.c.subject_pk)
    ).all()
    return {str(pk): int(n) for pk, n in rows}


# --- enrollments ------------------------------------------------------------------------------


def subject_enrollments(conn: Connection, org_id: str, subject_pk: str) -> list[Any]:
    """Every enrollment row (all columns) of a subject, in the order they were made."""
    return list(
        conn.execute(
            sa.select(enrollments)
            .where(enrollments.c.subject_pk == subject_pk, enrollments.c.org_id == org_id)
            .order_by(enrollments.c.created_at, enrollments.c.frame_index)
        )
    )


def bundle_embeddings(
    conn: Connection, org_id: str, bundle_id: str, *, lock: bool = False
) -> list[Any]:
    """``(id, vector_id, status)`` of the embeddings of one capture bundle.

    ``lock`` first takes the bundle's subject row (see `find_subject`), so the statuses read
    stay true until the transaction ends: an erasure of the subject waits, or was seen.
    """
    if lock:
        owner = sa.select(enrollments.c.subject_pk).where(
            enrollments.c.org_id == org_id, enrollments.c.bundle_id == bundle_id
        )
        conn.execute(
            sa.select(subjects.c.id).where(subjects.c.id.in_(owner)).with_for_update()
        ).all()
    return list(
        conn.execute(
            sa.select(enrollments.c.id, enrollments.c.vector_id, enrollments.c.status).where(
                enrollments.c.org_id == org_id, enrollments.c.bundle_id == bundle_id
            )
        )
    )


def embeddings_of_subject(conn: Connection, org_id: str, subject_pk: str) -> list[Any]:
    """``(id, vector_id, status)`` of every embedding of a subject."""
    return list(
        conn.execute(
            sa.select(enrollments.c.id, enrollments.c.vector_id, enrollments.c.status).where(
                enrollments.c.org_id == org_id, enrollments.c.subject_pk == subject_pk
            )
        )
    )


def active_embeddings_by_vector_id(
    conn: Connection, org_id: str, vector_ids: list[int]
) -> list[Any]:
    """Active embeddings behind index ids, with their subject: ``id, vector_id, vector,
    hashed_ref, model_id, subject_id`` (the org filter on both tables is belt and braces)."""
    return list(
        conn.execute(
            sa.select(
                enrollments.c.id,
                enrollments.c.vector_id,
                enrollments.c.vector,
                enrollments.c.hashed_ref,
                enrollments.c.model_id,
                subjects.c.subject_id,
            )
            .join(subjects, subjects.c.id == enrollments.c.subject_pk)
            .where(
                enrollments.c.org_id == org_id,
                subjects.c.org_id == org_id,
                enrollments.c.vector_id.in_(vector_ids),
                enrollments.c.status == "active",
            )
        )
    )


def active_embeddings_of_subject(
    conn: Connection, org_id: str, subject_id: str, model_id: str
) -> list[Any] | None:
    """``id, vector, hashed_ref, model_id`` of an active subject's active embeddings of
    ``model_id``; None when the org has no such active subject."""
    subject = conn.execute(_SUBJECT, {"org_id": org_id, "subject_id": subject_id}).first()
    if subject is None or subject.status != "active":
        return None
    return list(
        conn.execute(
            _ACTIVE_ENROLLMENTS,
            {"org_id": org_id, "subject_pk": subject.id, "model_id": model_id},
        )
    )


# Built once: every verify runs both.
_SUBJECT = sa.select(subjects.c.id, subjects.c.status).where(
    subjects.c.org_id == sa.bindparam("org_id"),
    subjects.c.subject_id == sa.bindparam("subject_id"),
)
_ACTIVE_ENROLLMENTS = sa.select(
    enrollments.c.id, enrollments.c.vector, enrollments.c.hashed_ref, enrollments.c.model_id
).where(
    enrollments.c.org_id == sa.bindparam("org_id"),
    enrollments.c.subject_pk == sa.bindparam("subject_pk"),
    enrollments.c.status == "active",
    enrollments.c.model_id == sa.bindparam("model_id"),
)
