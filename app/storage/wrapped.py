"""Rows that hold something wrapped or hashed under an org's keys, by key version: what a key
rotation moves (`app.services.keys`) and what must be gone before a version is destroyed.

Under an org's KEK (key-manager org id = the org id):
* ``frames.wrapped_dek`` (with ``frames.kek_version``), and the same columns of
  ``source_documents``;
* sealed PII from before subject keys (``subjects.<field>_sealed`` in the org envelope,
  sealed-blob format 1; PII sealed under a subject key, format 2, is not under the org KEK);
* audit details (``audit_log.details_sealed``, chain = the org id; the system chain under the
  key-manager org ``_system``), or their DEK rewrapped into ``audit_detail_keys``;
* webhook signing secrets (``webhook_endpoints.secret_sealed`` and
  ``previous_secret_sealed``, sealed-blob format 1).
Under the org's subject-key KEK (``<org_id>/subject-keys``): ``subject_keys.wrapped_key``.
Under the org's reference key: ``enrollments.hashed_ref`` and the org's contributions in
``watchlist_entries.hashed_ref``.

Versions are read from the stored bytes where no column holds them, with the layouts of
`app.crypto.wire` and `app.crypto.references` (integers big-endian, so comparing the 4 bytes
compares the numbers, on SQLite and PostgreSQL alike):
* sealed blob format 1: byte 1 = 0x01 (SQL position 1), the KEK version at bytes 2..5
  (SQL ``substr(blob, 3, 4)``);
* hashed reference: 32 bytes = reference-key version 1; 36 bytes = ``u32(version) || MAC``.

Audit rows never change (append-only, and the hash chain covers the sealed details byte for
byte), so a rotated audit DEK is stored in ``audit_detail_keys`` (migration 0008) and read in
place of the one inside the blob (`detail_keys_of`, `app.crypto.EnvelopeCipher.open`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.storage.schema import (
    audit_detail_keys,
    audit_log,
    enrollments,
    frames,
    source_documents,
    subject_keys,
    subjects,
    utcnow,
    watchlist_entries,
    webhook_endpoints,
)

PII_COLUMNS = ("nik_sealed", "email_sealed", "phone_sealed")
_ENVELOPE = b"\x01"  # sealed-blob format 1 (the org envelope)
_LEGACY_REFERENCE_SIZE = 32
_VERSIONED_REFERENCE_SIZE = 36


def _u32(version: int) -> Any:
    return sa.literal(struct.pack(">I", version), sa.LargeBinary)


def _blob_version(column: Any) -> Any:
    return sa.func.substr(column, 3, 4, type_=sa.LargeBinary)


def _is_envelope(column: Any) -> Any:
    return sa.func.substr(column, 1, 1, type_=sa.LargeBinary) == sa.literal(
        _ENVELOPE, sa.LargeBinary
    )


def _compare(expr: Any, op: str, version: int) -> Any:
    return expr < _u32(version) if op == "<" else expr == _u32(version)


# --- frames -----------------------------------------------------------------------------------


def _deks_where(table: sa.Table, org_id: str, op: str, version: int) -> Any:
    column = table.c.kek_version
    return sa.and_(
        table.c.org_id == org_id,
        table.c.wrapped_dek.is_not(None),
        column < version if op == "<" else column == version,
    )


def _count_deks(conn: Connection, table: sa.Table, org_id: str, op: str, version: int) -> int:
    stmt = sa.select(sa.func.count()).select_from(table)
    return int(conn.execute(stmt.where(_deks_where(table, org_id, op, version))).scalar_one())


def _deks_below(
    conn: Connection, table: sa.Table, org_id: str, version: int, after: str, limit: int
) -> list[Any]:
    return list(
        conn.execute(
            sa.select(table.c.id, table.c.wrapped_dek)
            .where(_deks_where(table, org_id, "<", version), table.c.id > after)
            .order_by(table.c.id)
            .limit(limit)
        )
    )


def _set_dek(
    conn: Connection, table: sa.Table, row_id: str, old: bytes, wrapped_dek: bytes, version: int
) -> bool:
    # Only if it is still `old`: a row shredded or deleted meanwhile stays so.
    result = conn.execute(
        sa.update(table)
        .where(table.c.id == row_id, table.c.wrapped_dek == old)
        .values(wrapped_dek=wrapped_dek, kek_version=version)
    )
    return bool(result.rowcount)


def count_frames(conn: Connection, org_id: str, op: str, version: int) -> int:
    """Unshredded frames of the org whose DEK is wrapped under a version ``op`` ("<", "==")
    ``version``."""
    return _count_deks(conn, frames, org_id, op, version)


def frames_below(conn: Connection, org_id: str, version: int, after: str, limit: int) -> list[Any]:
    """``id, wrapped_dek`` of frames under a version below ``version``, id > ``after``."""
    return _deks_below(conn, frames, org_id, version, after, limit)


def set_frame_dek(
    conn: Connection, frame_id: str, old: bytes, wrapped_dek: bytes, kek_version: int
) -> bool:
    """Replace a frame's wrapped DEK if it is still ``old`` (not shredded meanwhile)."""
    return _set_dek(conn, frames, frame_id, old, wrapped_dek, kek_version)


