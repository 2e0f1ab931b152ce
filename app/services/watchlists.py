"""Shared watchlists: the only path on which one org's data meets another org's probe.

Rules (each enforced here, at the moment of every call):

* an org is *eligible* in a watchlist when the watchlist is open, its membership is
  `active` (it opted in itself, after an invitation; the owner joins at creation), its
  org setting `watchlist_sharing` is on and its `data_residency` allows the watchlist's
  region (checked at joining, and again at every call: the setting may change later);
* screening needs the caller to be eligible, and only ever sees entries whose contributor is
  eligible *now*: the watchlist's index holds exactly those entries (contributors are
  added or removed the moment their eligibility changes) and every hit is re-checked
  against the database before it is returned;
* hits name the watchlist, entry, reason code, score and decision: never the contributor's
  subject id, PII or frames;
* each watchlist has its own index namespace (`watchlist:<id>`); nothing here touches an
  org's own index, and org search never touches a watchlist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.errors import (
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    SubjectNotFoundError,
)
from app.runtime import WATCHLIST_PREFIX, Runtime
from app.services.matching import Probe, probe_vector
from app.services.orgs import effective_threshold, org_settings, residency_allows
from app.services.principal import Principal, record
from app.storage import new_id
from app.storage.repo import DEFAULT_ORG_SETTINGS
from app.storage.schema import (
    enrollments,
    orgs,
    subjects,
    utcnow,
    watchlist_entries,
    watchlist_members,
    watchlists,
)
from index import VectorIndex

REASON_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_SCREEN_TOP_K = 50


class WatchlistNotFoundError(NotFoundError):
    code = "watchlist_not_found"


class WatchlistEntryNotFoundError(NotFoundError):
    code = "watchlist_entry_not_found"


class SharingDisabledError(ForbiddenError):
    code = "watchlist_sharing_disabled"


class ResidencyError(ForbiddenError):
    code = "data_residency_forbids"


class NotAMemberError(ForbiddenError):
    code = "not_a_member"


class NotInvitedError(ConflictError):
    code = "not_invited"


class WatchlistClosedError(ConflictError):
    code = "watchlist_closed"


def namespace(watchlist_id: str) -> str:
    return f"{WATCHLIST_PREFIX}{watchlist_id}"


# --- eligibility ------------------------------------------------------------------------------


def _sharing_on(conn: Connection, org_id: str) -> bool:
    value = conn.execute(sa.select(orgs.c.settings).where(orgs.c.id == org_id)).scalar_one_or_none()
    return bool((value or {}).get("watchlist_sharing", False))


def _membership(conn: Connection, watchlist_id: str, org_id: str) -> str | None:
    state = conn.execute(
        sa.select(watchlist_members.c.state).where(
            watchlist_members.c.watchlist_id == watchlist_id, watchlist_members.c.org_id == org_id
        )
    ).scalar_one_or_none()
    return None if state is None else str(state)


def _watchlist(conn: Connection, watchlist_id: str) -> Any:
    return conn.execute(sa.select(watchlists).where(watchlists.c.id == watchlist_id)).first()


def eligible_orgs(conn: Connection, watchlist_id: str) -> set[str]:
    """Orgs whose entries may be screened, and who may screen, right now."""
    row = _watchlist(conn, watchlist_id)
    if row is None or row.status != "open":
        return set()
    members = conn.execute(
        sa.select(watchlist_members.c.org_id, orgs.c.settings)
        .join(orgs, orgs.c.id == watchlist_members.c.org_id)
        .where(
            watchlist_members.c.watchlist_id == watchlist_id, watchlist_members.c.state == "active"
        )
    ).all()
    return {
        m.org_id
        for m in members
        if (m.settings or {}).get("watchlist_sharing", False)
        and residency_allows(
            (m.settings or {}).get("data_residency", DEFAULT_ORG_SETTINGS["data_residency"]),
            row.region,
        )
    }


def _visible(conn: Connection, watchlist_id: str, org_id: str) -> Any:
    """The watchlist if `org_id` owns it or is invited/active in it; else 404 (no oracle)."""
    row = _watchlist(conn, watchlist_id)
    if row is None:
        raise WatchlistNotFoundError(f"no watchlist {watchlist_id!r}")
    if row.owner_org_id == org_id or _membership(conn, watchlist_id, org_id) in (
        "invited",
        "active",
    ):
        return row
    raise WatchlistNotFoundError(f"no watchlist {watchlist_id!r}")


# --- the watchlist's index ----------------------------------------------------------------------


def _index(runtime: Runtime, watchlist_id: str) -> VectorIndex:
    return runtime.indexes.get_or_create(
        namespace(watchlist_id), dimension=runtime.pipeline.dimension, model_id=runtime.model_id
    )


def _active_entries(conn: Connection, watchlist_id: str, org_id: str | None = None) -> list[Any]:
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
    return list(conn.execute(stmt).all())


def _intact(runtime: Runtime, row: Any) -> np.ndarray | None:
    """The entry's vector if it is of the served model and its reference (under the
    contributor's key) verifies."""
    if row.model_id != runtime.model_id:
        return None
    return runtime.intact_vector(row.contributor_org_id, row)


