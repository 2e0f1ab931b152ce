"""The FastAPI application: `create_app(settings)` and its lifespan.

The lifespan starts the `Runtime` (database, keys, model pack, indexes replayed) once and
hangs it on `app.state.runtime`; nothing heavy happens at import time.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from app.api import metrics
from app.api.admission import Admission, RateLimit
from app.api.contract import install_openapi
from app.api.docs import add_offline_docs
from app.api.edge import install_edge
from app.api.errors import register_error_handlers
from app.api.routes import (
    compare,
    liveness,
    matching,
    ops,
    org,
    subjects,
    watchlists,
    webhook_deliveries,
    webhooks,
)
from app.metrics import observe_stage
from app.runtime import Runtime
from app.services.idempotency import release_abandoned_reservations
from app.services.lifecycle import start_runtime, stop_runtime
from app.services.request_logs import RequestLogWriter
from app.services.retention import run_retention
from app.settings import Settings

log = logging.getLogger("wajah")

DESCRIPTION = """
Face-embedding match service for KYC backends.

* **Enroll** a capture bundle for a subject, **verify** (1:1) or **search** (1:N) later
  captures. Each organisation has its own index: nobody is ever matched across orgs.
* Frames are sealed with AES-256-GCM under per-org keys and **never returned**.
* Authenticate with `Authorization: Bearer wjh_live_<id>_<secret>`; another org's ids are 404.
* Every error has one body: `{"error": {"code", "message", "request_id"}}` with a stable code.
"""


async def _purge_periodically(runtime: Runtime) -> None:
    """Retention: every data class swept at start and then hourly, off the event loop (on
    one replica at a time; `app.services.retention`)."""
    while True:
        try:
            done = await run_in_threadpool(run_retention, runtime)
            if done is not None and any(done.totals().values()):
                log.info("retention: purged %s", done.totals())
            if done is not None and done.orphaned_frames:
                log.info("retention: deleted %d orphaned sealed frames", done.orphaned_frames)
        except Exception:  # keep serving; the next round retries
            log.exception("retention purge failed")
        await asyncio.sleep(RETENTION_INTERVAL_S)


RETENTION_INTERVAL_S = 3600


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
        request_log = RequestLogWriter(app.state.runtime, app.state.request_log)
        request_log.start()
        try:
            yield
        finally:
            if purger is not None:
                purger.cancel()
            await run_in_threadpool(request_log.stop)
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
        # Operation ids are the route functions' names (`enroll`, `list_subjects`): what a
        # generated client calls its methods.
        generate_unique_id_function=lambda route: route.name,
        openapi_tags=[
            {"name": "subjects", "description": "Enroll, read, list, retire and erase."},
            {"name": "matching", "description": "Verify (1:1) and search (1:N)."},
            {
                "name": "onboarding",
                "description": "Compare a selfie with an ID document; sealed source documents.",
            },
            {"name": "watchlists", "description": "Shared watchlists with bilateral opt-in."},
            {"name": "org", "description": "API keys, settings and audit log (admin)."},
            {"name": "webhooks", "description": "Signed event deliveries to your endpoints."},
            {"name": "liveness", "description": "Active liveness: head-movement challenges."},
            {"name": "ops", "description": "Health and readiness."},
        ],
    )
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.admission = Admission(
        RateLimit(settings.rate_limit_per_second, settings.rate_limit_burst)
    )

    register_error_handlers(app)
    for module in (
        subjects,
        matching,
        compare,
        liveness,
        watchlists,
        org,
        webhooks,
        webhook_deliveries,
        ops,
        metrics,
    ):
        app.include_router(module.router)
    add_offline_docs(app)
    install_openapi(app)
    install_edge(app, settings)
    return app
