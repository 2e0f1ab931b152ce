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

from app.errors import (
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    SubjectNotFoundError,
)
from app.runtime import Runtime
from app.services import indexing, pages
from app.services.orgs import effective_threshold, org_settings
from app.services.principal import Principal, record
from app.services.probes import Probe, probe_vector
from app.services.residency import residency_allows
from app.services.sharing import eligible_orgs
from app.services.text import SERVICE_ID, check_text
from app.storage import (
    Connection,
    feed,
    new_id,
    orgs,
    read_transaction,
    utcnow,
    watchlists,
    write_transaction,
)
from app.storage.webhooks import record_event

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


class OrgNotFoundError(NotFoundError):
    code = "org_not_found"


# --- visibility -------------------------------------------------------------------------------


def _visible(conn: Connection, watchlist_id: str, org_id: str) -> Any:
    """The watchlist if `org_id` owns it or is invited/active in it; else 404 (no oracle)."""
    row = watchlists.find(conn, watchlist_id) if SERVICE_ID.fullmatch(watchlist_id) else None
    if row is None:
        raise WatchlistNotFoundError(f"no watchlist {watchlist_id!r}")
    if row.owner_org_id == org_id or watchlists.membership(conn, watchlist_id, org_id) in (
        "invited",
        "active",
    ):
        return row
    raise WatchlistNotFoundError(f"no watchlist {watchlist_id!r}")


def _owned(conn: Connection, watchlist_id: str, org_id: str) -> Any:
    """The watchlist if `org_id` owns it; members get the same 404 as strangers."""
    row = _visible(conn, watchlist_id, org_id)
    if row.owner_org_id != org_id:
        raise WatchlistNotFoundError(f"no watchlist {watchlist_id!r}")
    return row


def _require_sharing(conn: Connection, org_id: str) -> None:
    if not orgs.org_settings(conn, org_id).get("watchlist_sharing", False):
        raise SharingDisabledError(
            "enable `watchlist_sharing` in the org settings first (PATCH /v1/org/settings)"
        )


def _require_residency(conn: Connection, org_id: str, region: str, what: str) -> None:
    residency = orgs.org_settings(conn, org_id)["data_residency"]
    if not residency_allows(residency, region):
        raise ResidencyError(f"data residency {residency!r} forbids {what} {region!r}")


def _view(conn: Connection, row: Any, org_id: str) -> dict[str, Any]:
    owner = row.owner_org_id == org_id
    return {
        "watchlist_id": row.id,
        "name": row.name,
        "region": row.region,
        "model_id": row.model_id,
        "status": row.status,
        "role": "owner" if owner else "member",
        "membership": watchlists.membership(conn, row.id, org_id),
        "created_at": row.created_at,
        # Only the owner sees who is in it.
        "members": (
            [{"org_id": m.org_id, "state": m.state} for m in watchlists.members(conn, row.id)]
            if owner
            else None
        ),
    }


# --- lifecycle --------------------------------------------------------------------------------