def sync_contributor(runtime: Runtime, watchlist_id: str, org_id: str) -> None:
    """Put `org_id`'s entries in the watchlist index if it is eligible, else take them out."""
    # One critical section from reading eligibility to changing the index, so a concurrent
    # change (a leave, a contribution) cannot interleave and leave a stale decision applied.
    with runtime.org_writer(namespace(watchlist_id)):
        with runtime.read() as conn:
            eligible = org_id in eligible_orgs(conn, watchlist_id)
            rows = _active_entries(conn, watchlist_id, org_id)
        index = _index(runtime, watchlist_id)
        if not eligible:
            index.remove([r.vector_id for r in rows])
            return
        fresh = [
            (r.vector_id, v)
            for r in rows
            if not index.contains(r.vector_id)
            for v in [_intact(runtime, r)]
            if v is not None
        ]
        if fresh:
            index.add(
                [i for i, _ in fresh], np.stack([v for _, v in fresh]), model_id=runtime.model_id
            )


def sync_watchlist(runtime: Runtime, watchlist_id: str) -> None:
    """Rebuild a watchlist's index from the database (eligible contributors only)."""
    with runtime.read() as conn:
        allowed = eligible_orgs(conn, watchlist_id)
        rows = _active_entries(conn, watchlist_id)

    def rows_since(_position: int) -> Any:
        for r in rows:
            vector = _intact(runtime, r) if r.contributor_org_id in allowed else None
            yield int(r.vector_id), vector

    with runtime.org_writer(namespace(watchlist_id)):
        _index(runtime, watchlist_id).load_or_rebuild(rows_since)


def sync_org(runtime: Runtime, org_id: str) -> None:
    """After an org's sharing setting changed: re-sync every watchlist it belongs to."""
    with runtime.read() as conn:
        ids = (
            conn.execute(
                sa.select(watchlist_members.c.watchlist_id).where(
                    watchlist_members.c.org_id == org_id
                )
            )
            .scalars()
            .all()
        )
    for watchlist_id in ids:
        sync_contributor(runtime, watchlist_id, org_id)


def replay_all(runtime: Runtime) -> None:
    with runtime.read() as conn:
        ids = conn.execute(sa.select(watchlists.c.id)).scalars().all()
    for watchlist_id in ids:
        sync_watchlist(runtime, watchlist_id)


# --- lifecycle --------------------------------------------------------------------------------


def _require_sharing(conn: Connection, org_id: str) -> None:
    if not _sharing_on(conn, org_id):
        raise SharingDisabledError(
            "enable `watchlist_sharing` in the org settings first (PATCH /v1/org/settings)"
        )


