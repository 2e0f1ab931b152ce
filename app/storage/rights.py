"""Rows behind the data-subject rights (migration 0006): subject keys, the erasure log, and
the reads an export needs (audit rows about a subject, watchlist entries copied from it).
Row-level reads and writes only: the rules are in `app.services.rights`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.storage.retention import revoke_all_api_keys
from app.storage.schema import (
    audit_log,
    erasure_log,
    keyring_state,
    org_closures,
    orgs,
    subject_keys,
    subjects,
    utcnow,
    watchlist_entries,
    watchlists,
)


@dataclass(frozen=True, slots=True)
class Erasure:
    """One erasure-log row; the JSON-lines export writes these fields, ISO 8601 times."""

    org_id: str
    subject_id: str
    erased_at: datetime
    receipt_sha256: str


# --- subject keys -------------------------------------------------------------------------------


def find_subject_key(conn: Connection, org_id: str, subject_id: str) -> Any:
    """``wrapped_key, kek_version`` of the subject's key, or None."""
    return conn.execute(
        sa.select(subject_keys.c.wrapped_key, subject_keys.c.kek_version).where(
            subject_keys.c.org_id == org_id, subject_keys.c.subject_id == subject_id
        )
    ).first()


def insert_subject_key(
    conn: Connection, org_id: str, subject_id: str, wrapped_key: bytes, kek_version: int
) -> bool:
    """Store a subject's key; False (nothing written) when it already has one."""
    try:
        with conn.begin_nested():
            conn.execute(
                sa.insert(subject_keys).values(
                    org_id=org_id,
                    subject_id=subject_id,
                    wrapped_key=wrapped_key,
                    kek_version=kek_version,
                    created_at=utcnow(),
                )
            )
    except sa.exc.IntegrityError:
        return False
    return True


def delete_subject_key(conn: Connection, org_id: str, subject_id: str) -> int:
    return int(
        conn.execute(
            sa.delete(subject_keys).where(
                subject_keys.c.org_id == org_id, subject_keys.c.subject_id == subject_id
            )
        ).rowcount
        or 0
    )


def subject_keys_below(
    conn: Connection, org_id: str, version: int, after: str, limit: int
) -> list[Any]:
    """``subject_id, wrapped_key`` of the org's keys wrapped under a version below
    ``version``, subject id > ``after``, by subject id."""
    return list(
        conn.execute(
            sa.select(subject_keys.c.subject_id, subject_keys.c.wrapped_key)
            .where(
                subject_keys.c.org_id == org_id,
                subject_keys.c.kek_version < version,
                subject_keys.c.subject_id > after,
            )
            .order_by(subject_keys.c.subject_id)
            .limit(limit)
        )
    )


def count_subject_keys_below(conn: Connection, org_id: str, version: int) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(subject_keys)
            .where(subject_keys.c.org_id == org_id, subject_keys.c.kek_version < version)
        ).scalar_one()
    )


def set_subject_key(
    conn: Connection, org_id: str, subject_id: str, wrapped_key: bytes, kek_version: int
) -> None:
    conn.execute(
        sa.update(subject_keys)
        .where(subject_keys.c.org_id == org_id, subject_keys.c.subject_id == subject_id)
        .values(wrapped_key=wrapped_key, kek_version=kek_version)
    )


# --- the erasure log ----------------------------------------------------------------------------


def log_erasure(conn: Connection, entry: Erasure) -> bool:
    """Add an erasure; False when the log already has that subject."""
    try:
        with conn.begin_nested():
            conn.execute(
                sa.insert(erasure_log).values(
                    org_id=entry.org_id,
                    subject_id=entry.subject_id,
                    erased_at=entry.erased_at,
                    receipt_sha256=entry.receipt_sha256,
                )
            )
    except sa.exc.IntegrityError:
        return False
    return True


def erasure_of(conn: Connection, org_id: str, subject_id: str) -> Any:
    return conn.execute(
        sa.select(erasure_log).where(
            erasure_log.c.org_id == org_id, erasure_log.c.subject_id == subject_id
        )
    ).first()


def erasures(conn: Connection) -> list[Erasure]:
    """The whole log (every org), oldest first; [] when the table does not exist (a
    database from before migration 0006)."""
    if not _has_table(conn, "erasure_log"):
        return []
    rows = conn.execute(
        sa.select(erasure_log).order_by(erasure_log.c.erased_at, erasure_log.c.subject_id)
    )
    return [Erasure(r.org_id, r.subject_id, r.erased_at, r.receipt_sha256) for r in rows]


def orgs_to_shred(conn: Connection) -> list[str]:
    """Orgs with erasures whose subject-key KEK versions are not destroyed yet."""
    return list(
        conn.execute(
            sa.select(erasure_log.c.org_id).where(erasure_log.c.shredded_at.is_(None)).distinct()
        ).scalars()
    )


