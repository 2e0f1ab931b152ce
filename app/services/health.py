"""Readiness: models loaded, database reachable, indexes replayed, change feed followed."""

from __future__ import annotations

from typing import Any

from app.runtime import Runtime
from app.services import indexing
from app.storage import ping


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
        checks["index"] = {
            "orgs": runtime.health.orgs,
            "vectors": runtime.health.vectors,
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