def _view(conn: Connection, row: Any, org_id: str) -> dict[str, Any]:
    members = conn.execute(
        sa.select(watchlist_members.c.org_id, watchlist_members.c.state).where(
            watchlist_members.c.watchlist_id == row.id
        )
    ).all()
    owner = row.owner_org_id == org_id
    return {
        "watchlist_id": row.id,
        "name": row.name,
        "region": row.region,
        "model_id": row.model_id,
        "status": row.status,
        "role": "owner" if owner else "member",
        "membership": _membership(conn, row.id, org_id),
        "created_at": row.created_at,
        # Only the owner sees who is in it.
        "members": [{"org_id": m.org_id, "state": m.state} for m in members] if owner else None,
    }


def create_watchlist(
    runtime: Runtime, principal: Principal, name: str, region: str | None
) -> dict[str, Any]:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidRequestError("a watchlist name is 1..200 characters")
    region = region or runtime.settings.region
    org_id = principal.org_id
    with runtime.engine.begin() as conn:
        _require_sharing(conn, org_id)
        residency = org_settings(runtime, org_id)["data_residency"]
        if not residency_allows(residency, region):
            raise ResidencyError(f"data residency {residency!r} forbids region {region!r}")
        watchlist_id = new_id("wl")
        now = utcnow()
        conn.execute(
            sa.insert(watchlists).values(
                id=watchlist_id,
                owner_org_id=org_id,
                name=name,
                region=region,
                model_id=runtime.model_id,
                status="open",
                entry_seq=0,
                created_at=now,
            )
        )
        conn.execute(
            sa.insert(watchlist_members).values(
                watchlist_id=watchlist_id,
                org_id=org_id,
                state="active",
                invited_at=now,
                joined_at=now,
            )
        )
        record(
            conn,
            runtime,
            principal,
            org_id=org_id,
            action="watchlist.create",
            target=watchlist_id,
            details={"name": name, "region": region},
        )
        return _view(conn, _watchlist(conn, watchlist_id), org_id)


def list_watchlists(runtime: Runtime, principal: Principal) -> list[dict[str, Any]]:
    org_id = principal.org_id
    with runtime.read() as conn:
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
        rows = conn.execute(
            sa.select(watchlists).where(watchlists.c.id.in_(ids)).order_by(watchlists.c.created_at)
        ).all()
        return [_view(conn, r, org_id) for r in rows]


def invite(
    runtime: Runtime, principal: Principal, watchlist_id: str, org_id: str
) -> dict[str, Any]:
    with runtime.engine.begin() as conn:
        row = _visible(conn, watchlist_id, principal.org_id)
        if row.owner_org_id != principal.org_id:
            raise WatchlistNotFoundError(f"no watchlist {watchlist_id!r}")  # members can't invite
        if row.status != "open":
            raise WatchlistClosedError("the watchlist is closed")
        if conn.execute(sa.select(orgs.c.id).where(orgs.c.id == org_id)).first() is None:
            raise NotFoundError(f"no org {org_id!r}")
        state = _membership(conn, watchlist_id, org_id)
        if state == "active":
            raise ConflictError(f"org {org_id!r} is already a member")
        now = utcnow()
        if state is None:
            conn.execute(
                sa.insert(watchlist_members).values(
                    watchlist_id=watchlist_id, org_id=org_id, state="invited", invited_at=now
                )
            )
        else:
            conn.execute(
                sa.update(watchlist_members)
                .where(
                    watchlist_members.c.watchlist_id == watchlist_id,
                    watchlist_members.c.org_id == org_id,
                )
                .values(state="invited", invited_at=now)
            )
        record(
            conn,
            runtime,
            principal,
            org_id=principal.org_id,
            action="watchlist.invite",
            target=watchlist_id,
            details={"org_id": org_id},
        )
    return {"watchlist_id": watchlist_id, "org_id": org_id, "state": "invited"}


