"""Shared watchlists: the watchlist rows, memberships and contributed entries.

Row-level reads and writes only; who may see, contribute or screen is decided by
`app.services.sharing` and `app.services.watchlists`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.storage.schema import (
    enrollments,
    orgs,
    subjects,
    utcnow,
    watchlist_entries,
    watchlist_members,
    watchlists,
)

# --- watchlists -------------------------------------------------------------------------------


def find(conn: Connection, watchlist_id: str) -> Any:
    return conn.execute(sa.select(watchlists).where(watchlists.c.id == watchlist_id)).first()


def all_ids(conn: Connection) -> list[str]:
    return [str(w) for w in conn.execute(sa.select(watchlists.c.id)).scalars()]


def insert(
    conn: Connection,
    *,
    watchlist_id: str,
    owner_org_id: str,
    name: str,
    region: str,
    model_id: str,
    now: datetime,
) -> None:
    """A new open watchlist with its owner as its first active member."""
    conn.execute(
        sa.insert(watchlists).values(
            id=watchlist_id,
            owner_org_id=owner_org_id,
            name=name,
            region=region,
            model_id=model_id,
            status="open",
            entry_seq=0,
            created_at=now,
        )
    )
    conn.execute(
        sa.insert(watchlist_members).values(
            watchlist_id=watchlist_id,
            org_id=owner_org_id,
            state="active",
            invited_at=now,
            joined_at=now,
        )
    )


def close(conn: Connection, watchlist_id: str, now: datetime) -> None:
    conn.execute(
        sa.update(watchlists)
        .where(watchlists.c.id == watchlist_id)
        .values(status="closed", closed_at=now)
    )


def visible_to(conn: Connection, org_id: str) -> list[Any]:
    """Watchlists the org owns or is invited to or active in, oldest first."""
    ids = (
        conn.execute(
            sa.select(watchlist_members.c.watchlist_id)
            .where(
                watchlist_members.c.org_id == org_id,
                watchlist_members.c.state.in_(("invited", "active")),
            )
            .union(sa.select(watchlists.c.id).where(watchlists.c.owner_org_id == org_id))
        )
        .scalars()
        .all()
    )
    return list(
        conn.execute(
            sa.select(watchlists).where(watchlists.c.id.in_(ids)).order_by(watchlists.c.created_at)
        )
    )


def take_vector_ids(conn: Connection, watchlist_id: str, count: int) -> int:
    """Reserve ``count`` vector ids of the watchlist's namespace; returns the first."""
    last = conn.execute(
        sa.update(watchlists)
        .where(watchlists.c.id == watchlist_id)
        .values(entry_seq=watchlists.c.entry_seq + count)
        .returning(watchlists.c.entry_seq)
    ).scalar_one()
    return int(last) - count + 1


# --- members ----------------------------------------------------------------------------------


def membership(conn: Connection, watchlist_id: str, org_id: str) -> str | None:
    """The org's membership state in the watchlist, or None if it was never invited."""
    state = conn.execute(
        sa.select(watchlist_members.c.state).where(
            watchlist_members.c.watchlist_id == watchlist_id, watchlist_members.c.org_id == org_id
        )
    ).scalar_one_or_none()
    return None if state is None else str(state)


def members(conn: Connection, watchlist_id: str) -> list[Any]:
    """``(org_id, state)`` of every member, in any state."""
    return list(
        conn.execute(
            sa.select(watchlist_members.c.org_id, watchlist_members.c.state).where(
                watchlist_members.c.watchlist_id == watchlist_id
            )
        )
    )


def active_members_with_settings(conn: Connection, watchlist_id: str) -> list[Any]:
    """``(org_id, settings)`` of the active members (their org settings as stored)."""
    return list(
        conn.execute(
            sa.select(watchlist_members.c.org_id, orgs.c.settings)
            .join(orgs, orgs.c.id == watchlist_members.c.org_id)
            .where(
                watchlist_members.c.watchlist_id == watchlist_id,
                watchlist_members.c.state == "active",
            )
        )
    )


def watchlists_of(conn: Connection, org_id: str, *, active_only: bool = False) -> list[str]:
    """Ids of the watchlists the org has a membership in (any state, or only active)."""
    stmt = sa.select(watchlist_members.c.watchlist_id).where(watchlist_members.c.org_id == org_id)
    if active_only:
        stmt = stmt.where(watchlist_members.c.state == "active")
    return [str(w) for w in conn.execute(stmt).scalars()]


def invite(conn: Connection, watchlist_id: str, org_id: str, now: datetime) -> None:
    """Invite the org (again, if it left or was removed)."""
    if membership(conn, watchlist_id, org_id) is None:
        conn.execute(
            sa.insert(watchlist_members).values(
                watchlist_id=watchlist_id, org_id=org_id, state="invited", invited_at=now
            )
        )
        return
    set_membership(conn, watchlist_id, org_id, "invited", invited_at=now)


