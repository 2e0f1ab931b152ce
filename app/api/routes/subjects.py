"""Subjects and enrollments: enroll a capture bundle, read, list, retire, erase."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.api.deps import EnrollerDep
from app.api.idempotency import idempotent
from app.api.schemas import (
    ERRORS,
    EnrollJson,
    EnrollmentResponse,
    ErasureReceipt,
    ErrorBody,
    RectifyRequest,
    RectifyResponse,
    RetireResponse,
    SubjectExport,
    SubjectPage,
    SubjectResponse,
)
from app.errors import InvalidRequestError, TooManyFramesError
from app.services import rights
from app.services import subjects as service

router = APIRouter(tags=["subjects"])

_ENROLL_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": EnrollJson.model_json_schema()},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["frames"],
                "properties": {
                    "frames": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "1..N JPEG, PNG or WebP frames of one capture bundle.",
                    },
                    "duplicate_check": {"type": "string", "enum": ["off", "flag", "reject"]},
                    "screen_watchlists": {"type": "boolean"},
                    "nik": {"type": "string"},
                    "email": {"type": "string"},
                    "phone": {"type": "string"},
                },
            }
        },
    },
}


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
        try:
            form = await request.form(max_files=max_frames + 1, max_fields=16)
        except Exception as exc:  # starlette raises a bare MultiPartException on garbage
            if "Too many files" in str(exc):  # more than max_frames + 1 parts
                raise TooManyFramesError(f"more than {max_frames} frames") from None
            raise InvalidRequestError(f"malformed multipart body: {exc}") from None
        uploads = [f for f in form.getlist("frames") if isinstance(f, UploadFile)]
        frames = [await f.read() for f in uploads]
        policy = form.get("duplicate_check")
        pii = {k: str(form[k]) for k in ("nik", "email", "phone") if k in form}
        if not frames:
            raise InvalidRequestError("send the frames as multipart files named `frames`")
        screen = _form_flag(form["screen_watchlists"]) if "screen_watchlists" in form else False
        return service.CaptureBundle(frames, str(policy) if policy else None, pii, screen)
    if content_type.startswith("application/json"):
        try:
            body = EnrollJson.model_validate_json(await request.body())
        except ValidationError as exc:
            raise InvalidRequestError(
                "the JSON body is not a valid enrollment",
                errors=[{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()],
            ) from None
        pii = body.pii.model_dump(exclude_none=True) if body.pii else {}
        return service.CaptureBundle(body.frames, body.duplicate_check, pii, body.screen_watchlists)
    raise InvalidRequestError("send multipart/form-data or application/json")


@router.post(
    "/v1/subjects/{subject_id}/enrollments",
    status_code=201,
    response_model=EnrollmentResponse,
    responses={
        **ERRORS,
        409: {"model": ErrorBody, "description": "`duplicate_face`"},
        410: {"model": ErrorBody, "description": "`subject_erased`: use a new subject_id"},
        413: {"model": ErrorBody},
        415: {"model": ErrorBody},
    },
    openapi_extra={"requestBody": _ENROLL_BODY},
    summary="Enroll a capture bundle for a subject",
)
async def enroll(subject_id: str, request: Request, caller: EnrollerDep) -> Response:
    """Detect, gate, align and embed each frame; store one embedding per accepted frame.

    Frames are sealed with AES-256-GCM and never returned. Honours `Idempotency-Key`.
    Creates the subject on its first enrollment.
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
            )
        ).encode()
    ).digest()

    async def run(idempotency_key: str | None) -> tuple[int, Any]:
        result = await run_in_threadpool(
            service.enroll_subject, runtime, principal, subject_id, bundle, idempotency_key
        )
        body = EnrollmentResponse.model_validate(dataclasses.asdict(result))
        return 201, body.model_dump(mode="json")

    return await idempotent(request, runtime, principal, fingerprint, run, EnrollmentResponse)


@router.get("/v1/subjects", response_model=SubjectPage, responses=ERRORS, summary="List subjects")
async def list_subjects(
    caller: EnrollerDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> SubjectPage:
    items, next_cursor = await caller.run(service.list_subjects, limit, cursor)
    return SubjectPage.model_validate({"items": items, "next_cursor": next_cursor})


@router.get(
    "/v1/subjects/{subject_id}",
    response_model=SubjectResponse,
    responses={**ERRORS, 404: {"model": ErrorBody}},
    summary="Read a subject (PII opened for the owning org; never frames)",
)
async def get_subject(subject_id: str, caller: EnrollerDep) -> SubjectResponse:
    return SubjectResponse.model_validate(await caller.run(service.get_subject, subject_id))


@router.delete(
    "/v1/subjects/{subject_id}",
    response_model=ErasureReceipt,
    responses={**ERRORS, 404: {"model": ErrorBody}, 410: {"model": ErrorBody}},
    summary="Erase a subject: out of the index at once, frames and PII crypto-shredded",
)
async def erase_subject(subject_id: str, caller: EnrollerDep) -> ErasureReceipt:
    return ErasureReceipt.model_validate(await caller.run(service.erase_subject, subject_id))


@router.post(
    "/v1/enrollments/{enrollment_id}/retire",
    response_model=RetireResponse,
    responses={**ERRORS, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
    summary="Retire an enrollment (its embeddings leave the index)",
)
async def retire(enrollment_id: str, caller: EnrollerDep) -> RetireResponse:
    return RetireResponse.model_validate(await caller.run(service.retire_enrollment, enrollment_id))


@router.get(
    "/v1/subjects/{subject_id}/export",
    response_model=SubjectExport,
    responses={**ERRORS, 404: {"model": ErrorBody}},
    summary="Export everything held about a subject (access and portability; never frames)",
)
async def export_subject(
    subject_id: str,
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
    responses={**ERRORS, 404: {"model": ErrorBody}, 410: {"model": ErrorBody}},
    summary="Rectify a subject's PII: set, change or clear (null) each field",
)
async def rectify_subject(subject_id: str, request: Request, caller: EnrollerDep) -> Response:
    """Validated as at enroll, resealed, audited with field names only. Honours
    `Idempotency-Key`."""
    runtime, principal = caller.runtime, await caller.principal()
    try:
        patch = RectifyRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise InvalidRequestError(
            "the JSON body is not a valid rectification",
            errors=[{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()],
        ) from None
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

    return await idempotent(request, runtime, principal, fingerprint, run, RectifyResponse)