def join(runtime: Runtime, principal: Principal, watchlist_id: str) -> dict[str, Any]:
    """Opt in: only an invited org, with sharing on and a residency that allows the region."""
    org_id = principal.org_id
    with runtime.engine.begin() as conn:
        row = _visible(conn, watchlist_id, org_id)
        if row.status != "open":
            raise WatchlistClosedError("the watchlist is closed")
        state = _membership(conn, watchlist_id, org_id)
        if state == "active":
            return {"watchlist_id": watchlist_id, "org_id": org_id, "state": "active"}
        if state != "invited":
            raise NotInvitedError("only an invited org can opt in")
        _require_sharing(conn, org_id)
        residency = org_settings(runtime, org_id)["data_residency"]
        if not residency_allows(residency, row.region):
            raise ResidencyError(
                f"data residency {residency!r} forbids joining a watchlist in region {row.region!r}"
            )
        conn.execute(
            sa.update(watchlist_members)
            .where(
                watchlist_members.c.watchlist_id == watchlist_id,
                watchlist_members.c.org_id == org_id,
            )
            .values(state="active", joined_at=utcnow())
        )
        record(
            conn,
            runtime,
            principal,
            org_id=org_id,
            action="watchlist.join",
            target=watchlist_id,
            details={},
        )
    sync_contributor(runtime, watchlist_id, org_id)
    return {"watchlist_id": watchlist_id, "org_id": org_id, "state": "active"}


def _end_membership(
    runtime: Runtime, principal: Principal, watchlist_id: str, org_id: str, state: str
) -> dict[str, Any]:
    with runtime.engine.begin() as conn:
        conn.execute(
            sa.update(watchlist_members)
            .where(
                watchlist_members.c.watchlist_id == watchlist_id,
                watchlist_members.c.org_id == org_id,
            )
            .values(state=state, left_at=utcnow())
        )
        record(
            conn,
            runtime,
            principal,
            org_id=principal.org_id,
            action=f"watchlist.{'leave' if state == 'left' else 'remove_member'}",
            target=watchlist_id,
            details={"org_id": org_id},
        )
    sync_contributor(runtime, watchlist_id, org_id)  # its entries leave screening at once
    return {"watchlist_id": watchlist_id, "org_id": org_id, "state": state}


def leave(runtime: Runtime, principal: Principal, watchlist_id: str) -> dict[str, Any]:
    with runtime.read() as conn:
        row = _visible(conn, watchlist_id, principal.org_id)
    if row.owner_org_id == principal.org_id:
        raise ConflictError("the owner cannot leave; close the watchlist instead")
    return _end_membership(runtime, principal, watchlist_id, principal.org_id, "left")


def remove_member(
    runtime: Runtime, principal: Principal, watchlist_id: str, org_id: str
) -> dict[str, Any]:
    with runtime.read() as conn:
        row = _visible(conn, watchlist_id, principal.org_id)
        state = _membership(conn, watchlist_id, org_id)
    if row.owner_org_id != principal.org_id:
        raise WatchlistNotFoundError(f"no watchlist {watchlist_id!r}")
    if org_id == principal.org_id:
        raise ConflictError("the owner cannot remove itself; close the watchlist instead")
    if state not in ("invited", "active"):
        raise NotFoundError(f"org {org_id!r} is not a member")
    return _end_membership(runtime, principal, watchlist_id, org_id, "removed")


def close(runtime: Runtime, principal: Principal, watchlist_id: str) -> dict[str, Any]:
    with runtime.engine.begin() as conn:
        row = _visible(conn, watchlist_id, principal.org_id)
        if row.owner_org_id != principal.org_id:
            raise WatchlistNotFoundError(f"no watchlist {watchlist_id!r}")
        if row.status == "closed":
            return _view(conn, row, principal.org_id)
        conn.execute(
            sa.update(watchlists)
            .where(watchlists.c.id == watchlist_id)
            .values(status="closed", closed_at=utcnow())
        )
        record(
            conn,
            runtime,
            principal,
            org_id=principal.org_id,
            action="watchlist.close",
            target=watchlist_id,
            details={},
        )
        view = _view(conn, _watchlist(conn, watchlist_id), principal.org_id)
    with runtime.org_writer(namespace(watchlist_id)):
        runtime.indexes.drop(namespace(watchlist_id)) if namespace(
            watchlist_id
        ) in runtime.indexes else None
    return view


