"""The API contract: what the OpenAPI document promises beyond what FastAPI derives from the
route signatures, and the few request rules every route shares.

* `errors(...)` documents every error status an operation can answer, with the codes each
  may carry (the body is always `ErrorBody`).
* `JsonBodyRoute` answers 415 `unsupported_media_type` to a body that is not JSON, on every
  route whose body FastAPI reads, before the body is parsed.
* `install_openapi(app)` builds the document once per app: the enroll bodies (JSON and
  multipart) as named components, and the bounds that come from the deployment rather than
  the code: `frames` holds 1..`WAJAH_MAX_FRAMES_PER_REQUEST` items, and the org threshold
  lies within the served model pack's safe range. A document may hold no `$defs`: generated
  clients cannot resolve them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Header, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from app.api.schemas import CompareForm, CompareJson, EnrollForm, EnrollJson, ErrorBody
from app.errors import InvalidRequestError, TooManyFramesError
from app.services.idempotency import MAX_KEY_LENGTH
from app.services.pages import CURSOR_PATTERN

BodyModel = TypeVar("BodyModel", bound=BaseModel)

# --- errors ---------------------------------------------------------------------------------

_MEANING = {
    400: "The request cannot be read.",
    401: "Missing or invalid API key.",
    403: "The key lacks the scope, or the org may not do this.",
    404: "No such resource for this org (another org's ids are 404 too).",
    409: "The resource's state forbids it.",
    410: "It existed and was erased for good.",
    413: "The request or an image in it is too large.",
    415: "Unsupported media type.",
    422: "Invalid input; `error.code` says which, `error.details` where.",
    429: "The API key used up its request rate; retry after `Retry-After` seconds.",
    503: "Not ready or an index is not current; nothing changed, retry shortly.",
}
# What every authenticated operation can answer: no or a bad key, the key's rate, a replica
# that is starting (or cannot bring an index up to date).
_AUTHENTICATED: dict[int, tuple[str, ...]] = {
    401: ("unauthorized",),
    403: ("forbidden", "residency_mismatch"),
    429: ("rate_limited",),
    503: ("not_ready",),
}
# ... and one with a body: too large for the edge, not JSON, not valid.
_WITH_BODY: dict[int, tuple[str, ...]] = {
    413: ("request_too_large",),
    415: ("unsupported_media_type",),
    422: ("invalid_request",),
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    429: {
        "Retry-After": {
            "description": "Seconds until the key's bucket holds a request again.",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}


Codes = Mapping[int, Sequence[str]]

# A probe or frame: an image to decode and gate, or a vector to check.
IMAGE: Codes = {
    413: ("image_too_large", "image_dimensions_too_large"),
    415: ("unsupported_image_type",),
    422: (
        "invalid_image",
        "empty_image",
        "corrupt_image",
        "quality_rejected",
        "no_face",
        "multiple_faces",
        "face_too_small",
        "low_detector_score",
        "blurry_face",
        "extreme_pose",
    ),
}
PROBE: Codes = {
    **IMAGE,
    409: ("model_pack_mismatch",),
    422: (*IMAGE[422], "invalid_probe", "dimension_mismatch", "invalid_vector"),
}
# Reads of an index: this replica could not catch up in time, or Milvus is down.
INDEX: Codes = {503: ("index_not_current", "index_unavailable")}


def errors(
    *codes: Codes,
    body: bool = False,
    params: bool = False,
    authenticated: bool = True,
) -> dict[int | str, dict[str, Any]]:
    """The `responses` of an operation: the shared statuses (authenticated, with a `body`,
    with validated `params`) plus `codes`, status by status, each listing its codes."""
    merged: dict[int, list[str]] = {}
    parts: list[Codes] = []
    if authenticated:
        parts.append(_AUTHENTICATED)
    if body:
        parts.append(_WITH_BODY)
    if params:
        parts.append({422: ("invalid_request",)})
    parts.extend(codes)
    for part in parts:
        for status, listed in part.items():
            merged.setdefault(status, [])
            merged[status] += [c for c in listed if c not in merged[status]]
    return {status: _response(status, merged[status]) for status in sorted(merged)}


def _response(status: int, codes: list[str]) -> dict[str, Any]:
    listed = ", ".join(f"`{c}`" for c in codes)
    response: dict[str, Any] = {
        "model": ErrorBody,
        "description": f"{_MEANING.get(status, 'Error.')} Codes: {listed}.",
        "content": {
            "application/json": {
                "examples": {
                    code: {
                        "summary": code,
                        "value": {
                            "error": {
                                "code": code,
                                "message": "what went wrong, for a human",
                                "request_id": "req_5f0c9a1e2b3d4c6f",
                            }
                        },
                    }
                    for code in codes
                }
            }
        },
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


# --- Idempotency-Key ------------------------------------------------------------------------

# Printable ASCII, no space at either end (HTTP strips them, so the server would see another
# key than the client sent).
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Retry-safe: a retry with the same key and the same request gets the "
        "first answer (`Idempotent-Replayed: true`) and changes nothing again; the same key "
        "with another request is 422 `idempotency_key_reused`.",
        examples=["onboarding-7f3c2a9e-enroll-1"],
    ),
]

# --- pages: every list takes `limit` and `cursor` and answers `items` and `next_cursor` ---------

Limit = Annotated[int, Query(ge=1, le=200, description="Items per page.", examples=[50])]
Cursor = Annotated[
    str | None,
    Query(
        # Checked by the service (422 `invalid_cursor`), not here (422 `invalid_request`).
        json_schema_extra={"pattern": CURSOR_PATTERN},
        description="`next_cursor` of the page before (opaque); left out: the first page.",
        examples=["AAYH2dXv0Xg2N5pqpOdBTFqyBNXmv8dy"],
    ),
]

# --- media types ----------------------------------------------------------------------------


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return (length is not None and length.strip() not in ("", "0")) or (
        "transfer-encoding" in request.headers
    )


def unsupported_media_type(accepted: str) -> HTTPException:
    return HTTPException(415, f"send the body as {accepted}")


async def read_form(request: Request, max_frames: int, max_files: int, max_fields: int) -> FormData:
    """A multipart body, bounded while it is parsed: a part beyond `max_files` stops the
    parser (the frames it would hold are more than `max_frames`), garbage is a 422."""
    try:
        return await request.form(max_files=max_files, max_fields=max_fields)
    except Exception as exc:  # starlette raises a bare MultiPartException on garbage
        if "Too many files" in str(exc):
            raise TooManyFramesError(f"more than {max_frames} frames") from None
        raise InvalidRequestError(f"malformed multipart body: {exc}") from None


async def read_json_body(request: Request, model: type[BodyModel], what: str) -> BodyModel:
    """A JSON body validated as `model`; what is wrong with it is listed in a 422."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise InvalidRequestError(
            f"the JSON body is not a valid {what}",
            errors=[{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()],
        ) from None