# --- source documents (sealed as frames are; app.services.onboarding) --------------------------


def count_documents(conn: Connection, org_id: str, op: str, version: int) -> int:
    """The org's source documents whose DEK is wrapped under a version ``op`` ("<", "==")
    ``version``."""
    return _count_deks(conn, source_documents, org_id, op, version)


def documents_below(
    conn: Connection, org_id: str, version: int, after: str, limit: int
) -> list[Any]:
    """``id, wrapped_dek`` of documents under a version below ``version``, id > ``after``."""
    return _deks_below(conn, source_documents, org_id, version, after, limit)


def set_document_dek(
    conn: Connection, document_id: str, old: bytes, wrapped_dek: bytes, kek_version: int
) -> bool:
    """Replace a document's wrapped DEK if it is still ``old`` (not deleted meanwhile)."""
    return _set_dek(conn, source_documents, document_id, old, wrapped_dek, kek_version)


# --- PII sealed in the org envelope (before subject keys) -------------------------------------


def _pii_where(org_id: str, op: str, version: int) -> Any:
    return sa.and_(
        subjects.c.org_id == org_id,
        sa.or_(
            *(
                sa.and_(
                    subjects.c[name].is_not(None),
                    _is_envelope(subjects.c[name]),
                    _compare(_blob_version(subjects.c[name]), op, version),
                )
                for name in PII_COLUMNS
            )
        ),
    )


def count_pii(conn: Connection, org_id: str, op: str, version: int) -> int:
    """Subjects with a PII field in the org envelope under a version ``op`` ``version``."""
    stmt = sa.select(sa.func.count()).select_from(subjects).where(_pii_where(org_id, op, version))
    return int(conn.execute(stmt).scalar_one())


def pii_below(conn: Connection, org_id: str, version: int, after: str, limit: int) -> list[Any]:
    """``id, subject_id, nik_sealed, email_sealed, phone_sealed`` of subjects with a field in
    the org envelope under a version below ``version``, id > ``after``, by id."""
    return list(
        conn.execute(
            sa.select(subjects.c.id, subjects.c.subject_id, *(subjects.c[n] for n in PII_COLUMNS))
            .where(_pii_where(org_id, "<", version), subjects.c.id > after)
            .order_by(subjects.c.id)
            .limit(limit)
        )
    )


def set_pii_blob(conn: Connection, subject_pk: str, column: str, old: bytes, new: bytes) -> bool:
    """Replace one sealed PII column if it still holds ``old`` (not rectified meanwhile)."""
    if column not in PII_COLUMNS:
        raise ValueError(f"not a sealed PII column: {column!r}")
    result = conn.execute(
        sa.update(subjects)
        .where(subjects.c.id == subject_pk, subjects.c[column] == old)
        .values(**{column: new})
    )
    return bool(result.rowcount)


# --- webhook signing secrets ------------------------------------------------------------------

SECRET_COLUMNS = ("secret_sealed", "previous_secret_sealed")