# --- entries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contribution:
    reason_code: str
    subject_id: str | None = None
    probe: Probe | None = None


def contribute(
    runtime: Runtime, principal: Principal, watchlist_id: str, contribution: Contribution
) -> dict[str, Any]:
    """Add entries from one of the caller's subjects (every active embedding) or a capture."""
    org_id = principal.org_id
    if not REASON_CODE.fullmatch(contribution.reason_code):
        raise InvalidRequestError("reason_code is 1..64 of a-z, 0-9, _ (e.g. confirmed_fraud)")
    if (contribution.subject_id is None) == (contribution.probe is None):
        raise InvalidRequestError("send exactly one of subject_id or a probe")
    with runtime.read() as conn:
        row = _visible(conn, watchlist_id, org_id)
        if row.status != "open":
            raise WatchlistClosedError("the watchlist is closed")
        if org_id not in eligible_orgs(conn, watchlist_id):
            raise NotAMemberError("only an opted-in member with sharing on may contribute")
        if row.model_id != runtime.model_id:
            raise ConflictError(f"the watchlist is pinned to model {row.model_id!r}")
        sources: list[tuple[str | None, np.ndarray]] = []
        if contribution.subject_id is not None:
            embeddings = conn.execute(
                sa.select(enrollments.c.id, enrollments.c.vector)
                .join(subjects, subjects.c.id == enrollments.c.subject_pk)
                .where(
                    subjects.c.org_id == org_id,
                    subjects.c.subject_id == contribution.subject_id,
                    enrollments.c.org_id == org_id,
                    enrollments.c.status == "active",
                    enrollments.c.model_id == runtime.model_id,
                )
            ).all()
            if not embeddings:
                raise SubjectNotFoundError(f"no active subject {contribution.subject_id!r}")
            sources = [(e.id, np.frombuffer(e.vector, "<f4")) for e in embeddings]
    if contribution.probe is not None:
        sources = [(None, probe_vector(runtime, contribution.probe).vector)]

    key = namespace(watchlist_id)
    created: list[dict[str, Any]] = []
    with runtime.org_writer(key):
        with runtime.engine.begin() as conn:
            last = conn.execute(
                sa.update(watchlists)
                .where(watchlists.c.id == watchlist_id)
                .values(entry_seq=watchlists.c.entry_seq + len(sources))
                .returning(watchlists.c.entry_seq)
            ).scalar_one()
            now = utcnow()
            for offset, (embedding_id, vector) in enumerate(sources):
                entry_id = new_id("wle")
                vector_id = int(last) - len(sources) + 1 + offset
                reference = runtime.hasher.reference(
                    org_id=org_id, model_id=runtime.model_id, enrollment_id=entry_id, vector=vector
                )
                conn.execute(
                    sa.insert(watchlist_entries).values(
                        id=entry_id,
                        watchlist_id=watchlist_id,
                        contributor_org_id=org_id,
                        vector_id=vector_id,
                        vector=vector.astype("<f4").tobytes(),
                        dimension=runtime.pipeline.dimension,
                        model_id=runtime.model_id,
                        hashed_ref=reference,
                        reason_code=contribution.reason_code,
                        source="enrollment" if embedding_id else "capture",
                        source_embedding_id=embedding_id,
                        status="active",
                        created_at=now,
                    )
                )
                created.append({"entry_id": entry_id, "vector_id": vector_id, "vector": vector})
            record(
                conn,
                runtime,
                principal,
                org_id=org_id,
                action="watchlist.contribute",
                target=watchlist_id,
                details={
                    "entries": [c["entry_id"] for c in created],
                    "reason_code": contribution.reason_code,
                    "source": "subject" if contribution.subject_id else "capture",
                },
            )
        with runtime.read() as conn:  # a leave may have landed since the check above
            still_eligible = org_id in eligible_orgs(conn, watchlist_id)
        if still_eligible:
            _index(runtime, watchlist_id).add(
                [c["vector_id"] for c in created],
                np.stack([c["vector"] for c in created]),
                model_id=runtime.model_id,
            )
    return {
        "watchlist_id": watchlist_id,
        "reason_code": contribution.reason_code,
        "entry_ids": [c["entry_id"] for c in created],
    }


