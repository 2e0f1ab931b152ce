"""Onboarding: compare a selfie with an ID document (or a photo), optionally enrolling it."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.api.contract import (
    IMAGE,
    INDEX,
    IdempotencyKey,
    JsonBodyRoute,
    errors,
    is_json,
    read_form,
    read_json_body,
    unsupported_media_type,
)
from app.api.deps import MatcherDep
from app.api.idempotency import idempotent
from app.api.schemas import CompareJson, CompareResponse
from app.errors import InvalidRequestError
from app.services import onboarding as service

router = APIRouter(tags=["onboarding"], route_class=JsonBodyRoute)

_COMPARE_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/CompareJson"}},
        "multipart/form-data": {
            "schema": {"$ref": "#/components/schemas/CompareForm"},
            "encoding": {
                "probe": {"contentType": "image/jpeg, image/png, image/webp"},
                "reference": {"contentType": "image/jpeg, image/png, image/webp"},
                "liveness_frames": {"contentType": "image/jpeg, image/png, image/webp"},
            },
        },
    },
}
_FORM_FIELDS = ("reference_kind", "enroll_subject_id", "duplicate_check", "liveness_challenge")
DOCUMENT_ERRORS = (
    "document_unreadable",
    "document_no_face",
    "document_face_too_small",
    "document_too_blurry",
    "document_face_pose",
)


async def _read_compare(request: Request, max_frames: int) -> service.CompareRequest:
    """The compare of a multipart or JSON body: two images, and the frames answering a
    liveness challenge (the service checks their count; the parser stops one above it)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await read_form(request, max_frames, max_files=2 + max_frames, max_fields=8)
        files = {}
        for name in ("probe", "reference"):
            parts = form.getlist(name)
            if len(parts) != 1 or not isinstance(parts[0], UploadFile):
                raise InvalidRequestError(f"send exactly one file named `{name}`")
            files[name] = await parts[0].read()
        unknown = set(form) - {"probe", "reference", "liveness_frames", *_FORM_FIELDS}
        if unknown:
            raise InvalidRequestError(f"unknown form fields: {', '.join(sorted(unknown))}")
        fields = {k: str(form[k]) for k in _FORM_FIELDS if k in form}
        frames = [f for f in form.getlist("liveness_frames") if isinstance(f, UploadFile)]
        return service.CompareRequest(
            probe=files["probe"],
            reference=files["reference"],
            reference_kind=fields.get("reference_kind", "document"),
            enroll_subject_id=fields.get("enroll_subject_id"),
            duplicate_check=fields.get("duplicate_check"),
            liveness_challenge=fields.get("liveness_challenge"),
            liveness_frames=tuple([await f.read() for f in frames]),
        )
    if is_json(content_type):
        body = await read_json_body(request, CompareJson, "compare")
        return service.CompareRequest(
            probe=body.probe.image,
            reference=body.reference.image,
            reference_kind=body.reference.kind.value,
            enroll_subject_id=body.enroll.subject_id if body.enroll else None,
            duplicate_check=(
                body.enroll.duplicate_check.value
                if body.enroll and body.enroll.duplicate_check
                else None
            ),
            liveness_challenge=body.liveness_challenge,
            liveness_frames=tuple(body.liveness_frames),
        )
    raise unsupported_media_type("multipart/form-data or application/json")


@router.post(
    "/v1/compare",
    response_model=CompareResponse,
    responses=errors(
        IMAGE,
        INDEX,
        {
            403: ("forbidden",),
            404: ("liveness_challenge_not_found",),
            409: (
                "duplicate_face",
                "model_pack_mismatch",
                "liveness_challenge_used",
                "idempotency_request_in_flight",
            ),
            410: ("subject_erased", "liveness_challenge_expired"),
            422: (*DOCUMENT_ERRORS, "liveness_failed", "too_many_frames", "idempotency_key_reused"),
        },
        body=True,
    ),
    openapi_extra={"requestBody": _COMPARE_BODY},
    summary="Compare a selfie with an ID document (or a photo); optionally enroll it",
)
async def compare(
    request: Request, caller: MatcherDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Is the person in the selfie (`probe`) the person on the ID document (`reference`)?
    The cosine score, the org's threshold and the decision, with each side's quality.

    The document side has its own detection and quality settings (a small, printed, often
    sideways face; an ID card's ghost image): a document that cannot be used is 422 with
    `document_unreadable`, `document_no_face`, `document_face_too_small`,
    `document_too_blurry` or `document_face_pose`; the selfie fails with the usual codes
    (`no_face`, `blurry_face`, ...), its message starting `probe:`. A document is sealed
    with AES-256-GCM as a source document (`document_id`), never served, kept for the org's
    `retention.source_documents_days` (90) and erased with its subject. With `enroll` (and
    the `enroll` scope) a matching selfie is enrolled under `subject_id` as `POST
    /v1/subjects/{subject_id}/enrollments` would, and the document belongs to that subject.
    Liveness follows the org's policy and answers in `liveness`, as for verify: passive PAD
    on the selfie's face and, with `liveness_challenge`, the challenge answered by the selfie
    (the frontal first frame) and `liveness_frames`. Under `reject`, a spoof is 422
    `liveness_failed` and nothing is kept. Send JSON (base64) or multipart files `probe`,
    `reference` (and `liveness_frames`). Audited (`onboarding.compare`); retry-safe with
    `Idempotency-Key`.
    """
    # The key first: an upload is read only for a caller who may compare.
    runtime, principal = caller.runtime, await caller.principal()
    body = await _read_compare(request, runtime.settings.max_frames_per_request)
    fingerprint = hashlib.sha256(
        b"".join(
            hashlib.sha256(image).digest()
            for image in (body.probe, body.reference, *body.liveness_frames)
        )
        + repr(
            (
                body.reference_kind,
                body.enroll_subject_id,
                body.duplicate_check,
                body.liveness_challenge,
            )
        ).encode()
    ).digest()

    async def run(idempotency_key: str | None) -> tuple[int, Any]:
        result = await run_in_threadpool(
            service.compare_faces, runtime, principal, body, idempotency_key
        )
        return 200, CompareResponse.model_validate(result).model_dump(mode="json")

    return await idempotent(
        request, runtime, principal, idempotency_key, fingerprint, run, CompareResponse
    )
