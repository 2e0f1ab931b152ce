"""Request and response bodies, with the examples the OpenAPI document shows."""

from __future__ import annotations

import binascii
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    WithJsonSchema,
)

from app.crypto import Scope
from app.services import text

DuplicateCheck = Literal["off", "flag", "reject"]

_B64_EXAMPLE = "/9j/4AAQSkZJRgABAQAAAQABAAD..."


def decode_base64(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("expected a base64 string")
    try:
        # Strict mode rejects what `b64decode(validate=True)` rejects (characters outside the
        # alphabet, misplaced or excess padding) in C, not with a regex: half the time.
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not valid base64") from exc


# A base64 image in JSON, decoded once while the body is validated.
Base64Image = Annotated[
    bytes,
    BeforeValidator(decode_base64),
    WithJsonSchema({"type": "string", "format": "base64", "examples": [_B64_EXAMPLE]}),
]


def _clean_text(value: str) -> str:
    if not text.is_clean(value):
        raise ValueError(text.MESSAGE)
    return value


# Every free-text field of a request: no control characters, no lone surrogates (422 before
# the service; see `app.services.text`). The pattern tells generated clients and fuzzers.
Text = Annotated[
    str,
    AfterValidator(_clean_text),
    Field(json_schema_extra={"pattern": text.JSON_SCHEMA_PATTERN}),
]


class Pii(BaseModel):
    """Optional customer PII; sealed at rest and shown only to the owning org."""

    model_config = ConfigDict(extra="forbid")
    nik: Text | None = Field(
        None, description="Indonesian NIK, 16 digits.", examples=["3171234567890123"]
    )
    email: Text | None = Field(None, examples=["budi@example.co.id"])
    phone: Text | None = Field(None, examples=["+6281234567890"])


class EnrollJson(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"frames": [_B64_EXAMPLE], "duplicate_check": "flag"}]},
    )
    frames: list[Base64Image] = Field(
        ..., min_length=1, description="Base64 JPEG, PNG or WebP frames of one capture bundle."
    )
    duplicate_check: DuplicateCheck | None = Field(
        None, description="Search the org index first; default: the org's duplicate policy."
    )
    pii: Pii | None = None
    screen_watchlists: bool = Field(
        False, description="Also screen against your shared watchlists (`watchlist` scope)."
    )


class Quality(BaseModel):
    face_count: int
    detector_score: float
    interocular_px: float
    blur_variance: float
    yaw_degrees: float
    pitch_degrees: float
    passed: bool
    reasons: list[str]


class FrameError(BaseModel):
    code: str
    message: str


class FrameReport(BaseModel):
    index: int
    accepted: bool
    quality: Quality | None = None
    error: FrameError | None = None
    embedding_id: str | None = None
    hashed_reference: str | None = Field(None, description="HMAC-SHA-256 reference, hex.")


class DuplicateCandidate(BaseModel):
    subject_id: str
    score: float


class EnrollmentResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "enrollment_id": "enr_3f9a0c5e7b1d4a2f9e8c7b6a5d4c3b2a",
                    "subject_id": "cust-0042",
                    "subject_created": True,
                    "model_id": "yunet-sface-2021dec",
                    "threshold": 0.363,
                    "duplicate_check": "flag",
                    "duplicates": [],
                    "frames": [
                        {
                            "index": 0,
                            "accepted": True,
                            "embedding_id": "emb_9c1d...",
                            "hashed_reference": "5be0...",
                            "quality": {
                                "face_count": 1,
                                "detector_score": 0.91,
                                "interocular_px": 88.2,
                                "blur_variance": 241.0,
                                "yaw_degrees": -4.1,
                                "pitch_degrees": 6.3,
                                "passed": True,
                                "reasons": [],
                            },
                        }
                    ],
                }
            ]
        }
    )
    enrollment_id: str
    subject_id: str
    subject_created: bool
    model_id: str
    threshold: float
    duplicate_check: DuplicateCheck
    duplicates: list[DuplicateCandidate]
    frames: list[FrameReport]
    watchlist_hits: list[ScreenHit] | None = Field(
        None, description="Present when `screen_watchlists` was set."
    )


class ProbeBody(BaseModel):
    """A probe: an image (base64) or a vector from the same model pack."""

    model_config = ConfigDict(extra="forbid")
    image: Base64Image | None = Field(None, description="Base64 JPEG, PNG or WebP.")
    vector: list[float] | None = Field(None, description="Embedding from the same model pack.")
    model_id: Text | None = Field(None, description="Required with `vector`.")


class VerifyRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"subject_id": "cust-0042", "probe": {"image": _B64_EXAMPLE}}]
        },
    )
    subject_id: Text = Field(..., min_length=1, max_length=128)
    probe: ProbeBody


class VerifyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "subject_id": "cust-0042",
                    "score": 0.82,
                    "threshold": 0.363,
                    "threshold_source": "model pack yunet-sface-2021dec: OpenCV ...",
                    "decision": "match",
                    "model_id": "yunet-sface-2021dec",
                    "probe": "image",
                    "probe_quality": None,
                    "audit_id": "aud_...",
                }
            ]
        }
    )
    subject_id: str
    score: float
    threshold: float
    threshold_source: str
    decision: Literal["match", "no_match"]
    model_id: str
    probe: Literal["image", "vector"]
    probe_quality: Quality | None = None
    audit_id: str


class SearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"probe": {"image": _B64_EXAMPLE}, "top_k": 5}]},
    )
    probe: ProbeBody
    # Strict: 3.0 and "3" are refused, not coerced (a client sending them has a bug).
    top_k: StrictInt = Field(5, ge=1, le=100)


class SearchCandidate(BaseModel):
    subject_id: str
    score: float
    decision: Literal["match"]


class SearchResponse(BaseModel):
    candidates: list[SearchCandidate]
    threshold: float
    threshold_source: str
    model_id: str
    gallery_size: int
    probe: Literal["image", "vector"]
    probe_quality: Quality | None = None
    audit_id: str


class Embedding(BaseModel):
    embedding_id: str
    frame_index: int | None
    status: str
    hashed_reference: str | None
    integrity: Literal["ok", "tampered", "erased"]
    quality: dict[str, Any] | None


class Enrollment(BaseModel):
    enrollment_id: str
    status: str
    model_id: str
    created_at: datetime
    embeddings: list[Embedding]


class SubjectResponse(BaseModel):
    subject_id: str
    status: Literal["active", "erased"]
    created_at: datetime
    updated_at: datetime
    erased_at: datetime | None
    pii: Pii
    enrollments: list[Enrollment]


class SubjectSummary(BaseModel):
    subject_id: str
    status: str
    created_at: datetime
    active_embeddings: int


class SubjectPage(BaseModel):
    items: list[SubjectSummary]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")


class ErasureReceipt(BaseModel):
    subject_id: str
    org_id: str
    erased_at: str
    embeddings_erased: int
    frames_shredded: int
    pii_shredded: list[str]
    watchlist_entries_withdrawn: int = 0
    subject_key_destroyed: bool = False
    idempotency_records_deleted: int = 0
    receipt_sha256: str = Field(..., description="SHA-256 of the canonical receipt JSON.")
    audit_id: str


class RetireResponse(BaseModel):
    enrollment_id: str
    status: Literal["retired"]
    embeddings: int


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "onboarding backend", "scopes": ["enroll", "match"]}]
        },
    )
    name: Text = Field(..., min_length=1, max_length=200)
    scopes: list[Scope] = Field(..., min_length=1)
    expires_at: datetime | None = None


class ApiKeyCreated(BaseModel):
    key_id: str
    api_key: str = Field(..., description="Shown once. Only its hash is stored.")
    name: str
    scopes: list[str]
    expires_at: datetime | None


class ApiKeyInfo(BaseModel):
    key_id: str
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class Retention(BaseModel):
    model_config = ConfigDict(extra="forbid")
    frames_days: int | None = Field(None, ge=1, le=3650)
    request_logs_days: int | None = Field(None, ge=1, le=3650)
    webhook_days: int | None = Field(None, ge=1, le=3650)


class OrgSettingsPatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "threshold": 0.42,
                    "threshold_calibration": "wajah calibrate 2026-11-27, FMR 1e-4",
                    "duplicate_policy": "flag",
                }
            ]
        },
    )
    threshold: float | None = Field(None, description="Cosine threshold; null = the pack's.")
    threshold_calibration: Text | None = Field(None, max_length=500)
    duplicate_policy: DuplicateCheck | None = None
    retention: Retention | None = None
    watchlist_sharing: bool | None = Field(
        None, description="Opt in to shared watchlists (off by default)."
    )
    data_residency: Literal["ID-only", "any"] | None = Field(
        None, description="`ID-only`: only watchlists in the Indonesian region may be joined."
    )


class OrgSettings(BaseModel):
    threshold: float | None
    threshold_calibration: str | None = None
    effective_threshold: float
    threshold_source: str
    threshold_bounds: list[float]
    duplicate_policy: DuplicateCheck
    retention: dict[str, int]
    watchlist_sharing: bool
    data_residency: str
    model_id: str