def withdraw(
    runtime: Runtime, principal: Principal, watchlist_id: str, entry_ids: list[str]
) -> dict[str, Any]:
    """A contributor takes back its own entries (another org's entry ids are 404)."""
    org_id = principal.org_id
    if not entry_ids:
        raise InvalidRequestError("name at least one entry_id")
    with runtime.read() as conn:
        _visible(conn, watchlist_id, org_id)
    key = namespace(watchlist_id)
    with runtime.org_writer(key):
        with runtime.engine.begin() as conn:
            rows = conn.execute(
                sa.select(
                    watchlist_entries.c.id,
                    watchlist_entries.c.vector_id,
                    watchlist_entries.c.status,
                ).where(
                    watchlist_entries.c.watchlist_id == watchlist_id,
                    watchlist_entries.c.contributor_org_id == org_id,
                    watchlist_entries.c.id.in_(entry_ids),
                )
            ).all()
            if len(rows) != len(set(entry_ids)):
                missing = sorted(set(entry_ids) - {r.id for r in rows})
                raise WatchlistEntryNotFoundError(f"no entry {missing[0]!r} of yours here")
            _withdraw_rows(conn, [r.id for r in rows])
            record(
                conn,
                runtime,
                principal,
                org_id=org_id,
                action="watchlist.withdraw",
                target=watchlist_id,
                details={"entries": sorted(entry_ids)},
            )
        _index(runtime, watchlist_id).remove([r.vector_id for r in rows])
    return {"watchlist_id": watchlist_id, "withdrawn": sorted(entry_ids)}


def _withdraw_rows(conn: Connection, entry_ids: list[str]) -> None:
    conn.execute(
        sa.update(watchlist_entries)
        .where(watchlist_entries.c.id.in_(entry_ids), watchlist_entries.c.status == "active")
        .values(status="withdrawn", withdrawn_at=utcnow(), vector=None, hashed_ref=None)
    )


def withdraw_embeddings(
    runtime: Runtime, conn: Connection, embedding_ids: list[str]
) -> list[tuple[str, int]]:
    """Erasure of a subject: withdraw the entries copied from its embeddings, in `conn`.

    Returns (watchlist id, vector id) pairs for the caller to remove from the indexes.
    """
    if not embedding_ids:
        return []
    rows = conn.execute(
        sa.select(
            watchlist_entries.c.id, watchlist_entries.c.watchlist_id, watchlist_entries.c.vector_id
        ).where(
            watchlist_entries.c.source_embedding_id.in_(embedding_ids),
            watchlist_entries.c.status == "active",
        )
    ).all()
    _withdraw_rows(conn, [r.id for r in rows])
    return [(r.watchlist_id, int(r.vector_id)) for r in rows]


def remove_from_indexes(runtime: Runtime, entries: list[tuple[str, int]]) -> None:
    for watchlist_id, vector_id in entries:
        with runtime.org_writer(namespace(watchlist_id)):
            _index(runtime, watchlist_id).remove([vector_id])


# --- screening --------------------------------------------------------------------------------


