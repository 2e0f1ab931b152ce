"""One place that turns domain errors into HTTP responses with one error body:

    {"error": {"code": "no_face", "message": "...", "request_id": "...", "details": {...}}}

Codes are stable; messages are for humans. Unexpected exceptions become a 500 with a generic
message (the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app import errors as domain
from app.api.deps import Caller
from index import IndexUnavailableError, ModelMismatchError, VectorIndexError
from models import errors as pipeline

log = logging.getLogger("wajah.api")

STATUS: list[tuple[type[Exception], int]] = [
    (domain.UnauthorizedError, 401),
    (domain.ForbiddenError, 403),
    (domain.RateLimitedError, 429),
    (domain.NotFoundError, 404),
    (domain.IdempotencyKeyReusedError, 422),
    (domain.ConflictError, 409),
    (domain.GoneError, 410),
    (domain.RequestTooLargeError, 413),
    (domain.InvalidRequestError, 422),
    (domain.NoUsableFrameError, 422),
    (domain.LivenessFailedError, 422),
    (domain.ServiceNotReadyError, 503),
    (pipeline.ImageTooLargeError, 413),
    (pipeline.ImageDimensionsError, 413),
    (pipeline.UnsupportedImageTypeError, 415),
    (pipeline.ImageError, 422),
    (pipeline.QualityError, 422),
    (ModelMismatchError, 409),
    # A remote index (Milvus) down or slow: nothing is lost, the client retries later.
    (IndexUnavailableError, 503),
    (VectorIndexError, 422),
]


HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """Every method some route serves at the request's path (RFC 9110 §10.2.1), asked of
    the router itself (routes of included routers too)."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


def status_for(error: Exception) -> int:
    for kind, status in STATUS:
        if isinstance(error, kind):
            return status
    return 500


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "-"))


def error_body(
    request: Request, code: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "request_id": request_id(request)}
    if details:
        body["details"] = details
    return {"error": body}


def _details(error: Exception) -> dict[str, Any] | None:
    if isinstance(error, domain.WajahError):
        return error.details or None
    report = getattr(error, "report", None)
    if report is not None and hasattr(report, "as_dict"):
        return {"quality": report.as_dict()}
    return None


def register_error_handlers(app: FastAPI) -> None:
    known = (domain.WajahError, pipeline.FacePipelineError, VectorIndexError)

    async def handle_known(request: Request, error: Exception) -> JSONResponse:
        status = status_for(error)
        code = getattr(error, "code", "error")
        if isinstance(error, ModelMismatchError):
            code = domain.ModelPackMismatchError.code
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 429:
            headers = {"Retry-After": str(getattr(error, "details", {})["retry_after_s"])}
        return JSONResponse(
            error_body(request, code, str(error), _details(error)), status, headers=headers
        )

    for kind in known:
        app.add_exception_handler(kind, handle_known)

    async def handle_validation(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        # FastAPI validates the body before the route runs, and routes check the key on
        # their worker thread (`Caller.run`): check it here first, so that a caller without a
        # valid key learns nothing about its request but 401 (or 403).
        caller: Caller | None = getattr(request.state, "caller", None)
        if caller is not None:
            try:
                await caller.principal()
            except (domain.UnauthorizedError, domain.ForbiddenError) as refused:
                return await handle_known(request, refused)
        # Echo where and what, never the offending input (it may be megabytes, or PII).
        problems = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in error.errors()
        ]
        return JSONResponse(
            error_body(
                request, "invalid_request", "the request is not valid", {"errors": problems}
            ),
            422,
        )

    app.add_exception_handler(RequestValidationError, handle_validation)

    async def handle_http(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        status, headers, message = error.status_code, error.headers, str(error.detail)
        if status == 400:
            # FastAPI's "error parsing the body": JSON that is not UTF-8 (`json_invalid` from
            # validation covers the rest). One answer for an unreadable body: 422.
            status, message = 422, "the body is not valid JSON (UTF-8)"
        if status == 405:
            # Starlette names only the first route that matched the path; list every one.
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        code = HTTP_CODES.get(status, f"http_{status}")
        return JSONResponse(error_body(request, code, message), status, headers=headers)

    app.add_exception_handler(StarletteHTTPException, handle_http)

    async def handle_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body(request, "internal_error", "internal error; quote the request_id"), 500
        )

    app.add_exception_handler(Exception, handle_unexpected)
