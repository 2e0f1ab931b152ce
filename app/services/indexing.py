"""Keeping the vector indexes in step with the database, which is the truth.

Every index namespace is a cache: an org's own gallery (namespace = the org id) or a shared
watchlist (`watchlist:<id>`, holding only the entries of contributors eligible right now).
Each has a position in the database (`app.storage.feed`): an org's enrollment seq, a
watchlist's change seq. This replica remembers, per namespace, the position its copy
includes (`Runtime.positions`), and this module is the one place that moves it:

* at start, `replay_all` loads each org's snapshot and replays newer changes from the
  database (or rebuilds it), checking every vector's hashed reference on the way, and
  rebuilds every watchlist namespace from its rows and memberships;
* `catch_up_org` / `refresh_watchlist` apply what is newer in the database, whoever wrote
  it: this replica after its own commit, or the feed follower when another replica's
  notification arrives (`app.services.feed`);
* `current_org_index` / `current_watchlist_index` are what searches use: they first compare
  the namespace's position in the database with this replica's and catch up, so a search
  reflects every change committed before it started (read-your-writes across replicas), or
  fails with `IndexNotCurrentError` (503) when it cannot catch up in time;
* at shutdown, `snapshot_all` writes each org's snapshot with the position it includes.

Watchlist namespaces depend on memberships and settings, not only on their rows: they are
rebuilt from the database whenever their position moves, never snapshotted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray

from app.errors import IndexNotCurrentError
from app.runtime import IndexHealth, Runtime
from app.services.sharing import eligible_orgs
from app.storage import feed, orgs, read_transaction, subjects, watchlists
from index import LoadReport, NamespaceIndex, RowsSince

log = logging.getLogger("wajah")

# Index namespaces of shared watchlists; every other namespace is an org id.
WATCHLIST_PREFIX = "watchlist:"


def watchlist_namespace(watchlist_id: str) -> str:
    return f"{WATCHLIST_PREFIX}{watchlist_id}"


@contextmanager
def changing(runtime: Runtime, namespace: str) -> Iterator[None]:
    """Serialises changes to one namespace's copy: "commit, then apply" by this replica's
    writers, catch-ups and snapshots. Reentrant, so a writer may catch up inside it.

    Waits at most `freshness_timeout_s`; past it the caller gets `IndexNotCurrentError`.
    """
    # dict.setdefault is atomic: two threads asking for a new namespace get the same lock.
    lock = runtime.namespace_locks.setdefault(namespace, threading.RLock())
    if not lock.acquire(timeout=runtime.settings.freshness_timeout_s):
        raise IndexNotCurrentError(
            "this replica's index is busy catching up; retry shortly", namespace=namespace
        )
    try:
        yield
    finally:
        lock.release()


def org_index(runtime: Runtime, org_id: str) -> NamespaceIndex:
    """The org's index as this replica holds it (see `current_org_index` for searches)."""
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


def current_org_index(runtime: Runtime, org_id: str) -> NamespaceIndex:
    """The org index with every enrollment change committed before this call applied."""
    with read_transaction(runtime.engine) as conn:
        committed = subjects.current_seq(conn, org_id)
    if runtime.positions.get(org_id, 0) < committed:
        catch_up_org(runtime, org_id)
    return org_index(runtime, org_id)


def catch_up_org(runtime: Runtime, org_id: str) -> int:
    """Apply the org's enrollment changes newer than this replica's position (adds,
    retirements, erasures; each vector's hashed reference checked); returns how many."""
    with changing(runtime, org_id):
        start = runtime.positions.get(org_id, 0)
        seen = [start]
        rows = list(_verified(runtime, org_id, start, seen))
        applied = org_index(runtime, org_id).apply(rows) if rows else 0
        # Seqs commit in order: having seen seq P, every change at or before P is here.
        runtime.positions[org_id] = max(seen)
    return applied


def org_changes(runtime: Runtime, org_id: str, seen: list[int]) -> RowsSince:
    """The `rows_since` of an org index: verified adds, and removals; records the seqs it
    yields in `seen`."""

    def rows_since(position: int) -> Iterator[tuple[int, Any]]:
        seen.append(position)
        yield from _verified(runtime, org_id, position, seen)

    return rows_since


def _verified(
    runtime: Runtime, org_id: str, position: int, seen: list[int]
) -> Iterator[tuple[int, NDArray[np.float32] | None]]:
    """Index rows of the org's changes after `position`, in seq order."""
    with read_transaction(runtime.engine) as conn:
        for change in subjects.enrollment_changes_since(conn, org_id, position):
            seen.append(change.seq)
            yield change.vector_id, _usable_vector(runtime, org_id, change)


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
            report = _load_org(runtime, org_id)
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
        refresh_watchlist(runtime, watchlist_id)
    return health


def _load_org(runtime: Runtime, org_id: str) -> LoadReport:
    """The org's snapshot plus newer changes, or a rebuild; sets this replica's position."""
    with read_transaction(runtime.engine) as conn:
        committed = subjects.current_seq(conn, org_id)
    seen: list[int] = []
    report = org_index(runtime, org_id).load_or_rebuild(org_changes(runtime, org_id, seen))
    if report.position > committed:
        # A snapshot from the database's future: it was restored from a backup since. Only
        # a rebuild can drop what the snapshot holds and the database no longer does.
        log.warning("index %s: snapshot ahead of the database (a restore?); rebuilding", org_id)
        runtime.indexes.drop(org_id)
        seen = []
        report = org_index(runtime, org_id).load_or_rebuild(org_changes(runtime, org_id, seen))
    runtime.positions[org_id] = max(seen, default=report.position)
    return report


