"""Subjects and enrollments: enroll a capture bundle, read, list, retire, erase."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.api.contract import (
    IMAGE,
    INDEX,
    Cursor,
    IdempotencyKey,
    JsonBodyRoute,
    Limit,
    errors,
    is_json,
    read_form,
    read_json_body,
    unsupported_media_type,
)
from app.api.deps import EnrollerDep
from app.api.idempotency import idempotent
from app.api.schemas import (
    SUBJECT_ID_PATTERN,
    EnrollJson,
    EnrollmentResponse,
    ErasureReceipt,
    RectifyRequest,
    RectifyResponse,
    RetireResponse,
    SubjectExport,
    SubjectPage,
    SubjectResponse,
)
from app.errors import InvalidRequestError
from app.services import rights
from app.services import subjects as service

router = APIRouter(tags=["subjects"], route_class=JsonBodyRoute)

# The request body of an enrollment, in either form; both are named components (added to the
# document by `app.api.contract`, with `frames` bounded by the deployment's setting).
_ENROLL_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/EnrollJson"}},
        "multipart/form-data": {
            "schema": {"$ref": "#/components/schemas/EnrollForm"},
            "encoding": {"frames": {"contentType": "image/jpeg, image/png, image/webp"}},
        },
    },
}
SubjectId = Annotated[
    str,
    Path(
        description="Your own reference for the person (another org's is 404).",
        json_schema_extra={"pattern": SUBJECT_ID_PATTERN, "minLength": 1, "maxLength": 128},
        examples=["cust-0042"],
    ),
]
EnrollmentId = Annotated[str, Path(examples=["enr_3f9a0c5e7b1d4a2f9e8c7b6a5d4c3b2a"])]
NOT_FOUND = {404: ("subject_not_found",)}


def _form_flag(value: object) -> bool:
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise InvalidRequestError("screen_watchlists must be true or false")
    return text in ("true", "1")


async def _read_bundle(request: Request, max_frames: int) -> service.CaptureBundle:
    """The capture bundle of a multipart or JSON body. The service checks the frame count;
    the multipart parser is bounded one above it, so an oversized form stops while parsing."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        # Bounded one above the frame limit: an oversized form stops while parsing.
        form = await read_form(request, max_frames, max_files=max_frames + 1, max_fields=16)
        uploads = [f for f in form.getlist("frames") if isinstance(f, UploadFile)]
        frames = [await f.read() for f in uploads]
        policy = form.get("duplicate_check")
        pii = {k: str(form[k]) for k in ("nik", "email", "phone") if k in form}
        if not frames:
            raise InvalidRequestError("send the frames as multipart files named `frames`")
        screen = _form_flag(form["screen_watchlists"]) if "screen_watchlists" in form else False
        nonce = form.get("liveness_challenge")
        return service.CaptureBundle(
            frames, str(policy) if policy else None, pii, screen, str(nonce) if nonce else None
        )
    if is_json(content_type):
        body = await read_json_body(request, EnrollJson, "enrollment")
        pii = body.pii.model_dump(exclude_none=True) if body.pii else {}
        return service.CaptureBundle(
            body.frames, body.duplicate_check, pii, body.screen_watchlists, body.liveness_challenge
        )
    raise unsupported_media_type("multipart/form-data or application/json")