def mark_shredded(conn: Connection, org_id: str, before: datetime, now: datetime) -> int:
    """Mark the org's erasures logged before ``before`` as shredded."""
    return int(
        conn.execute(
            sa.update(erasure_log)
            .where(
                erasure_log.c.org_id == org_id,
                erasure_log.c.shredded_at.is_(None),
                erasure_log.c.erased_at <= before,
            )
            .values(shredded_at=now)
        ).rowcount
        or 0
    )


# --- what an export reads -----------------------------------------------------------------------


def audit_rows_about(conn: Connection, org_id: str, targets: Iterable[str]) -> list[Any]:
    """The org's audit rows whose target is one of ``targets``, oldest first (details
    still sealed). Only the org's own chain is read."""
    wanted = sorted(set(targets))
    rows: list[Any] = []
    for start in range(0, len(wanted), 500):  # bounded IN lists
        rows += conn.execute(
            sa.select(audit_log).where(
                audit_log.c.chain == org_id,
                audit_log.c.target.in_(wanted[start : start + 500]),
            )
        ).all()
    return sorted(rows, key=lambda r: int(r.chain_seq))


def entries_copied_from(conn: Connection, org_id: str, embedding_ids: Sequence[str]) -> list[Any]:
    """Watchlist entries the org contributed from these embeddings, with the watchlist's
    name: ``id, watchlist_id, watchlist_name, reason_code, source_embedding_id, status,
    created_at, withdrawn_at``."""
    if not embedding_ids:
        return []
    return list(
        conn.execute(
            sa.select(
                watchlist_entries.c.id,
                watchlist_entries.c.watchlist_id,
                watchlists.c.name.label("watchlist_name"),
                watchlist_entries.c.reason_code,
                watchlist_entries.c.source_embedding_id,
                watchlist_entries.c.status,
                watchlist_entries.c.created_at,
                watchlist_entries.c.withdrawn_at,
            )
            .join(watchlists, watchlists.c.id == watchlist_entries.c.watchlist_id)
            .where(
                watchlist_entries.c.contributor_org_id == org_id,
                watchlist_entries.c.source_embedding_id.in_(list(embedding_ids)),
            )
            .order_by(watchlist_entries.c.created_at, watchlist_entries.c.id)
        )
    )


def _has_table(conn: Connection, name: str) -> bool:
    return name in sa.inspect(conn).get_table_names()


# --- what a restore carries over (app.backup) ---------------------------------------------------

_CARRIED = {
    "subject_keys": subject_keys,
    "keyring_state": keyring_state,
    "org_closures": org_closures,
}


def carried_rows(conn: Connection, table: str) -> list[dict[str, Any]]:
    """Every row of ``subject_keys``, ``keyring_state`` or ``org_closures``; [] when the table
    does not exist (a database from before its migration, or none at all)."""
    if not _has_table(conn, table):
        return []
    return [dict(r._mapping) for r in conn.execute(sa.select(_CARRIED[table]))]


def replace_rows(conn: Connection, table: str, rows: Sequence[dict[str, Any]]) -> None:
    """Make ``subject_keys`` or ``keyring_state`` hold exactly ``rows``."""
    conn.execute(sa.delete(_CARRIED[table]))
    if rows:
        conn.execute(sa.insert(_CARRIED[table]), list(rows))


def put_back_closures(
    conn: Connection, closures: Sequence[dict[str, Any]], now: datetime
) -> list[str]:
    """Org closures of the database a restore replaced, put into the restored one: a restore
    never reopens a closed org. Each closed org's keys are revoked again, and a closure that
    was purged is marked unpurged, so the next retention round purges again whatever the
    backup brought back (it is resumable). The org ids put back."""
    existing = org_ids(conn)
    put: list[str] = []
    for row in closures:
        org_id = row["org_id"]
        if org_id not in existing:
            continue
        conn.execute(sa.delete(org_closures).where(org_closures.c.org_id == org_id))
        conn.execute(sa.insert(org_closures).values(**{**row, "purged_at": None}))
        revoke_all_api_keys(conn, org_id, now)
        put.append(org_id)
    return put


def erased_subjects_still_live(conn: Connection) -> list[Erasure]:
    """Logged erasures whose subject is active in ``subjects`` (a restore brought it back)."""
    rows = conn.execute(
        sa.select(erasure_log)
        .join(
            subjects,
            sa.and_(
                subjects.c.org_id == erasure_log.c.org_id,
                subjects.c.subject_id == erasure_log.c.subject_id,
            ),
        )
        .where(subjects.c.status != "erased")
        .order_by(erasure_log.c.erased_at)
    )
    return [Erasure(r.org_id, r.subject_id, r.erased_at, r.receipt_sha256) for r in rows]


def org_ids(conn: Connection) -> set[str]:
    return set(conn.execute(sa.select(orgs.c.id)).scalars())