def _secrets_where(org_id: str, op: str, version: int) -> Any:
    return sa.and_(
        webhook_endpoints.c.org_id == org_id,
        sa.or_(
            *(
                sa.and_(
                    webhook_endpoints.c[name].is_not(None),
                    _compare(_blob_version(webhook_endpoints.c[name]), op, version),
                )
                for name in SECRET_COLUMNS
            )
        ),
    )


def count_webhook_secrets(conn: Connection, org_id: str, op: str, version: int) -> int:
    """Endpoints of the org with a sealed secret under a KEK version ``op`` ``version``."""
    stmt = (
        sa.select(sa.func.count())
        .select_from(webhook_endpoints)
        .where(_secrets_where(org_id, op, version))
    )
    return int(conn.execute(stmt).scalar_one())


def webhook_secrets_below(
    conn: Connection, org_id: str, version: int, after: str, limit: int
) -> list[Any]:
    """``id, secret_sealed, previous_secret_sealed`` of endpoints with a secret under a
    version below ``version``, id > ``after``, by id."""
    return list(
        conn.execute(
            sa.select(webhook_endpoints.c.id, *(webhook_endpoints.c[n] for n in SECRET_COLUMNS))
            .where(_secrets_where(org_id, "<", version), webhook_endpoints.c.id > after)
            .order_by(webhook_endpoints.c.id)
            .limit(limit)
        )
    )


def set_webhook_secret(
    conn: Connection, endpoint_id: str, column: str, old: bytes, new: bytes
) -> bool:
    """Replace one sealed secret if it still holds ``old`` (not rotated meanwhile)."""
    if column not in SECRET_COLUMNS:
        raise ValueError(f"not a sealed secret column: {column!r}")
    result = conn.execute(
        sa.update(webhook_endpoints)
        .where(webhook_endpoints.c.id == endpoint_id, webhook_endpoints.c[column] == old)
        .values(**{column: new})
    )
    return bool(result.rowcount)


# --- subject keys (the subject-key KEK family) -------------------------------------------------


def count_subject_keys(conn: Connection, org_id: str, op: str, version: int) -> int:
    column = subject_keys.c.kek_version
    stmt = (
        sa.select(sa.func.count())
        .select_from(subject_keys)
        .where(
            subject_keys.c.org_id == org_id,
            column < version if op == "<" else column == version,
        )
    )
    return int(conn.execute(stmt).scalar_one())


# --- audit details ------------------------------------------------------------------------------


def _audit_where(chain: str, op: str, version: int) -> Any:
    rewrapped = audit_detail_keys.c.kek_version
    return sa.and_(
        audit_log.c.chain == chain,
        sa.or_(
            sa.and_(
                audit_detail_keys.c.audit_id.is_(None),
                _compare(_blob_version(audit_log.c.details_sealed), op, version),
            ),
            rewrapped < version if op == "<" else rewrapped == version,
        ),
    )


def _audit_joined(*columns: Any) -> Any:
    return sa.select(*columns).select_from(
        audit_log.outerjoin(audit_detail_keys, audit_detail_keys.c.audit_id == audit_log.c.id)
    )


def count_audit_details(conn: Connection, chain: str, op: str, version: int) -> int:
    """Audit rows of ``chain`` whose details' DEK (rewrapped, else the blob's own) is under
    a version ``op`` ``version``."""
    stmt = _audit_joined(sa.func.count()).where(_audit_where(chain, op, version))
    return int(conn.execute(stmt).scalar_one())


def audit_details_below(
    conn: Connection, chain: str, version: int, after_seq: int, limit: int
) -> list[Any]:
    """``id, chain_seq, details_sealed, details_dek`` (the rewrapped DEK or None) of audit
    rows under a version below ``version``, chain_seq > ``after_seq``, by chain_seq."""
    stmt = (
        _audit_joined(
            audit_log.c.id,
            audit_log.c.chain_seq,
            audit_log.c.details_sealed,
            audit_detail_keys.c.wrapped_dek.label("details_dek"),
        )
        .where(_audit_where(chain, "<", version), audit_log.c.chain_seq > after_seq)
        .order_by(audit_log.c.chain_seq)
        .limit(limit)
    )
    return list(conn.execute(stmt))


