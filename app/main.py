"""The FastAPI application: `create_app(settings)` and its lifespan.

The lifespan builds the `Runtime` (database, keys, model pack, indexes) once and hangs it on
`app.state.runtime`; nothing heavy happens at import time.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import register_error_handlers
from app.api.idempotency import release_abandoned_reservations
from app.api.routes import matching, ops, org, subjects, watchlists
from app.runtime import Runtime
from app.services.retention import purge_expired_frames
from app.settings import Settings

log = logging.getLogger("wajah")

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

DESCRIPTION = """
Face-embedding match service for KYC backends.

* **Enroll** a capture bundle for a subject, **verify** (1:1) or **search** (1:N) later
  captures. Each organisation has its own index: nobody is ever matched across orgs.
* Frames are sealed with AES-256-GCM under per-org keys and **never returned**.
* Authenticate with `Authorization: Bearer wjh_live_<id>_<secret>`; another org's ids are 404.
* Every error has one body: `{"error": {"code", "message", "request_id"}}` with a stable code.
"""


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes` with 413 before anything parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_large = JSONResponse(
            {
                "error": {
                    "code": "request_too_large",
                    "message": f"the request body exceeds {self.max_bytes} bytes",
                    "request_id": "-",
                }
            },
            413,
        )
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await too_large(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLargeError:
            await too_large(scope, receive, send)


class BodyTooLargeError(Exception):
    pass


async def _purge_periodically(runtime: Runtime) -> None:
    """Retention: shred expired frames at start and then hourly, off the event loop."""
    while True:
        try:
            purged = await run_in_threadpool(purge_expired_frames, runtime)
            if purged:
                log.info("retention: purged frames %s", purged)
        except Exception:  # keep serving; the next round retries
            log.exception("retention purge failed")
        await asyncio.sleep(RETENTION_INTERVAL_S)


RETENTION_INTERVAL_S = 3600


def max_body_bytes(settings: Settings) -> int:
    # Base64 inflates by 4/3; leave room for multipart boundaries and JSON fields.
    return settings.max_frames_per_request * settings.max_image_bytes * 4 // 3 + 64 * 1024


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """The application. Pass `runtime` to share an already-started one (tests, tools)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        app.state.runtime = runtime or await run_in_threadpool(Runtime.start, settings)
        if owned:
            await run_in_threadpool(release_abandoned_reservations, app.state.runtime)
        purger = asyncio.create_task(_purge_periodically(app.state.runtime)) if owned else None
        try:
            yield
        finally:
            if purger is not None:
                purger.cancel()
            if owned:
                await run_in_threadpool(app.state.runtime.close)

    app = FastAPI(
        title="wajah",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "subjects", "description": "Enroll, read, list, retire and erase."},
            {"name": "matching", "description": "Verify (1:1) and search (1:N)."},
            {"name": "watchlists", "description": "Shared watchlists with bilateral opt-in."},
            {"name": "org", "description": "API keys, settings and audit log (admin)."},
            {"name": "ops", "description": "Health and readiness."},
        ],
    )
    app.state.settings = settings
    app.state.runtime = runtime

    @app.middleware("http")
    async def request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        incoming = request.headers.get("X-Request-ID", "")
        request.state.request_id = (
            incoming if REQUEST_ID.fullmatch(incoming) else f"req_{secrets.token_hex(8)}"
        )
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        return response

    register_error_handlers(app)
    for module in (subjects, matching, watchlists, org, ops):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes(settings))
    return app
