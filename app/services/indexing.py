"""Keeping the vector indexes in step with the database, which is the truth.

Every index namespace is a cache: an org's own gallery (namespace = the org id) or a shared
watchlist (`watchlist:<id>`, holding only the entries of contributors eligible right now).
This module is the one place that fills them and changes them:

* at start, `replay_all` loads each org's snapshot and replays newer changes from the
  database (or rebuilds it), checking every vector's hashed reference on the way, and
  rebuilds every watchlist namespace from its rows and memberships;
* a service that commits a change applies it here, inside `changing(namespace)`, so that a
  snapshot (taken under the same lock) never claims a position whose change is committed but
  not yet in the index;
* at shutdown, `snapshot_all` writes each org's snapshot with the position it includes.

Watchlist namespaces depend on memberships and settings, not only on their rows: they are
always rebuilt from the database, never snapshotted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray

from app.runtime import IndexHealth, Runtime
from app.services.sharing import eligible_orgs
from app.storage import orgs, read_transaction, subjects, watchlists
from index import NamespaceIndex, RowsSince, VectorIndexError

log = logging.getLogger("wajah")

# Index namespaces of shared watchlists; every other namespace is an org id.
WATCHLIST_PREFIX = "watchlist:"


def watchlist_namespace(watchlist_id: str) -> str:
    return f"{WATCHLIST_PREFIX}{watchlist_id}"


@contextmanager
def changing(runtime: Runtime, namespace: str) -> Iterator[None]:
    """Serialises "commit a change, then apply it to the index" per namespace."""
    # dict.setdefault is atomic: two threads asking for a new namespace get the same lock.
    with runtime.namespace_locks.setdefault(namespace, threading.Lock()):
        yield


def org_index(runtime: Runtime, org_id: str) -> NamespaceIndex:
    return runtime.indexes.get_or_create(
        org_id, dimension=runtime.pipeline.dimension, model_id=runtime.model_id
    )


def watchlist_index(runtime: Runtime, watchlist_id: str) -> NamespaceIndex:
    return runtime.indexes.get_or_create(
        watchlist_namespace(watchlist_id),
        dimension=runtime.pipeline.dimension,
        model_id=runtime.model_id,
    )


def intact_vector(runtime: Runtime, org_id: str, row: Any) -> NDArray[np.float32] | None:
    """A stored vector if its hashed reference verifies under `org_id`'s key.

    `row` needs `id`, `vector`, `hashed_ref` and `model_id`. None means erased or edited
    behind the service's back: such a row never takes part in a match.
    """
    if row.vector is None or row.hashed_ref is None:
        return None
    vector: NDArray[np.float32] = np.frombuffer(row.vector, dtype="<f4")
    ok = runtime.hasher.verify(
        bytes(row.hashed_ref),
        org_id=org_id,
        model_id=row.model_id,
        enrollment_id=row.id,
        vector=vector,
    )
    return vector if ok else None


# --- an org's own index -----------------------------------------------------------------------


def org_changes(runtime: Runtime, org_id: str) -> RowsSince:
    """The `rows_since` of an org index: verified adds, and removals."""

    def rows_since(position: int) -> Iterator[tuple[int, Any]]:
        with read_transaction(runtime.engine) as conn:
            for change in subjects.enrollment_changes_since(conn, org_id, position):
                yield change.vector_id, _usable_vector(runtime, org_id, change)

    return rows_since


def _usable_vector(
    runtime: Runtime, org_id: str, change: subjects.EnrollmentChange
) -> NDArray[np.float32] | None:
    """The vector an index should hold for this change; None removes it."""
    if change.vector is None:
        return None
    if change.model_id != runtime.model_id:
        runtime.health.other_model += 1
        return None
    vector = intact_vector(runtime, org_id, change)
    if vector is None:
        # Tampered on disk: keep it out of the index, say so loudly.
        log.error("enrollment %s failed its hashed-reference check", change.id)
        runtime.health.tampered.append(change.id)
    return vector


def add_committed(runtime: Runtime, org_id: str, ids: Sequence[int], vectors: Any) -> None:
    """Apply enrollments just committed to the org index (caller holds `changing`).

    The database is the truth and the index a cache: if the cache disagrees (it never
    should), it is rebuilt from the database instead of failing a committed request.
    """
    try:
        org_index(runtime, org_id).add(list(ids), vectors, model_id=runtime.model_id)
    except VectorIndexError:
        log.exception("index %s disagreed with the database; rebuilding it", org_id)
        org_index(runtime, org_id).load_or_rebuild(org_changes(runtime, org_id))


def remove_committed(runtime: Runtime, org_id: str, vector_ids: Sequence[int]) -> None:
    """Take retired or erased enrollments out of the org index (caller holds `changing`)."""
    org_index(runtime, org_id).remove(list(vector_ids))


# --- start and stop ---------------------------------------------------------------------------


def replay_all(runtime: Runtime) -> IndexHealth:
    """Load each org's snapshot and replay newer rows (or rebuild from the database), then
    rebuild every watchlist namespace; records and returns what it found."""
    with read_transaction(runtime.engine) as conn:
        org_ids = orgs.org_ids(conn)
        watchlist_ids = watchlists.all_ids(conn)
    health = IndexHealth(orgs=len(org_ids))
    runtime.health = health
    for org_id in org_ids:
        with changing(runtime, org_id):
            report = org_index(runtime, org_id).load_or_rebuild(org_changes(runtime, org_id))
        health.reports[org_id] = report
        health.vectors += report.count
        log.info(
            "index %s: %s, %d vectors (%d replayed) in %.2fs",
            org_id,
            report.source,
            report.count,
            report.replayed,
            report.seconds,
        )
    for watchlist_id in watchlist_ids:
        rebuild_watchlist(runtime, watchlist_id)
    return health


def snapshot_all(runtime: Runtime) -> None:
    """Write each org index's snapshot at the database position it includes."""
    for namespace in runtime.indexes.namespaces():
        if namespace.startswith(WATCHLIST_PREFIX):
            continue
        with changing(runtime, namespace):
            with read_transaction(runtime.engine) as conn:
                position = subjects.current_seq(conn, namespace)
            runtime.indexes.get(namespace).snapshot(position)


