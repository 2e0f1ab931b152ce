"""Liveness, readiness and security.txt."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="Alive")
async def healthz() -> dict[str, str]:
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


@router.get("/.well-known/security.txt", response_class=PlainTextResponse, include_in_schema=False)
async def security_txt(request: Request) -> str:
    """RFC 9116. The contact is the deployment's (`WAJAH_SECURITY_CONTACT`); Expires is kept a
    year ahead so the file never goes stale on a long-running server."""
    contact = request.app.state.settings.security_contact
    expires = (datetime.now(UTC) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"Contact: {contact}\nExpires: {expires}\nPreferred-Languages: en, id\n"