def set_audit_detail_key(
    conn: Connection,
    audit_id: str,
    chain: str,
    wrapped_dek: bytes,
    kek_version: int,
    now: datetime | None = None,
) -> None:
    """Store (or replace) the rewrapped DEK of one audit row's details."""
    conn.execute(sa.delete(audit_detail_keys).where(audit_detail_keys.c.audit_id == audit_id))
    conn.execute(
        sa.insert(audit_detail_keys).values(
            audit_id=audit_id,
            chain=chain,
            wrapped_dek=wrapped_dek,
            kek_version=kek_version,
            rewrapped_at=now or utcnow(),
        )
    )


def detail_keys_of(conn: Connection, audit_ids: Sequence[str]) -> dict[str, bytes]:
    """The rewrapped DEK of each of these audit rows that has one."""
    found: dict[str, bytes] = {}
    wanted = list(audit_ids)
    for start in range(0, len(wanted), 500):  # bounded IN lists
        rows = conn.execute(
            sa.select(audit_detail_keys.c.audit_id, audit_detail_keys.c.wrapped_dek).where(
                audit_detail_keys.c.audit_id.in_(wanted[start : start + 500])
            )
        )
        found.update({r.audit_id: bytes(r.wrapped_dek) for r in rows})
    return found


# --- hashed references --------------------------------------------------------------------------

_REFERENCE_TABLES = {"enrollments": enrollments, "watchlist_entries": watchlist_entries}


def _owner(table: sa.Table) -> Any:
    return table.c.org_id if table is enrollments else table.c.contributor_org_id


def _reference_where(table: sa.Table, org_id: str, op: str, version: int) -> Any:
    ref = table.c.hashed_ref
    length = sa.func.length(ref)
    prefix = sa.func.substr(ref, 1, 4, type_=sa.LargeBinary)
    versioned = sa.and_(length == _VERSIONED_REFERENCE_SIZE, _compare(prefix, op, version))
    legacy = length == _LEGACY_REFERENCE_SIZE
    if op == "<":
        matches = sa.or_(legacy, versioned) if version > 1 else sa.false()
    else:
        matches = legacy if version == 1 else versioned
    return sa.and_(_owner(table) == org_id, ref.is_not(None), matches)


def count_references(conn: Connection, table_name: str, org_id: str, op: str, version: int) -> int:
    """Rows of ``table_name`` (enrollments, watchlist_entries) the org hashed under a
    reference-key version ``op`` ``version``."""
    table = _REFERENCE_TABLES[table_name]
    stmt = (
        sa.select(sa.func.count())
        .select_from(table)
        .where(_reference_where(table, org_id, op, version))
    )
    return int(conn.execute(stmt).scalar_one())


def references_below(
    conn: Connection, table_name: str, org_id: str, version: int, after: str, limit: int
) -> list[Any]:
    """``id, vector, hashed_ref, model_id`` of rows hashed under a version below
    ``version``, id > ``after``, by id."""
    table = _REFERENCE_TABLES[table_name]
    return list(
        conn.execute(
            sa.select(table.c.id, table.c.vector, table.c.hashed_ref, table.c.model_id)
            .where(_reference_where(table, org_id, "<", version), table.c.id > after)
            .order_by(table.c.id)
            .limit(limit)
        )
    )


def references_under(conn: Connection, table_name: str, org_id: str, version: int) -> list[Any]:
    """``id, vector, hashed_ref, model_id`` of every row hashed under exactly ``version``."""
    table = _REFERENCE_TABLES[table_name]
    return list(
        conn.execute(
            sa.select(table.c.id, table.c.vector, table.c.hashed_ref, table.c.model_id).where(
                _reference_where(table, org_id, "==", version)
            )
        )
    )


def set_reference(conn: Connection, table_name: str, row_id: str, old: bytes, new: bytes) -> bool:
    """Replace a hashed reference if it is still ``old`` (not erased or withdrawn since)."""
    table = _REFERENCE_TABLES[table_name]
    result = conn.execute(
        sa.update(table)
        .where(table.c.id == row_id, table.c.hashed_ref == old)
        .values(hashed_ref=new)
    )
    return bool(result.rowcount)