# --- watchlist namespaces ---------------------------------------------------------------------


def _intact_entry(runtime: Runtime, row: Any) -> NDArray[np.float32] | None:
    """The entry's vector if it is of the served model and its reference (under the
    contributor's key) verifies."""
    if row.model_id != runtime.model_id:
        return None
    return intact_vector(runtime, row.contributor_org_id, row)


def rebuild_watchlist(runtime: Runtime, watchlist_id: str) -> None:
    """Rebuild a watchlist's namespace from the database (eligible contributors only)."""
    with read_transaction(runtime.engine) as conn:
        allowed = eligible_orgs(conn, watchlist_id)
        rows = watchlists.active_entries(conn, watchlist_id)

    def rows_since(_position: int) -> Iterator[tuple[int, Any]]:
        for r in rows:
            vector = _intact_entry(runtime, r) if r.contributor_org_id in allowed else None
            yield int(r.vector_id), vector

    with changing(runtime, watchlist_namespace(watchlist_id)):
        watchlist_index(runtime, watchlist_id).load_or_rebuild(rows_since)


def sync_contributor(runtime: Runtime, watchlist_id: str, org_id: str) -> None:
    """Put `org_id`'s entries in the watchlist's namespace if it is eligible, else take them
    out (after a membership or a setting changed)."""
    # One critical section from reading eligibility to changing the index, so a concurrent
    # change (a leave, a contribution) cannot interleave and leave a stale decision applied.
    with changing(runtime, watchlist_namespace(watchlist_id)):
        with read_transaction(runtime.engine) as conn:
            eligible = org_id in eligible_orgs(conn, watchlist_id)
            rows = watchlists.active_entries(conn, watchlist_id, org_id)
        index = watchlist_index(runtime, watchlist_id)
        if not eligible:
            index.remove([r.vector_id for r in rows])
            return
        fresh = [
            (r.vector_id, v)
            for r in rows
            if not index.contains(r.vector_id)
            for v in [_intact_entry(runtime, r)]
            if v is not None
        ]
        if fresh:
            index.add(
                [i for i, _ in fresh], np.stack([v for _, v in fresh]), model_id=runtime.model_id
            )


def sync_org_watchlists(runtime: Runtime, org_id: str) -> None:
    """After an org's sharing or residency setting changed: re-sync every watchlist it has
    a membership in, so its entries leave (or rejoin) screening at once."""
    with read_transaction(runtime.engine) as conn:
        ids = watchlists.watchlists_of(conn, org_id)
    for watchlist_id in ids:
        sync_contributor(runtime, watchlist_id, org_id)


def add_entries(
    runtime: Runtime, watchlist_id: str, contributor: str, ids: Sequence[int], vectors: Any
) -> None:
    """Apply committed entries, if their contributor is still eligible (a leave may have
    landed since the contribution was checked); caller holds `changing`."""
    with read_transaction(runtime.engine) as conn:
        still_eligible = contributor in eligible_orgs(conn, watchlist_id)
    if still_eligible:
        watchlist_index(runtime, watchlist_id).add(list(ids), vectors, model_id=runtime.model_id)


def remove_entries(runtime: Runtime, entries: Sequence[tuple[str, int]]) -> None:
    """Take withdrawn `(watchlist id, vector id)` entries out of their namespaces."""
    for watchlist_id, vector_id in entries:
        with changing(runtime, watchlist_namespace(watchlist_id)):
            watchlist_index(runtime, watchlist_id).remove([vector_id])


def drop_watchlist(runtime: Runtime, watchlist_id: str) -> None:
    """A closed watchlist's namespace goes (nobody can screen it any more)."""
    namespace = watchlist_namespace(watchlist_id)
    with changing(runtime, namespace):
        if namespace in runtime.indexes:
            runtime.indexes.drop(namespace)