class AuditEntry(BaseModel):
    id: str
    seq: int
    occurred_at: str
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: int | None


class ErrorDetail(BaseModel):
    code: str = Field(..., examples=["no_face"])
    message: str
    request_id: str
    details: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or invalid API key (`unauthorized`)."},
    403: {"model": ErrorBody, "description": "The key lacks the scope (`forbidden`)."},
    422: {"model": ErrorBody, "description": "Invalid input; `error.code` says which."},
}


# --- shared watchlists ----------------------------------------------------------------------


class WatchlistCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "consortium confirmed fraud", "region": "ID"}]},
    )
    name: Text = Field(..., min_length=1, max_length=200)
    region: Text | None = Field(
        None, min_length=2, max_length=32, description="Default: the deployment's region."
    )


class WatchlistMember(BaseModel):
    org_id: str
    state: Literal["invited", "active", "left", "removed"]


class Watchlist(BaseModel):
    watchlist_id: str
    name: str
    region: str
    model_id: str
    status: Literal["open", "closed"]
    role: Literal["owner", "member"]
    membership: str | None
    created_at: datetime
    members: list[WatchlistMember] | None = Field(None, description="Shown to the owner only.")


class Invitation(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"org_id": "org_..."}]}
    )
    org_id: Text = Field(..., min_length=1, max_length=40)


class Membership(BaseModel):
    watchlist_id: str
    org_id: str
    state: Literal["invited", "active", "left", "removed"]


class EntryCreate(BaseModel):
    """Contribute from one of your subjects (every active embedding) or a fresh capture."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"subject_id": "cust-0042", "reason_code": "confirmed_fraud"},
                {"probe": {"image": _B64_EXAMPLE}, "reason_code": "synthetic_identity"},
            ]
        },
    )
    reason_code: Text = Field(..., min_length=1, max_length=64, examples=["confirmed_fraud"])
    subject_id: Text | None = Field(None, min_length=1, max_length=128)
    probe: ProbeBody | None = None


class EntriesCreated(BaseModel):
    watchlist_id: str
    reason_code: str
    entry_ids: list[str]


class EntriesWithdrawn(BaseModel):
    watchlist_id: str
    withdrawn: list[str]


class ScreenRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"probe": {"image": _B64_EXAMPLE}, "top_k": 10}]},
    )
    probe: ProbeBody
    top_k: StrictInt = Field(10, ge=1, le=50)


class ScreenHit(BaseModel):
    """A hit names the entry, never the contributor's subject, PII or frames."""

    watchlist_id: str
    entry_id: str
    reason_code: str
    score: float
    decision: Literal["match"]


class ScreenResponse(BaseModel):
    watchlist_id: str
    hits: list[ScreenHit]
    threshold: float
    threshold_source: str
    model_id: str
    probe: Literal["image", "vector"]
    audit_id: str


EnrollmentResponse.model_rebuild()  # it refers to ScreenHit, defined above it in reading order


# --- data-subject rights: export and rectification (app.services.rights) ----------------------


class PiiPatch(BaseModel):
    """The PII fields to change: a value sets or changes one, `null` clears it, a field left
    out stays as it is."""

    model_config = ConfigDict(extra="forbid")
    nik: Text | None = Field(None, examples=["3171234567890123"])
    email: Text | None = Field(None, examples=["budi@example.co.id"])
    phone: Text | None = Field(None, examples=["+6281234567890"])


class RectifyRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"pii": {"email": "budi.baru@example.co.id", "phone": None}}]
        },
    )
    pii: PiiPatch


class RectifyResponse(BaseModel):
    subject_id: str
    pii_fields: dict[str, Literal["set", "cleared", "unchanged"]] = Field(
        ..., description="What happened to each field; never a value."
    )
    updated_at: str
    audit_id: str


class SubjectExport(BaseModel):
    """One subject's data (see README, "Data-subject rights"); `sha256` is over the canonical
    JSON of the document without `sha256` and `audit_id`."""

    model_config = ConfigDict(extra="allow")
    format: Literal["wajah-subject-export/1"]
    exported_at: str
    org_id: str
    subject_id: str
    status: Literal["active", "erased"]
    erasure: dict[str, Any] | None
    pii: dict[str, str | None]
    enrollments: list[dict[str, Any]]
    watchlist_entries: list[dict[str, Any]]
    audit_events: list[dict[str, Any]]
    frames: dict[str, Any]
    vectors_included: bool
    sha256: str
    audit_id: str
