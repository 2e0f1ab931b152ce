"""Readiness: models loaded, database reachable, indexes replayed."""

from __future__ import annotations

from typing import Any

from app.runtime import Runtime
from app.storage import ping


def readiness(runtime: Runtime | None) -> dict[str, Any]:
    """What `/readyz` reports; `status` is `ready` only when every check holds."""
    checks: dict[str, Any] = {"models": False, "database": False, "indexes": False}
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
    ready = bool(checks["models"] and checks["database"] and checks["indexes"])
    return {"status": "ready" if ready else "not_ready", **checks}
