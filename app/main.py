"""The FastAPI application: `create_app(settings)` and its lifespan.

The lifespan starts the `Runtime` (database, keys, model pack, indexes replayed) once and
hangs it on `app.state.runtime`; nothing heavy happens at import time.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import re
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import metrics
from app.api.admission import Admission, RateLimit
from app.api.edge import SecurityHeadersMiddleware, add_offline_docs
from app.api.errors import register_error_handlers
from app.api.observe import InFlight, ObservedRequestsMiddleware
from app.api.routes import matching, ops, org, subjects, watchlists
from app.metrics import observe_stage
from app.runtime import Runtime
from app.services.idempotency import release_abandoned_reservations
from app.services.lifecycle import start_runtime, stop_runtime
from app.services.retention import run_retention
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


class RequestIdMiddleware:
    """Give every request an id (the client's `X-Request-ID` if sane) and echo it back.

    Plain ASGI rather than `@app.middleware("http")`: no extra task per request, and errors
    raised below it are not wrapped in exception groups.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if REQUEST_ID.fullmatch(incoming) else f"req_{secrets.token_hex(8)}"
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes` with 413 before anything parses them.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as
    it arrives, and when it passes the limit the 413 is sent from here and the application
    sees the client disconnect (so no route can turn it into another status).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, scope: Scope) -> JSONResponse:
        request_id = scope.get("state", {}).get("request_id", "-")
        return JSONResponse(
            {
                "error": {
                    "code": "request_too_large",
                    "message": f"the request body exceeds {self.max_bytes} bytes",
                    "request_id": request_id,
                }
            },
            413,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope)(scope, receive, send)
            return
        received = 0
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    await self._too_large(scope)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:  # the 413 is the answer; drop whatever the app says after it
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise


async def _purge_periodically(runtime: Runtime) -> None:
    """Retention: shred expired frames and sweep orphaned ones at start and then hourly, off
    the event loop (on one replica at a time)."""
    while True:
        try:
            done = await run_in_threadpool(run_retention, runtime)
            if done is not None and done[0]:
                log.info("retention: purged frames %s", done[0])
            if done is not None and done[1]:
                log.info("retention: deleted %d orphaned sealed frames", done[1])
        except Exception:  # keep serving; the next round retries
            log.exception("retention purge failed")
        await asyncio.sleep(RETENTION_INTERVAL_S)


RETENTION_INTERVAL_S = 3600


def max_body_bytes(settings: Settings) -> int:
    # Base64 inflates by 4/3; leave room for multipart boundaries and JSON fields.
    return settings.max_frames_per_request * settings.max_image_bytes * 4 // 3 + 64 * 1024


class InFlightMiddleware:
    """Count requests in flight for the inference pool, which runs a capture on every core
    only while its request is the only one (see `app.inference`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = scope["app"].state.runtime if scope["type"] == "http" else None
        if runtime is None:
            await self.app(scope, receive, send)
            return
        with runtime.inference.request():
            await self.app(scope, receive, send)


M_ARENA_MAX = -8  # glibc's mallopt parameter


def use_one_malloc_arena() -> None:
    """Make every thread allocate from glibc's main malloc arena.

    By default each thread that allocates gets an arena of its own, and glibc unmaps a
    thread arena's heap as soon as it empties: a capture's megabytes of image and tensor
    buffers were then faulted in afresh on every call (1,800 page faults, several
    milliseconds, per verify on the solo inference thread). The main arena keeps freed memory
    up to its trim threshold. Call it before the server starts threads; elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...)
        return
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt(M_ARENA_MAX, 1)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """The application. Pass `runtime` to share an already-started one (tests, tools)."""
    settings = settings or Settings()
    use_one_malloc_arena()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        app.state.runtime = runtime or await run_in_threadpool(start_runtime, settings)
        for pipeline in (app.state.runtime.inference.pipeline, app.state.runtime.inference.solo):
            if pipeline is not None:
                pipeline.observe_stage = observe_stage
        if owned:
            await run_in_threadpool(release_abandoned_reservations, app.state.runtime)
        purger = asyncio.create_task(_purge_periodically(app.state.runtime)) if owned else None
        try:
            yield
        finally:
            if purger is not None:
                purger.cancel()
            if owned:
                await run_in_threadpool(stop_runtime, app.state.runtime)

    app = FastAPI(
        title="wajah",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served by `add_offline_docs` from the service's own files, not a CDN.
        docs_url=None,
        redoc_url=None,
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
    app.state.admission = Admission(
        RateLimit(settings.rate_limit_per_second, settings.rate_limit_burst)
    )

    register_error_handlers(app)
    for module in (subjects, matching, watchlists, org, ops, metrics):
        app.include_router(module.router)
    add_offline_docs(app)
    # Added last = outermost: the request id exists before the body limit can refuse.
    app.add_middleware(InFlightMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes(settings))
    app.state.in_flight = InFlight()
    app.add_middleware(ObservedRequestsMiddleware, in_flight=app.state.in_flight)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    return app