class JsonBodyRoute(APIRoute):
    """A route whose JSON body FastAPI reads: another media type is 415, not a 422 about a
    body that was never JSON (FastAPI hands such a body to validation as raw bytes)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            content_type = request.headers.get("content-type")
            if has_body(request) and content_type is not None and not is_json(content_type):
                raise unsupported_media_type("application/json")
            return await handler(request)

        return checked


# --- the document ---------------------------------------------------------------------------


def install_openapi(app: FastAPI) -> None:
    """Serve the document below as `app.openapi()` (built on first use, then kept)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_openapi(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
        servers=app.servers,
        separate_input_output_schemas=app.separate_input_output_schemas,
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    _add_models(schemas, [EnrollJson, EnrollForm, CompareJson, CompareForm])
    _drop_fastapi_422(document)
    settings = getattr(app.state, "settings", None)
    if settings is not None:
        for name in ("EnrollJson", "EnrollForm"):
            frames = schemas[name]["properties"]["frames"]
            frames["minItems"], frames["maxItems"] = 1, settings.max_frames_per_request
    runtime = getattr(app.state, "runtime", None)
    if runtime is not None and getattr(runtime, "pipeline", None) is not None:
        _bound_threshold(schemas, runtime)
    if "$defs" in json.dumps(document):
        raise AssertionError("the OpenAPI document holds $defs that clients cannot resolve")
    return document


def _drop_fastapi_422(document: dict[str, Any]) -> None:
    """FastAPI documents a 422 of its own (`HTTPValidationError`) on every operation with a
    parameter, whether or not it can fail and in a shape this service never sends: routes
    that can answer 422 say so with `errors(...)`, in the one error body."""
    fastapi_422 = "#/components/schemas/HTTPValidationError"
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            content = responses.get("422", {}).get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref") == fastapi_422:
                del responses["422"]
    schemas = document["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _add_models(schemas: dict[str, Any], models: list[Any]) -> None:
    _, top = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    for name, schema in top.get("$defs", {}).items():
        schemas.setdefault(name, schema)


def _bound_threshold(schemas: dict[str, Any], runtime: Any) -> None:
    from app.services.orgs import threshold_bounds

    low, high = threshold_bounds(runtime)
    threshold = schemas["OrgSettingsPatch"]["properties"]["threshold"]
    for branch in threshold.get("anyOf", [threshold]):
        if branch.get("type") == "number":
            branch["minimum"], branch["maximum"] = low, high
    threshold["description"] = (
        f"Cosine threshold within [{low}, {high}] for model pack {runtime.model_id}; "
        "null = the pack's calibrated value."
    )