def create_watchlist(
    runtime: Runtime, principal: Principal, name: str, region: str | None
) -> dict[str, Any]:
    name = check_text(name, "a watchlist name").strip()
    if not 1 <= len(name) <= 200:
        raise InvalidRequestError("a watchlist name is 1..200 characters")
    region = check_text(region or runtime.settings.region, "region")
    org_id = principal.org_id
    with write_transaction(runtime.engine) as conn:
        _require_sharing(conn, org_id)
        _require_residency(conn, org_id, region, "region")
        watchlist_id = new_id("wl")
        watchlists.insert(
            conn,
            watchlist_id=watchlist_id,
            owner_org_id=org_id,
            name=name,
            region=region,
            model_id=runtime.model_id,
            now=utcnow(),
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
        return _view(conn, watchlists.find(conn, watchlist_id), org_id)


def list_watchlists(
    runtime: Runtime, principal: Principal, limit: int = 50, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the watchlists the org owns, is invited to or belongs to, oldest first."""
    org_id = principal.org_id
    with read_transaction(runtime.engine) as conn:
        rows, next_cursor = pages.page_of(
            watchlists.visible_to(conn, org_id),
            limit,
            cursor,
            lambda r: pages.hex_id_position(r.created_at, r.id),
        )
        return [_view(conn, r, org_id) for r in rows], next_cursor


def invite(
    runtime: Runtime, principal: Principal, watchlist_id: str, org_id: str
) -> dict[str, Any]:
    check_text(org_id, "org_id")  # then an id of no org is a plain 404
    with write_transaction(runtime.engine) as conn:
        row = _owned(conn, watchlist_id, principal.org_id)  # members can't invite
        if row.status != "open":
            raise WatchlistClosedError("the watchlist is closed")
        if not orgs.org_exists(conn, org_id):
            raise OrgNotFoundError(f"no org {org_id!r}")
        if watchlists.membership(conn, watchlist_id, org_id) == "active":
            raise ConflictError(f"org {org_id!r} is already a member")
        watchlists.invite(conn, watchlist_id, org_id, utcnow())
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
    with write_transaction(runtime.engine) as conn:
        row = _visible(conn, watchlist_id, org_id)
        if row.status != "open":
            raise WatchlistClosedError("the watchlist is closed")
        state = watchlists.membership(conn, watchlist_id, org_id)
        if state == "active":
            return {"watchlist_id": watchlist_id, "org_id": org_id, "state": "active"}
        if state != "invited":
            raise NotInvitedError("only an invited org can opt in")
        _require_sharing(conn, org_id)
        _require_residency(conn, org_id, row.region, "joining a watchlist in region")
        watchlists.set_membership(conn, watchlist_id, org_id, "active", joined_at=utcnow())
        feed.bump_watchlist(conn, watchlist_id)
        record(
            conn,
            runtime,
            principal,
            org_id=org_id,
            action="watchlist.join",
            target=watchlist_id,
            details={},
        )
    indexing.refresh_watchlist(runtime, watchlist_id)
    return {"watchlist_id": watchlist_id, "org_id": org_id, "state": "active"}


def _end_membership(
    runtime: Runtime, principal: Principal, watchlist_id: str, org_id: str, state: str
) -> dict[str, Any]:
    with write_transaction(runtime.engine) as conn:
        watchlists.set_membership(conn, watchlist_id, org_id, state, left_at=utcnow())
        feed.bump_watchlist(conn, watchlist_id)
        record(
            conn,
            runtime,
            principal,
            org_id=principal.org_id,
            action=f"watchlist.{'leave' if state == 'left' else 'remove_member'}",
            target=watchlist_id,
            details={"org_id": org_id},
        )
    indexing.refresh_watchlist(runtime, watchlist_id)  # its entries leave screening at once
    return {"watchlist_id": watchlist_id, "org_id": org_id, "state": state}


def leave(runtime: Runtime, principal: Principal, watchlist_id: str) -> dict[str, Any]:
    with read_transaction(runtime.engine) as conn:
        row = _visible(conn, watchlist_id, principal.org_id)
    if row.owner_org_id == principal.org_id:
        raise ConflictError("the owner cannot leave; close the watchlist instead")
    return _end_membership(runtime, principal, watchlist_id, principal.org_id, "left")


def remove_member(
    runtime: Runtime, principal: Principal, watchlist_id: str, org_id: str
) -> dict[str, Any]:
    with read_transaction(runtime.engine) as conn:
        row = _visible(conn, watchlist_id, principal.org_id)
        state = (
            watchlists.membership(conn, watchlist_id, org_id)
            if SERVICE_ID.fullmatch(org_id)
            else None
        )
    if row.owner_org_id != principal.org_id:
        raise WatchlistNotFoundError(f"no watchlist {watchlist_id!r}")
    if org_id == principal.org_id:
        raise ConflictError("the owner cannot remove itself; close the watchlist instead")
    if state not in ("invited", "active"):
        raise NotFoundError(f"org {org_id!r} is not a member")
    return _end_membership(runtime, principal, watchlist_id, org_id, "removed")


def close(runtime: Runtime, principal: Principal, watchlist_id: str) -> dict[str, Any]:
    with write_transaction(runtime.engine) as conn:
        row = _owned(conn, watchlist_id, principal.org_id)
        if row.status == "closed":
            return _view(conn, row, principal.org_id)
        watchlists.close(conn, watchlist_id, utcnow())
        feed.bump_watchlist(conn, watchlist_id)
        record(
            conn,
            runtime,
            principal,
            org_id=principal.org_id,
            action="watchlist.close",
            target=watchlist_id,
            details={},
        )
        view = _view(conn, watchlists.find(conn, watchlist_id), principal.org_id)
    indexing.refresh_watchlist(runtime, watchlist_id)  # empty: a closed watchlist screens nothing
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
    sources = _contribution_sources(runtime, org_id, watchlist_id, contribution)
    with write_transaction(runtime.engine) as conn:
        entry_ids = _insert_entries(conn, runtime, org_id, watchlist_id, contribution, sources)
        feed.bump_watchlist(conn, watchlist_id)
        record(
            conn,
            runtime,
            principal,
            org_id=org_id,
            action="watchlist.contribute",
            target=watchlist_id,
            details={
                "entries": entry_ids,
                "reason_code": contribution.reason_code,
                "source": "subject" if contribution.subject_id else "capture",
            },
        )
    # Only if the contributor is still eligible (a leave may have landed since the check).
    indexing.refresh_watchlist(runtime, watchlist_id)
    return {
        "watchlist_id": watchlist_id,
        "reason_code": contribution.reason_code,
        "entry_ids": entry_ids,
    }


def _contribution_sources(
    runtime: Runtime, org_id: str, watchlist_id: str, contribution: Contribution
) -> list[tuple[str | None, np.ndarray]]:
    """Check the caller may contribute; `(embedding id or None, vector)` per entry."""
    with read_transaction(runtime.engine) as conn:
        row = _visible(conn, watchlist_id, org_id)
        if row.status != "open":
            raise WatchlistClosedError("the watchlist is closed")
        if org_id not in eligible_orgs(conn, watchlist_id, runtime.settings.region):
            raise NotAMemberError("only an opted-in member with sharing on may contribute")
        if row.model_id != runtime.model_id:
            raise ConflictError(f"the watchlist is pinned to model {row.model_id!r}")
        if contribution.subject_id is not None:
            embeddings = watchlists.subject_embeddings(
                conn, org_id, contribution.subject_id, runtime.model_id
            )
            if not embeddings:
                raise SubjectNotFoundError(f"no active subject {contribution.subject_id!r}")
            return [(e.id, np.frombuffer(e.vector, "<f4")) for e in embeddings]
    assert contribution.probe is not None
    return [(None, probe_vector(runtime, contribution.probe).vector)]


def _insert_entries(
    conn: Connection,
    runtime: Runtime,
    org_id: str,
    watchlist_id: str,
    contribution: Contribution,
    sources: list[tuple[str | None, np.ndarray]],
) -> list[str]:
    """One entry per source, each with its hashed reference under the contributor's key;
    returns their ids."""
    first = watchlists.take_vector_ids(conn, watchlist_id, len(sources))
    now = utcnow()
    created = []
    for offset, (embedding_id, vector) in enumerate(sources):
        entry_id = new_id("wle")
        reference = runtime.hasher.reference(
            org_id=org_id, model_id=runtime.model_id, enrollment_id=entry_id, vector=vector
        )
        watchlists.insert_entry(
            conn,
            id=entry_id,
            watchlist_id=watchlist_id,
            contributor_org_id=org_id,
            vector_id=first + offset,
            vector=vector.astype("<f4").tobytes(),
            dimension=runtime.pipeline.dimension,
            model_id=runtime.model_id,
            hashed_ref=reference,
            reason_code=contribution.reason_code,
            source="enrollment" if embedding_id else "capture",
            source_embedding_id=embedding_id,
            created_at=now,
        )
        created.append(entry_id)
    return created


def withdraw(
    runtime: Runtime, principal: Principal, watchlist_id: str, entry_ids: list[str]
) -> dict[str, Any]:
    """A contributor takes back its own entries (another org's entry ids are 404)."""
    org_id = principal.org_id
    if not entry_ids:
        raise InvalidRequestError("name at least one entry_id")
    if unknown := [e for e in entry_ids if not SERVICE_ID.fullmatch(e)]:
        raise WatchlistEntryNotFoundError(f"no entry {unknown[0]!r} of yours here")
    with read_transaction(runtime.engine) as conn:
        _visible(conn, watchlist_id, org_id)
    with write_transaction(runtime.engine) as conn:
        rows = watchlists.entries_of_contributor(conn, watchlist_id, org_id, entry_ids)
        if len(rows) != len(set(entry_ids)):
            missing = sorted(set(entry_ids) - {r.id for r in rows})
            raise WatchlistEntryNotFoundError(f"no entry {missing[0]!r} of yours here")
        watchlists.withdraw_entries(conn, [r.id for r in rows])
        feed.bump_watchlist(conn, watchlist_id)
        record(
            conn,
            runtime,
            principal,
            org_id=org_id,
            action="watchlist.withdraw",
            target=watchlist_id,
            details={"entries": sorted(entry_ids)},
        )
    indexing.refresh_watchlist(runtime, watchlist_id)
    return {"watchlist_id": watchlist_id, "withdrawn": sorted(entry_ids)}


# --- screening --------------------------------------------------------------------------------


def screen(
    runtime: Runtime, principal: Principal, watchlist_id: str, probe: Probe, top_k: int = 10
) -> dict[str, Any]:
    org_id = principal.org_id
    if not 1 <= top_k <= MAX_SCREEN_TOP_K:
        raise InvalidRequestError(f"top_k must be 1..{MAX_SCREEN_TOP_K}")
    with read_transaction(runtime.engine) as conn:
        if _visible(conn, watchlist_id, org_id).status != "open":
            raise WatchlistClosedError("the watchlist is closed")
        if org_id not in eligible_orgs(conn, watchlist_id, runtime.settings.region):
            raise NotAMemberError("only an opted-in member with sharing on may screen")
    vector = probe_vector(runtime, probe)
    threshold, source = effective_threshold(runtime, org_settings(runtime, org_id))
    hits = _hits(runtime, org_id, watchlist_id, vector.vector, top_k, threshold)
    with write_transaction(runtime.engine) as conn:
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
        _audit_hits(conn, runtime, principal, watchlist_id, hits)
        if hits:  # the screener's event: its own ids only, nothing of a contributing org
            event = {"watchlist_id": watchlist_id, "screen_id": audit_id, "hits": len(hits)}
            record_event(conn, org_id, "watchlist.hit", event)
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


def _hits(
    runtime: Runtime,
    org_id: str,
    watchlist_id: str,
    vector: np.ndarray,
    top_k: int,
    threshold: float,
) -> list[dict[str, Any]]:
    """The watchlist's entries that match, best first, each re-checked against the database:
    still active, and its contributor and the screener both eligible at this moment."""
    index = indexing.current_watchlist_index(runtime, watchlist_id)
    if not index.count:
        return []
    found = index.search(vector, model_id=runtime.model_id, k=top_k, min_score=threshold)
    by_vector = {h.id: h.score for h in found.hits(0)}
    if not by_vector:
        return []
    with read_transaction(runtime.engine) as conn:
        # Checked again, at this moment (and against this deployment's region).
        allowed = eligible_orgs(conn, watchlist_id, runtime.settings.region)
        rows = watchlists.active_entries_by_vector_id(conn, watchlist_id, list(by_vector))
    return sorted(
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


def _audit_hits(
    conn: Connection,
    runtime: Runtime,
    principal: Principal,
    watchlist_id: str,
    hits: list[dict[str, Any]],
) -> None:
    """Each hit on another org's entry is audited in both orgs' logs."""
    for hit in hits:
        contributor = hit["_contributor"]
        if contributor == principal.org_id:
            continue
        details = {"watchlist_id": watchlist_id, "entry_id": hit["entry_id"], "score": hit["score"]}
        record(
            conn,
            runtime,
            principal,
            org_id=principal.org_id,
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
            actor=indexing.watchlist_namespace(watchlist_id),
        )


def screen_everywhere(
    runtime: Runtime, principal: Principal, vector: np.ndarray
) -> list[dict[str, Any]]:
    """Screen one vector against every watchlist where the caller may screen right now
    (`screen_watchlists` at enrollment). Each screening is audited like `screen`."""
    org_id = principal.org_id
    with read_transaction(runtime.engine) as conn:
        ids = watchlists.watchlists_of(conn, org_id, active_only=True)
        open_ids = [w for w in ids if org_id in eligible_orgs(conn, w, runtime.settings.region)]
    probe = Probe(vector=[float(x) for x in vector], model_id=runtime.model_id)
    hits: list[dict[str, Any]] = []
    for watchlist_id in sorted(open_ids):
        try:
            hits.extend(screen(runtime, principal, watchlist_id, probe)["hits"])
        except (NotAMemberError, WatchlistClosedError, WatchlistNotFoundError):
            continue  # membership changed since we looked: nothing to screen there
    return sorted(hits, key=lambda h: -h["score"])