def snapshot_all(runtime: Runtime) -> None:
    """Write each org index's snapshot at the position this replica has applied."""
    for namespace in runtime.indexes.namespaces():
        if namespace.startswith(WATCHLIST_PREFIX):
            continue
        with changing(runtime, namespace):
            runtime.indexes.get(namespace).snapshot(runtime.positions.get(namespace, 0))


def catch_up_all(runtime: Runtime) -> int:
    """Bring every namespace this replica is behind on up to the database's position (after
    the feed follower reconnects: notifications may have been missed); returns how many."""
    with read_transaction(runtime.engine) as conn:
        org_positions = feed.org_positions(conn)
        watchlist_positions = feed.watchlist_positions(conn)
    behind = [o for o, p in org_positions.items() if runtime.positions.get(o, 0) < p]
    for org_id in behind:
        catch_up_org(runtime, org_id)
    stale = [
        w
        for w, p in watchlist_positions.items()
        if runtime.positions.get(watchlist_namespace(w), -1) < p
    ]
    for watchlist_id in stale:
        refresh_watchlist(runtime, watchlist_id)
    return len(behind) + len(stale)


def lag(runtime: Runtime) -> dict[str, int]:
    """How far this replica's namespaces are behind the database right now."""
    with read_transaction(runtime.engine) as conn:
        positions = feed.org_positions(conn)
        positions.update(
            {watchlist_namespace(w): p for w, p in feed.watchlist_positions(conn).items()}
        )
    gaps = {n: p - runtime.positions.get(n, 0) for n, p in positions.items()}
    behind = {n: g for n, g in gaps.items() if g > 0}
    return {
        "namespaces": len(positions),
        "behind": len(behind),
        "changes_behind": sum(behind.values()),
    }


# --- `wajah index rebuild` --------------------------------------------------------------------


def org_ids_and_positions(runtime: Runtime) -> dict[str, int]:
    """Every org and its enrollment position in the database (a rebuild's plan)."""
    with read_transaction(runtime.engine) as conn:
        positions = feed.org_positions(conn)
        return {org_id: positions.get(org_id, 0) for org_id in orgs.org_ids(conn)}


def watchlist_ids(runtime: Runtime) -> list[str]:
    with read_transaction(runtime.engine) as conn:
        return watchlists.all_ids(conn)


def rebuild_org(
    runtime: Runtime, org_id: str, on_change: Callable[[int], None] | None = None
) -> LoadReport:
    """Refill the org's index from the database alone, whatever it held: every enrollment
    change from the beginning, each hashed reference checked as at start; what the index
    holds that the database does not is removed. Records the position it reached.

    A remote index forgets its recorded position and is rebuilt in place, so other
    replicas keep searching it meanwhile; the embedded index is dropped and refilled.
    `on_change(seq)` is called as the database's changes stream by.
    """
    with changing(runtime, org_id):
        index = org_index(runtime, org_id)
        forget = getattr(index, "forget_position", None)
        if forget is not None:
            forget()
        else:
            runtime.indexes.drop(org_id)
            index = org_index(runtime, org_id)
        seen: list[int] = []
        changes = org_changes(runtime, org_id, seen)

        def counted(position: int) -> Iterator[tuple[int, Any]]:
            for row in changes(position):
                if on_change is not None:
                    on_change(seen[-1])
                yield row

        report = index.load_or_rebuild(counted)
        runtime.positions[org_id] = max(seen, default=report.position)
        if forget is not None or runtime.serving:  # a CLI's embedded index has no file
            index.snapshot(runtime.positions[org_id])
    return report


# --- watchlist namespaces ---------------------------------------------------------------------


def current_watchlist_index(runtime: Runtime, watchlist_id: str) -> NamespaceIndex:
    """The watchlist's namespace with every change committed before this call applied."""
    with read_transaction(runtime.engine) as conn:
        committed = feed.watchlist_position(conn, watchlist_id)
    if runtime.positions.get(watchlist_namespace(watchlist_id), -1) < committed:
        refresh_watchlist(runtime, watchlist_id)
    return watchlist_index(runtime, watchlist_id)


def _intact_entry(runtime: Runtime, row: Any) -> NDArray[np.float32] | None:
    """The entry's vector if it is of the served model and its reference (under the
    contributor's key) verifies."""
    if row.model_id != runtime.model_id:
        return None
    return intact_vector(runtime, row.contributor_org_id, row)


def refresh_watchlist(runtime: Runtime, watchlist_id: str) -> None:
    """Rebuild a watchlist's namespace from the database (eligible contributors' active
    entries only), at the watchlist's current position."""
    namespace = watchlist_namespace(watchlist_id)
    with changing(runtime, namespace):
        with read_transaction(runtime.engine) as conn:
            # Read first: what follows is at least as new, and rebuilding is idempotent.
            position = feed.watchlist_position(conn, watchlist_id)
            allowed = eligible_orgs(conn, watchlist_id)
            rows = watchlists.active_entries(conn, watchlist_id)

        def rows_since(_position: int) -> Iterator[tuple[int, Any]]:
            for r in rows:
                vector = _intact_entry(runtime, r) if r.contributor_org_id in allowed else None
                yield int(r.vector_id), vector

        watchlist_index(runtime, watchlist_id).load_or_rebuild(rows_since)
        runtime.positions[namespace] = position