def screen(
    runtime: Runtime, principal: Principal, watchlist_id: str, probe: Probe, top_k: int = 10
) -> dict[str, Any]:
    org_id = principal.org_id
    if not 1 <= top_k <= MAX_SCREEN_TOP_K:
        raise InvalidRequestError(f"top_k must be 1..{MAX_SCREEN_TOP_K}")
    with runtime.read() as conn:
        if _visible(conn, watchlist_id, org_id).status != "open":
            raise WatchlistClosedError("the watchlist is closed")
        if org_id not in eligible_orgs(conn, watchlist_id):
            raise NotAMemberError("only an opted-in member with sharing on may screen")
    vector = probe_vector(runtime, probe)
    threshold, source = effective_threshold(runtime, org_settings(runtime, org_id))
    index = _index(runtime, watchlist_id)
    hits: list[dict[str, Any]] = []
    if index.count:
        found = index.search(vector.vector, model_id=runtime.model_id, k=top_k, min_score=threshold)
        by_vector = {h.id: h.score for h in found.hits(0)}
        if by_vector:
            with runtime.read() as conn:
                allowed = eligible_orgs(conn, watchlist_id)  # checked again, at this moment
                rows = conn.execute(
                    sa.select(
                        watchlist_entries.c.id,
                        watchlist_entries.c.vector_id,
                        watchlist_entries.c.reason_code,
                        watchlist_entries.c.contributor_org_id,
                    ).where(
                        watchlist_entries.c.watchlist_id == watchlist_id,
                        watchlist_entries.c.vector_id.in_(list(by_vector)),
                        watchlist_entries.c.status == "active",
                    )
                ).all()
            hits = sorted(
                (
                    {
                        "watchlist_id": watchlist_id,
                        "entry_id": r.id,
                        "reason_code": r.reason_code,
                        "score": round(by_vector[int(r.vector_id)], 6),
                        "decision": "match",
                        "_contributor": r.contributor_org_id,
                    }
                    for r in rows
                    if r.contributor_org_id in allowed and org_id in allowed
                ),
                key=lambda h: -h["score"],
            )
    with runtime.engine.begin() as conn:
        audit_id = record(
            conn,
            runtime,
            principal,
            org_id=org_id,
            action="watchlist.screen",
            target=watchlist_id,
            details={
                "hits": [{"entry_id": h["entry_id"], "score": h["score"]} for h in hits],
                "threshold": threshold,
                "probe": vector.kind,
            },
        )
        for hit in hits:
            contributor = hit["_contributor"]
            if contributor == org_id:
                continue
            details = {
                "watchlist_id": watchlist_id,
                "entry_id": hit["entry_id"],
                "score": hit["score"],
            }
            record(
                conn,
                runtime,
                principal,
                org_id=org_id,
                action="watchlist.hit",
                target=hit["entry_id"],
                details={**details, "role": "screener"},
            )
            record(
                conn,
                runtime,
                principal,
                org_id=contributor,
                action="watchlist.hit",
                target=hit["entry_id"],
                details={**details, "role": "contributor"},
                # The contributor's log must not learn who screened (the caller's key id).
                actor=namespace(watchlist_id),
            )
    for hit in hits:
        del hit["_contributor"]
    return {
        "watchlist_id": watchlist_id,
        "hits": hits,
        "threshold": threshold,
        "threshold_source": source,
        "model_id": runtime.model_id,
        "probe": vector.kind,
        "audit_id": audit_id,
    }


def screen_everywhere(
    runtime: Runtime, principal: Principal, vector: np.ndarray
) -> list[dict[str, Any]]:
    """Screen one vector against every watchlist where the caller may screen right now
    (`screen_watchlists` at enrollment). Each screening is audited like `screen`."""
    org_id = principal.org_id
    with runtime.read() as conn:
        ids = (
            conn.execute(
                sa.select(watchlist_members.c.watchlist_id).where(
                    watchlist_members.c.org_id == org_id, watchlist_members.c.state == "active"
                )
            )
            .scalars()
            .all()
        )
        open_ids = [w for w in ids if org_id in eligible_orgs(conn, w)]
    probe = Probe(vector=[float(x) for x in vector], model_id=runtime.model_id)
    hits: list[dict[str, Any]] = []
    for watchlist_id in sorted(open_ids):
        try:
            hits.extend(screen(runtime, principal, watchlist_id, probe)["hits"])
        except (NotAMemberError, WatchlistClosedError, WatchlistNotFoundError):
            continue  # membership changed since we looked: nothing to screen there
    return sorted(hits, key=lambda h: -h["score"])
