"""Response headers every client gets, and the API docs served without a CDN.

* `Strict-Transport-Security` (two years, subdomains, preload) on HTTPS responses: the
  connection's own TLS, or `X-Forwarded-Proto: https` from a trusted proxy (`app.serving`).
* `X-Content-Type-Options: nosniff` on every response.
* `Cache-Control: no-store` on every `/v1` response: they carry PII, match decisions and,
  once, fresh API keys, none of which a cache may keep.
* `Wajah-TLS-Warning: tls1.2-deprecated` on every response of a TLS 1.2 connection: it is
  accepted, but clients should move to TLS 1.3.

Swagger UI and ReDoc load their JavaScript and CSS from `/docs/assets`, the files the
`fastapi-offline` wheel ships, so the docs work offline and nothing is fetched from a CDN.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HSTS = b"max-age=63072000; includeSubDomains; preload"
TLS_WARNING_HEADER = b"wajah-tls-warning"
TLS_12 = 0x0303
ASSETS = "/docs/assets"


class SecurityHeadersMiddleware:
    """Plain ASGI: adds the headers above to the response start, nothing per body chunk."""

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


def add_offline_docs(app: FastAPI) -> None:
    """`/docs` (Swagger UI) and `/redoc` with their assets served from this process."""
    app.mount(ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} — API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} — API",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