def set_membership(
    conn: Connection, watchlist_id: str, org_id: str, state: str, **moments: datetime
) -> None:
    """Move a membership to ``state``, stamping ``joined_at``/``left_at``/... as given."""
    conn.execute(
        sa.update(watchlist_members)
        .where(
            watchlist_members.c.watchlist_id == watchlist_id,
            watchlist_members.c.org_id == org_id,
        )
        .values(state=state, **moments)
    )


# --- entries ----------------------------------------------------------------------------------


def active_entries(conn: Connection, watchlist_id: str, org_id: str | None = None) -> list[Any]:
    """``id, vector_id, vector, hashed_ref, contributor_org_id, model_id`` of the active
    entries (of one contributor, if ``org_id`` is given)."""
    stmt = sa.select(
        watchlist_entries.c.id,
        watchlist_entries.c.vector_id,
        watchlist_entries.c.vector,
        watchlist_entries.c.hashed_ref,
        watchlist_entries.c.contributor_org_id,
        watchlist_entries.c.model_id,
    ).where(
        watchlist_entries.c.watchlist_id == watchlist_id, watchlist_entries.c.status == "active"
    )
    if org_id is not None:
        stmt = stmt.where(watchlist_entries.c.contributor_org_id == org_id)
    return list(conn.execute(stmt))


def insert_entry(conn: Connection, **values: Any) -> None:
    """One active entry; ``values`` are the columns of ``watchlist_entries``."""
    conn.execute(sa.insert(watchlist_entries).values(status="active", **values))


def entries_of_contributor(
    conn: Connection, watchlist_id: str, org_id: str, entry_ids: Sequence[str]
) -> list[Any]:
    """``(id, vector_id, status)`` of those of ``entry_ids`` the org contributed here."""
    return list(
        conn.execute(
            sa.select(
                watchlist_entries.c.id, watchlist_entries.c.vector_id, watchlist_entries.c.status
            ).where(
                watchlist_entries.c.watchlist_id == watchlist_id,
                watchlist_entries.c.contributor_org_id == org_id,
                watchlist_entries.c.id.in_(list(entry_ids)),
            )
        )
    )


def active_entries_by_vector_id(
    conn: Connection, watchlist_id: str, vector_ids: Sequence[int]
) -> list[Any]:
    """``(id, vector_id, reason_code, contributor_org_id)`` of active entries behind hits."""
    return list(
        conn.execute(
            sa.select(
                watchlist_entries.c.id,
                watchlist_entries.c.vector_id,
                watchlist_entries.c.reason_code,
                watchlist_entries.c.contributor_org_id,
            ).where(
                watchlist_entries.c.watchlist_id == watchlist_id,
                watchlist_entries.c.vector_id.in_(list(vector_ids)),
                watchlist_entries.c.status == "active",
            )
        )
    )


def withdraw_entries(conn: Connection, entry_ids: Sequence[str]) -> None:
    """Withdrawn entries keep their row (the audit names them) but lose their vector."""
    conn.execute(
        sa.update(watchlist_entries)
        .where(watchlist_entries.c.id.in_(list(entry_ids)), watchlist_entries.c.status == "active")
        .values(status="withdrawn", withdrawn_at=utcnow(), vector=None, hashed_ref=None)
    )


def withdraw_copies_of(conn: Connection, embedding_ids: Sequence[str]) -> list[tuple[str, int]]:
    """Withdraw the active entries copied from these embeddings (erasure of their subject);
    returns their ``(watchlist id, vector id)`` pairs."""
    rows = conn.execute(
        sa.select(
            watchlist_entries.c.id, watchlist_entries.c.watchlist_id, watchlist_entries.c.vector_id
        ).where(
            watchlist_entries.c.source_embedding_id.in_(list(embedding_ids)),
            watchlist_entries.c.status == "active",
        )
    ).all()
    withdraw_entries(conn, [r.id for r in rows])
    return [(str(r.watchlist_id), int(r.vector_id)) for r in rows]


def subject_embeddings(conn: Connection, org_id: str, subject_id: str, model_id: str) -> list[Any]:
    """``(id, vector)`` of a subject's active embeddings of ``model_id`` (to contribute)."""
    return list(
        conn.execute(
            sa.select(enrollments.c.id, enrollments.c.vector)
            .join(subjects, subjects.c.id == enrollments.c.subject_pk)
            .where(
                subjects.c.org_id == org_id,
                subjects.c.subject_id == subject_id,
                enrollments.c.org_id == org_id,
                enrollments.c.status == "active",
                enrollments.c.model_id == model_id,
            )
        )
    )
