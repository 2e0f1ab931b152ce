"""Liveness, readiness and security.txt."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="Alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Models loaded, database reachable, indexes replayed")
def readyz(request: Request) -> JSONResponse:
    runtime = getattr(request.app.state, "runtime", None)
    checks: dict[str, Any] = {"models": False, "database": False, "indexes": False}
    if runtime is not None:
        checks["models"] = runtime.pipeline is not None
        checks["model_id"] = runtime.model_id
        try:
            with runtime.read() as conn:
                conn.execute(sa.text("SELECT 1"))
            checks["database"] = True
        except sa.exc.SQLAlchemyError:
            checks["database"] = False
        checks["indexes"] = bool(runtime.ready)
        checks["index"] = {
            "orgs": runtime.health.orgs,
            "vectors": runtime.health.vectors,
            "tampered_embeddings": len(runtime.health.tampered),
        }
    ready = bool(checks["models"] and checks["database"] and checks["indexes"])
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", **checks}, 200 if ready else 503
    )


SECURITY_TXT = """Contact: mailto:security@wajah.dev
Expires: 2027-11-27T00:00:00.000Z
Preferred-Languages: en, id
Policy: https://github.com/wajah/wajah/blob/main/SECURITY.md
"""


@router.get("/.well-known/security.txt", response_class=PlainTextResponse, include_in_schema=False)
def security_txt() -> str:
    return SECURITY_TXT
