"""Liveness, readiness and security.txt."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from app.api.schemas import Health, HealthStatus, Readiness
from app.services import health

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Health, summary="Alive")
async def healthz() -> Health:
    """The process answers. Says nothing about models, database or indexes (see `/readyz`)."""
    return Health(status=HealthStatus.OK)


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "Not ready: a part is down or still starting (`status: not_ready`, "
            "the failing part `false`). Take the replica out of rotation; no error body.",
        }
    },
    summary="Models loaded, database reachable, indexes replayed",
)
def readyz(request: Request) -> JSONResponse:
    """Ready when the model pack is loaded, the database answers, the indexes have been
    replayed and the change feed runs; 503 with the same report otherwise."""
    report = health.readiness(getattr(request.app.state, "runtime", None))
    return JSONResponse(report, 200 if report["status"] == "ready" else 503)


@router.get("/.well-known/security.txt", response_class=PlainTextResponse, include_in_schema=False)
async def security_txt(request: Request) -> str:
    """RFC 9116. The contact is the deployment's (`WAJAH_SECURITY_CONTACT`); Expires is kept a
    year ahead so the file never goes stale on a long-running server."""
    contact = request.app.state.settings.security_contact
    expires = (datetime.now(UTC) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"Contact: {contact}\nExpires: {expires}\nPreferred-Languages: en, id\n"