@router.post(
    "/v1/subjects/{subject_id}/enrollments",
    status_code=201,
    response_model=EnrollmentResponse,
    responses=errors(
        IMAGE,
        INDEX,
        {
            403: ("forbidden",),
            404: ("liveness_challenge_not_found",),
            409: (
                "duplicate_face",
                "model_pack_mismatch",
                "idempotency_request_in_flight",
                "liveness_challenge_used",
            ),
            410: ("subject_erased", "liveness_challenge_expired"),
            422: (
                "too_many_frames",
                "no_usable_frame",
                "liveness_failed",
                "invalid_pii",
                "idempotency_key_reused",
            ),
        },
        body=True,
    ),
    openapi_extra={"requestBody": _ENROLL_BODY},
    summary="Enroll a capture bundle for a subject",
)
async def enroll(
    subject_id: SubjectId,
    request: Request,
    caller: EnrollerDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Detect, gate, align and embed each frame; store one embedding per accepted frame.

    Send the frames as multipart files or as base64 in JSON. Frames are sealed with
    AES-256-GCM and never returned. Creates the subject on its first enrollment. A bundle
    whose every frame is refused is 422 `no_usable_frame`, with each frame's reason in
    `error.details.frames`. Retry-safe with `Idempotency-Key`.

    Liveness follows the org's policy (`liveness` in the org settings) and answers in
    `liveness`: passive PAD on each accepted frame, and the active challenge when
    `liveness_challenge` carries its nonce. Under `reject`, a spoof is 422 `liveness_failed`
    (reasons in `error.details.reasons`) and nothing is stored.
    """
    # The key first: an upload is read only for a caller who may enroll.
    runtime, principal = caller.runtime, await caller.principal()
    bundle = await _read_bundle(request, runtime.settings.max_frames_per_request)
    fingerprint = hashlib.sha256(
        b"".join(hashlib.sha256(f).digest() for f in bundle.frames)
        + repr(
            (
                subject_id,
                bundle.duplicate_check,
                sorted(bundle.pii.items()),
                bundle.screen_watchlists,
                bundle.liveness_challenge,
            )
        ).encode()
    ).digest()

    async def run(idempotency_key: str | None) -> tuple[int, Any]:
        result = await run_in_threadpool(
            service.enroll_subject, runtime, principal, subject_id, bundle, idempotency_key
        )
        body = EnrollmentResponse.model_validate(dataclasses.asdict(result))
        return 201, body.model_dump(mode="json")

    return await idempotent(
        request, runtime, principal, idempotency_key, fingerprint, run, EnrollmentResponse
    )


@router.get(
    "/v1/subjects",
    response_model=SubjectPage,
    responses=errors({422: ("invalid_cursor",)}, params=True),
    summary="List subjects",
)
async def list_subjects(
    caller: EnrollerDep, limit: Limit = 50, cursor: Cursor = None
) -> SubjectPage:
    """Oldest first, erased subjects included (with their status); never PII."""
    items, next_cursor = await caller.run(service.list_subjects, limit, cursor)
    return SubjectPage.model_validate({"items": items, "next_cursor": next_cursor})


@router.get(
    "/v1/subjects/{subject_id}",
    response_model=SubjectResponse,
    responses=errors(NOT_FOUND),
    summary="Read a subject (PII opened for the owning org; never frames)",
)
async def get_subject(subject_id: SubjectId, caller: EnrollerDep) -> SubjectResponse:
    """The subject, its PII, and each enrollment's embeddings with their integrity (the
    stored vector checked against its keyed reference). An erased subject shows what is
    left: ids and times."""
    return SubjectResponse.model_validate(await caller.run(service.get_subject, subject_id))


@router.delete(
    "/v1/subjects/{subject_id}",
    response_model=ErasureReceipt,
    responses=errors(NOT_FOUND, {410: ("subject_erased",)}),
    summary="Erase a subject: out of the index at once, frames and PII crypto-shredded",
)
async def erase_subject(subject_id: SubjectId, caller: EnrollerDep) -> JSONResponse:
    """Answers the erasure receipt (what was removed, with its SHA-256). Its embeddings
    leave the index at once, its frames, PII and subject key are destroyed, its watchlist
    entries withdrawn. Erasing an erased subject again is 410 `subject_erased`."""
    receipt = await caller.run(service.erase_subject, subject_id)
    # As built: `receipt_sha256` is over these values, not over a re-rendering of them.
    return JSONResponse(receipt)


@router.post(
    "/v1/enrollments/{enrollment_id}/retire",
    response_model=RetireResponse,
    responses=errors(
        {404: ("enrollment_not_found",), 409: ("enrollment_not_active",)},
    ),
    summary="Retire an enrollment (its embeddings leave the index)",
)
async def retire_enrollment(enrollment_id: EnrollmentId, caller: EnrollerDep) -> RetireResponse:
    """The enrollment stops taking part in matches; its frames follow the retention rules.
    An enrollment that is not active is 409 `enrollment_not_active`."""
    return RetireResponse.model_validate(await caller.run(service.retire_enrollment, enrollment_id))


@router.get(
    "/v1/subjects/{subject_id}/export",
    response_model=SubjectExport,
    responses=errors(NOT_FOUND, params=True),
    summary="Export everything held about a subject (access and portability; never frames)",
)
async def export_subject(
    subject_id: SubjectId,
    caller: EnrollerDep,
    include_vectors: Annotated[
        bool, Query(description="Add the embeddings' vectors (admin scope; audited).")
    ] = False,
) -> JSONResponse:
    """PII opened, enrollments, watchlist entries copied from them and every audit event
    about the subject, in one JSON document with its SHA-256. An erased subject's export
    holds what is left (ids, times, the erasure, audit events). Audited (`subject.export`)."""
    document = await caller.run(rights.export_subject, subject_id, include_vectors)
    # As built: the SHA-256 is over these values, not over a re-rendering of them.
    return JSONResponse(document)


@router.patch(
    "/v1/subjects/{subject_id}",
    response_model=RectifyResponse,
    responses=errors(
        NOT_FOUND,
        {
            409: ("idempotency_request_in_flight",),
            410: ("subject_erased",),
            422: ("invalid_pii", "idempotency_key_reused"),
        },
        body=True,
    ),
    summary="Rectify a subject's PII: set, change or clear (null) each field",
)
async def rectify_subject(
    subject_id: SubjectId,
    patch: RectifyRequest,
    request: Request,
    caller: EnrollerDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Validated as at enroll, resealed, audited with field names only. Retry-safe with
    `Idempotency-Key`."""
    runtime, principal = caller.runtime, await caller.principal()
    changes = {name: getattr(patch.pii, name) for name in sorted(patch.pii.model_fields_set)}
    # Keyed: a plain hash of a NIK or a phone number would be brute-forced from the record.
    fingerprint = runtime.kms.mac(
        principal.org_id, repr((subject_id, sorted(changes.items()))).encode()
    )

    async def run(idempotency_key: str | None) -> tuple[int, Any]:
        result = await run_in_threadpool(
            rights.rectify_subject, runtime, principal, subject_id, changes, idempotency_key
        )
        return 200, RectifyResponse.model_validate(result).model_dump(mode="json")

    return await idempotent(
        request, runtime, principal, idempotency_key, fingerprint, run, RectifyResponse
    )
