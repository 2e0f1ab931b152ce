"""Every request timed into the metrics and written as one access-log line.

The line (`app.logs` formats it) has the request id, method, route template, the path with
subject ids pseudonymised, status, latency in milliseconds, and the org and key ids once the
key was checked. A request no route matched logs no path at all (it could hold anything a
client typed). Bodies, headers and query strings are never logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.crypto.pseudonyms import Pseudonymizer
from app.metrics import HTTP_SECONDS

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
    def __init__(self, app: ASGIApp, in_flight: InFlight) -> None:
        self.app = app
        self.in_flight = in_flight
        self.pseudonym = Pseudonymizer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
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
            self._observe(scope, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        HTTP_SECONDS.labels(scope["method"], template, str(status)).observe(seconds)
        if not access_log.isEnabledFor(logging.INFO):
            return
        state = scope.get("state", {})
        principal = state.get("principal")
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

    def _path(self, template: str, params: dict[str, Any] | None) -> str:
        path = template
        for name, value in (params or {}).items():
            shown = self.pseudonym(str(value)) if name in PSEUDONYMISED else str(value)
            path = path.replace("{" + name + "}", shown)
        return path
