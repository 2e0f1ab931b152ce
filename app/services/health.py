"""Readiness: models loaded, database reachable, indexes replayed, change feed followed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.runtime import Runtime
from app.services import indexing
from app.storage import ping
from index import NamespaceNotFoundError


def readiness(runtime: Runtime | None) -> dict[str, Any]:
    """What `/readyz` reports; `status` is `ready` only when every check holds."""
    checks: dict[str, Any] = {
        "models": False,
        "database": False,
        "indexes": False,
        "feed": False,
    }
    if runtime is not None:
        checks["models"] = runtime.pipeline is not None
        checks["model_id"] = runtime.model_id
        checks["database"] = ping(runtime.engine)
        checks["indexes"] = bool(runtime.ready)
        sizes = index_sizes(runtime)
        checks["index"] = {
            "orgs": sizes.orgs,
            "vectors": sizes.vectors,
            "vectors_at_start": runtime.health.vectors,
            "tampered_embeddings": len(runtime.health.tampered),
        }
        # With PostgreSQL other replicas write too: this one must be hearing of it.
        checks["feed"] = runtime.ready and (runtime.feed.listening or not runtime.feed.required)
        checks["position"] = _position(runtime) if checks["database"] else None
    ready = all(checks[k] for k in ("models", "database", "indexes", "feed"))
    return {"status": "ready" if ready else "not_ready", **checks}


def _position(runtime: Runtime) -> dict[str, Any]:
    """This replica's feed position against the database's: how many namespaces and changes
    it is behind right now, and whether it is listening."""
    return {
        "listening": runtime.feed.listening,
        "notifications": runtime.feed.notifications,
        **indexing.lag(runtime),
    }


@dataclass(frozen=True)
class IndexSizes:
    """What this replica's indexes hold right now (not what the start-up replay found)."""

    orgs: int
    vectors: int
    watchlists: int
    watchlist_vectors: int


def index_sizes(runtime: Runtime) -> IndexSizes:
    orgs = vectors = watchlists = watchlist_vectors = 0
    for namespace in runtime.indexes.namespaces():
        try:
            count = runtime.indexes.get(namespace).count
        except NamespaceNotFoundError:  # dropped since `namespaces()` listed it
            continue
        if namespace.startswith(indexing.WATCHLIST_PREFIX):
            watchlists, watchlist_vectors = watchlists + 1, watchlist_vectors + count
        else:
            orgs, vectors = orgs + 1, vectors + count
    return IndexSizes(orgs, vectors, watchlists, watchlist_vectors)
