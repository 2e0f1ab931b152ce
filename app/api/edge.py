"""The edge: every ASGI middleware a request passes before and after its route, outermost
first.

1. `SecurityHeadersMiddleware`: `Strict-Transport-Security` (two years, subdomains, preload)
   on HTTPS (the connection's own TLS, or `X-Forwarded-Proto: https` from a trusted proxy,
   see `app.serving`); `X-Content-Type-Options: nosniff` on every response; `Cache-Control:
   no-store` on every `/v1` response (they carry PII, match decisions and, once, fresh API
   keys); `Wajah-TLS-Warning: tls1.2-deprecated` on every response of a TLS 1.2 connection.
2. `RequestIdMiddleware`: the request id (the client's `X-Request-ID` if sane), echoed back.
3. `ObservedRequestsMiddleware`: every request timed into the metrics and written as one
   access-log line (`app.logs` formats it): request id, method, route template, the path with
   subject ids pseudonymised, status, latency, and the org and key ids once the key was
   checked. A request no route matched logs no path (it could hold anything a client typed);
   bodies, headers and query strings are never logged. A request whose key was checked is
   also offered to the org's request log (`app.services.request_logs`: a bounded in-process
   queue a background thread writes in batches, so no database round trip on the request).
4. `BodyLimitMiddleware`: bodies over the limit refused with 413 before anything parses them.
5. `InFlightMiddleware`: requests in flight, for the inference pool's solo mode.

All plain ASGI rather than `@app.middleware("http")`: no extra task per request, and errors
raised below are not wrapped in exception groups.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.crypto.pseudonyms import Pseudonymizer
from app.metrics import HTTP_SECONDS
from app.services.request_logs import RequestLogBuffer
from app.settings import Settings
from app.storage.retention import RequestLogRow

HSTS = b"max-age=63072000; includeSubDomains; preload"
TLS_WARNING_HEADER = b"wajah-tls-warning"
TLS_12 = 0x0303
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def install_edge(app: FastAPI, settings: Settings) -> None:
    """Add the middleware above; added last is outermost."""
    app.add_middleware(InFlightMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes(settings))
    app.state.in_flight = InFlight()
    app.state.request_log = RequestLogBuffer()
    app.add_middleware(
        ObservedRequestsMiddleware,
        in_flight=app.state.in_flight,
        request_log=app.state.request_log,
    )
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)


class SecurityHeadersMiddleware:
    """Adds the headers above to the response start, nothing per body chunk."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added = [(b"x-content-type-options", b"nosniff")]
        if scope["path"].startswith("/v1/"):
            added.append((b"cache-control", b"no-store"))
        if scope.get("scheme") == "https":
            added.append((b"strict-transport-security", HSTS))
        tls = scope.get("extensions", {}).get("tls")
        if tls is not None and tls.get("tls_version") == TLS_12:
            added.append((TLS_WARNING_HEADER, b"tls1.2-deprecated"))
        replaced = {name for name, _ in added}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in replaced]
                message = {**message, "headers": kept + added}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RequestIdMiddleware:
    """Give every request an id (the client's `X-Request-ID` if sane) and echo it back."""

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


access_log = logging.getLogger("wajah.access")

# Path parameters that name a customer's subject; every other id in a path is one the
# service made (keys, watchlists, enrollments).
PSEUDONYMISED = frozenset({"subject_id"})


class InFlight:
    """Requests received and not yet answered (a gauge read when `/metrics` is scraped)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count


class ObservedRequestsMiddleware:
    def __init__(
        self, app: ASGIApp, in_flight: InFlight, request_log: RequestLogBuffer | None = None
    ) -> None:
        self.app = app
        self.in_flight = in_flight
        self.request_log = request_log
        self.pseudonym = Pseudonymizer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, arrived = time.perf_counter(), time.time()
        status = 500  # what the server sends if the app fails before answering

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.in_flight.count += 1
        try:
            await self.app(scope, receive, send_observed)
        finally:
            self.in_flight.count -= 1
            self._observe(scope, status, time.perf_counter() - started, arrived)

    def _observe(self, scope: Scope, status: int, seconds: float, arrived: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        HTTP_SECONDS.labels(scope["method"], template, str(status)).observe(seconds)
        state = scope.get("state", {})
        principal = state.get("principal")
        if principal is not None and self.request_log is not None:
            self._offer(state, principal, scope["method"], template, status, seconds, arrived)
        if not access_log.isEnabledFor(logging.INFO):
            return
        fields: dict[str, Any] = {
            "request_id": state.get("request_id"),
            "method": scope["method"],
            "route": template,
            "path": self._path(template, scope.get("path_params")) if route else None,
            "status": status,
            "latency_ms": round(seconds * 1000, 3),
            "org_id": getattr(principal, "org_id", None),
            "key_id": getattr(principal, "key_id", None),
        }
        access_log.info("%s %s %d", scope["method"], template, status, extra=fields)

    def _offer(
        self,
        state: dict[str, Any],
        principal: Any,
        method: str,
        template: str,
        status: int,
        seconds: float,
        arrived: float,
    ) -> None:
        if state.get("residency_refused") or self.request_log is None:
            return  # an org this region may not hold: nothing of it is written here
        self.request_log.offer(
            RequestLogRow(
                org_id=principal.org_id,
                occurred_at=datetime.fromtimestamp(arrived, UTC),
                request_id=str(state.get("request_id") or "-"),
                method=method,
                route=template,
                status=status,
                latency_ms=round(seconds * 1000, 3),
                key_id=principal.key_id,
            )
        )

    def _path(self, template: str, params: dict[str, Any] | None) -> str:
        path = template
        for name, value in (params or {}).items():
            shown = self.pseudonym(str(value)) if name in PSEUDONYMISED else str(value)
            path = path.replace("{" + name + "}", shown)
        return path


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
