"""Request and response bodies, with the examples the OpenAPI document shows."""

from __future__ import annotations

import binascii
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    WithJsonSchema,
)

from app.crypto import Scope
from app.services import text

# --- shared enums: one named component each, so that generated clients get one type --------


class DuplicateCheck(StrEnum):
    """`off`: no check; `flag`: report faces enrolled under other subjects; `reject`: 409."""

    OFF = "off"
    FLAG = "flag"
    REJECT = "reject"


class Decision(StrEnum):
    MATCH = "match"
    NO_MATCH = "no_match"


class ProbeKind(StrEnum):
    IMAGE = "image"
    VECTOR = "vector"


class SubjectStatus(StrEnum):
    ACTIVE = "active"
    ERASED = "erased"


class EnrollmentStatus(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"
    ERASED = "erased"


class Integrity(StrEnum):
    """`ok`: the stored vector matches its keyed reference; `erased`: nothing left to check."""

    OK = "ok"
    TAMPERED = "tampered"
    ERASED = "erased"


class MembershipState(StrEnum):
    INVITED = "invited"
    ACTIVE = "active"
    LEFT = "left"
    REMOVED = "removed"


class WatchlistStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class WatchlistRole(StrEnum):
    OWNER = "owner"
    MEMBER = "member"


class DataResidency(StrEnum):
    ID_ONLY = "ID-only"
    ANY = "any"


class PiiChange(StrEnum):
    SET = "set"
    CLEARED = "cleared"
    UNCHANGED = "unchanged"


# A real 8×8 grey JPEG (283 bytes): valid base64 of a decodable image (it holds no face).
_B64_EXAMPLE = (
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRT"
    "c4UG1RV19iZ2hnPk1xeXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2Nj"
    "Y2NjY2NjY2NjY2NjY2NjY2NjY2NjY2P/wAARCAAIAAgDASIAAhEBAxEB/8QAFAABAAAAAAAAAAAAAAAAAAAAAP/EABQQ"
    "AQAAAAAAAAAAAAAAAAAAAAD/xAAUAQEAAAAAAAAAAAAAAAAAAAAA/8QAFBEBAAAAAAAAAAAAAAAAAAAAAP/aAAwDAQAC"
    "EQMRAD8AAA//2Q=="
)


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
    WithJsonSchema(
        {
            "type": "string",
            "format": "byte",
            "contentEncoding": "base64",
            "description": "Standard base64 (RFC 4648 §4, padded) of a JPEG, PNG or WebP image.",
            "examples": [_B64_EXAMPLE],
        }
    ),
]


def _json_integer(value: object) -> object:
    """JSON Schema's integer: a number without a fractional part (3 and 3.0, not 3.5, "3" or
    true). Anything else goes on to strict validation, which refuses it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Every integer of a request body.
JsonInt = Annotated[StrictInt, BeforeValidator(_json_integer)]


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


# What the service accepts (`app.services.subjects`), as JSON Schema patterns. `\s` and `\d`
# are spelled out: regex engines disagree on them (Python's `\s` holds Unicode spaces and the
# C0 separators, its `\d` every script's digits).
_NOT_SPACE = (
    "[^@\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
)
NIK_PATTERN = "^[0-9]{16}$"
EMAIL_PATTERN = f"^{_NOT_SPACE}{{1,64}}@{_NOT_SPACE}{{1,255}}\\.{_NOT_SPACE}{{2,63}}$"
PHONE_PATTERN = "^\\+?[0-9]{8,15}$"
# A subject id: the caller's own reference (`app.services.subjects.SUBJECT_ID`).
SUBJECT_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
# Documented here, enforced by the service (422 `invalid_pii`, 404 for an id no subject has).
Nik = Annotated[
    Text, Field(json_schema_extra={"pattern": NIK_PATTERN}, description="Indonesian NIK.")
]
Email = Annotated[Text, Field(json_schema_extra={"pattern": EMAIL_PATTERN})]
Phone = Annotated[
    Text, Field(json_schema_extra={"pattern": PHONE_PATTERN}, description="`+` optional.")
]
SubjectId = Annotated[
    Text,
    Field(
        min_length=1,
        max_length=128,
        json_schema_extra={"pattern": SUBJECT_ID_PATTERN},
        description="Your own reference for the person.",
        examples=["cust-0042"],
    ),
]


def _omittable(
    description: str | None = None, schema: dict[str, Any] | None = None, **constraints: Any
) -> Any:
    """A field a PATCH may leave out, but may not set to null (no default is documented:
    leaving it out is not the same as sending one); `schema`: more JSON Schema keywords."""

    def document(field_schema: dict[str, Any]) -> None:
        field_schema.pop("default", None)
        field_schema.update(schema or {})

    return Field(None, description=description, json_schema_extra=document, **constraints)


class Pii(BaseModel):
    """Optional customer PII; sealed at rest and shown only to the owning org."""

    model_config = ConfigDict(extra="forbid")
    nik: Nik | None = Field(None, examples=["3171234567890123"])
    email: Email | None = Field(None, examples=["budi@example.co.id"])
    phone: Phone | None = Field(None, examples=["+6281234567890"])


LIVENESS_CHALLENGE_DESCRIPTION = (
    "The nonce of a challenge from `POST /v1/liveness/challenges`: the frames (in capture "
    "order) answer it. Used up by this request whatever it shows."
)


class LivenessDecision(StrEnum):
    live = "live"
    spoof = "spoof"
    not_checked = "not_checked"


class PassiveFrameResult(BaseModel):
    index: int = Field(..., description="The frame's position in the request.")
    score: float
    live: bool


class PassiveLivenessResult(BaseModel):
    model_id: str
    threshold: float
    score: float = Field(..., description="The least live frame's score: the bundle's.")
    live: bool
    frames: list[PassiveFrameResult]


class ChallengeFramePose(BaseModel):
    yaw: float
    pitch: float
    movement: str


class ChallengeOutcome(BaseModel):
    challenge_id: str | None
    passed: bool
    reasons: list[str]
    sequence: list[str] = Field(..., description="The movements the challenge asked for.")
    observed: list[str] = Field(..., description="The movements the frames showed.")
    poses: list[ChallengeFramePose]
    min_face_similarity: float | None
    min_frame_difference: float | None


LIVENESS_EXAMPLE: dict[str, Any] = {
    "policy": "flag",
    "decision": "live",
    "reasons": [],
    "passive": {
        "model_id": "fas-256s-v10.2",
        "threshold": 0.1826,
        "score": 0.2056,
        "live": True,
        "frames": [{"index": 0, "score": 0.2056, "live": True}],
    },
    "challenge": None,
    "require_challenge": False,
}


class LivenessResult(BaseModel):
    """The liveness of the request's capture under the org's policy (scores, never pixels)."""

    model_config = ConfigDict(json_schema_extra={"examples": [LIVENESS_EXAMPLE]})
    policy: str = Field(..., description="The org's liveness policy: off, flag or reject.")
    decision: LivenessDecision
    reasons: list[str] = Field(
        ...,
        description="`passive_spoof`, `challenge_required`, or the challenge's own reasons "
        "(`too_few_frames`, `start_not_frontal`, `sequence_not_followed`, `face_changed`, "
        "`static_frames`).",
    )
    passive: PassiveLivenessResult | None = None
    challenge: ChallengeOutcome | None = None
    require_challenge: bool = False


class EnrollJson(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"frames": [_B64_EXAMPLE], "duplicate_check": "flag"}]},
    )
    frames: list[Base64Image] = Field(
        ...,
        min_length=1,
        description="Base64 JPEG, PNG or WebP frames of one capture bundle: 1 to the "
        "deployment's `WAJAH_MAX_FRAMES_PER_REQUEST` (default 8; the served document says it).",
    )
    duplicate_check: DuplicateCheck = _omittable(
        "Search the org index first; left out: the org's duplicate policy."
    )
    pii: Pii | None = None
    # Strict, as every number and flag of a request: 0 and "true" are refused, not coerced.
    screen_watchlists: StrictBool = Field(
        False, description="Also screen against your shared watchlists (`watchlist` scope)."
    )
    liveness_challenge: str | None = Field(
        None, max_length=64, description=LIVENESS_CHALLENGE_DESCRIPTION
    )


class EnrollForm(BaseModel):
    """The multipart form of an enrollment: the same fields as `EnrollJson`, frames as files
    and PII as top-level fields. Documents the form; `app.api.routes.subjects` reads it."""

    frames: list[bytes] = Field(
        ...,
        min_length=1,
        description="JPEG, PNG or WebP files of one capture bundle, each a part named `frames`.",
    )
    # A form has no null: a field is sent or left out.
    duplicate_check: DuplicateCheck = _omittable("Left out: the org's duplicate policy.")
    screen_watchlists: bool = False
    liveness_challenge: str = _omittable(LIVENESS_CHALLENGE_DESCRIPTION, {"maxLength": 64})
    nik: str = _omittable("Indonesian NIK.", {"pattern": NIK_PATTERN})
    email: str = _omittable(schema={"pattern": EMAIL_PATTERN})
    phone: str = _omittable("`+` optional.", {"pattern": PHONE_PATTERN})


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
                    "liveness": LIVENESS_EXAMPLE,
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
    liveness: LivenessResult | None = Field(
        None, description="The capture's liveness under the org's policy."
    )


class ProbeBody(BaseModel):
    """A probe: an image (base64) or a vector from the same model pack."""

    model_config = ConfigDict(extra="forbid")
    image: Base64Image | None = Field(None, description="Base64 JPEG, PNG or WebP.")
    vector: list[StrictFloat] | None = Field(
        None, description="Embedding from the same model pack (unit length)."
    )
    model_id: Text | None = Field(None, description="Required with `vector`.")


class VerifyRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"subject_id": "cust-0042", "probe": {"image": _B64_EXAMPLE}}]
        },
    )
    subject_id: SubjectId
    probe: ProbeBody
    liveness_challenge: str | None = Field(
        None, max_length=64, description=LIVENESS_CHALLENGE_DESCRIPTION
    )
    liveness_frames: list[Base64Image] = Field(
        default_factory=list,
        description="With `liveness_challenge`: the frames captured after the probe, in "
        "order (the probe image is the challenge's frontal first frame).",
    )


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
                    "liveness": LIVENESS_EXAMPLE,
                    "audit_id": "aud_...",
                }
            ]
        }
    )
    subject_id: str
    score: float
    threshold: float
    threshold_source: str
    decision: Decision
    model_id: str
    probe: ProbeKind
    probe_quality: Quality | None = None
    liveness: LivenessResult | None = Field(
        None, description="The probe's liveness under the org's policy."
    )
    audit_id: str


class SearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"probe": {"image": _B64_EXAMPLE}, "top_k": 5}]},
    )
    probe: ProbeBody
    # 3.0 is JSON Schema's integer 3; "3" and true are refused (a client sending them has a bug).
    top_k: JsonInt = Field(5, ge=1, le=100)


class SearchCandidate(BaseModel):
    subject_id: str
    score: float
    decision: Decision


class SearchResponse(BaseModel):
    candidates: list[SearchCandidate]
    threshold: float
    threshold_source: str
    model_id: str
    gallery_size: int
    probe: ProbeKind
    probe_quality: Quality | None = None
    audit_id: str


class Embedding(BaseModel):
    embedding_id: str
    frame_index: int | None
    status: EnrollmentStatus
    hashed_reference: str | None
    integrity: Integrity
    quality: dict[str, Any] | None


class Enrollment(BaseModel):
    enrollment_id: str
    status: EnrollmentStatus
    model_id: str
    created_at: datetime
    embeddings: list[Embedding]


class SubjectResponse(BaseModel):
    subject_id: str
    status: SubjectStatus
    created_at: datetime
    updated_at: datetime
    erased_at: datetime | None
    pii: Pii
    enrollments: list[Enrollment]


class SubjectSummary(BaseModel):
    subject_id: str
    status: SubjectStatus
    created_at: datetime
    active_embeddings: int


NEXT_CURSOR = "Pass as `cursor` for the next page; null on the last page."


class SubjectPage(BaseModel):
    items: list[SubjectSummary]
    next_cursor: str | None = Field(..., description=NEXT_CURSOR)


class ErasureReceipt(BaseModel):
    subject_id: str
    org_id: str
    erased_at: datetime
    embeddings_erased: int
    frames_shredded: int
    source_documents_deleted: int = Field(0, description="ID documents from `POST /v1/compare`.")
    pii_shredded: list[str]
    watchlist_entries_withdrawn: int = 0
    subject_key_destroyed: bool = False
    idempotency_records_deleted: int = 0
    receipt_sha256: str = Field(..., description="SHA-256 of the canonical receipt JSON.")
    audit_id: str


class RetireResponse(BaseModel):
    enrollment_id: str
    status: EnrollmentStatus = Field(..., description="Always `retired`.")
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
    expires_in_days: (
        Annotated[StrictInt, Field(ge=1, le=3650), BeforeValidator(_json_integer)] | None
    ) = Field(
        None,
        description="The key stops working this many days from now; null: it never expires "
        "(revoke it instead).",
    )


class ApiKeyCreated(BaseModel):
    key_id: str
    api_key: str = Field(..., description="Shown once. Only its hash is stored.")
    name: str
    scopes: list[Scope]
    expires_at: datetime | None


class ApiKeyInfo(BaseModel):
    key_id: str
    name: str
    scopes: list[Scope]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyPage(BaseModel):
    items: list[ApiKeyInfo]
    next_cursor: str | None = Field(..., description=NEXT_CURSOR)


class Retention(BaseModel):
    model_config = ConfigDict(extra="forbid")
    frames_days: JsonInt = _omittable(ge=1, le=3650)
    request_logs_days: JsonInt = _omittable(ge=1, le=3650)
    webhook_days: JsonInt = _omittable(ge=1, le=3650)
    idempotency_days: JsonInt = _omittable("Idempotency-Key records (1: 24 h).", ge=1, le=3650)
    audit_days: JsonInt = _omittable("Audit rows: 7 years (2557 days) at least.", ge=2557, le=36500)
    closure_grace_days: JsonInt = _omittable(
        "After the org is closed, days until its data is purged and its keys destroyed.",
        ge=1,
        le=3650,
    )
    source_documents_days: JsonInt = _omittable(
        "ID-document images kept from `POST /v1/compare` (90 by default).", ge=1, le=3650
    )


class LivenessPolicy(StrEnum):
    off = "off"
    flag = "flag"
    reject = "reject"


class LivenessSettingsPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: LivenessPolicy = _omittable(
        "`off` (default): not checked unless a challenge is sent; `flag`: checked and "
        "reported; `reject`: a spoof refuses the request (422 `liveness_failed`). Calibrate "
        "the threshold (`wajah calibrate --pad`) before `reject`."
    )
    passive_threshold: StrictFloat = _omittable(
        "Live score at or above which a face counts as live (the PAD model's authors: 0.1826).",
        ge=0.01,
        le=0.99,
    )
    require_challenge: StrictBool = _omittable(
        "Under `flag`/`reject`, a request without `liveness_challenge` is a spoof."
    )


class LivenessSettings(BaseModel):
    policy: LivenessPolicy
    passive_threshold: float
    require_challenge: bool


class OrgSettingsPatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "threshold": 0.42,
                    "threshold_calibration": "wajah calibrate 2026-11-27, FMR 1e-4",
                    "duplicate_policy": "flag",
                    "liveness": {"policy": "flag", "passive_threshold": 0.2},
                }
            ]
        },
    )
    # A field left out stays as it is. Null means something only where it says so; elsewhere
    # it is refused (the types below are not optional).
    threshold: StrictFloat | None = Field(None, description="Cosine threshold; null = the pack's.")
    threshold_calibration: Text | None = Field(
        None, max_length=500, description="How the threshold was chosen; null clears it."
    )
    duplicate_policy: DuplicateCheck = _omittable()
    retention: Retention = _omittable()
    watchlist_sharing: StrictBool = _omittable("Opt in to shared watchlists (off by default).")
    data_residency: DataResidency = _omittable(
        "`ID-only`: only watchlists in the Indonesian region may be joined."
    )
    liveness: LivenessSettingsPatch = _omittable("Liveness policy and passive threshold.")


class OrgSettings(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "threshold": 0.42,
                    "threshold_calibration": "wajah calibrate 2026-11-27, FMR 1e-4",
                    "effective_threshold": 0.42,
                    "threshold_source": "org: wajah calibrate 2026-11-27, FMR 1e-4",
                    "threshold_bounds": [0.313, 0.95],
                    "duplicate_policy": "flag",
                    "retention": {"frames_days": 90, "request_logs_days": 90, "webhook_days": 30},
                    "watchlist_sharing": False,
                    "data_residency": "ID-only",
                    "liveness": {
                        "policy": "flag",
                        "passive_threshold": 0.1826,
                        "require_challenge": False,
                    },
                    "model_id": "yunet-sface-2021dec",
                }
            ]
        }
    )
    threshold: float | None
    threshold_calibration: str | None = None
    effective_threshold: float
    threshold_source: str
    threshold_bounds: list[float]
    duplicate_policy: DuplicateCheck
    retention: dict[str, int] = Field(..., examples=[{"frames_days": 90}])
    watchlist_sharing: bool
    data_residency: DataResidency
    liveness: LivenessSettings
    model_id: str


class AuditEntry(BaseModel):
    id: str
    seq: int
    # The recorded text itself (RFC 3339, UTC, microseconds): the row's hash covers it.
    occurred_at: Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None = Field(..., description=NEXT_CURSOR)


class RequestLogEntry(BaseModel):
    """One API request of the org: the route template, never the path (no subject id)."""

    request_id: str = Field(..., examples=["req_5f0c9a1e2b3d4c6f"])
    occurred_at: datetime = Field(..., description="When the request arrived (UTC).")
    method: str = Field(..., examples=["POST"])
    route: str = Field(..., examples=["/v1/subjects/{subject_id}/enrollments"])
    status: int = Field(..., examples=[201])
    latency_ms: float = Field(..., description="Arrival to the end of the response.")
    key_id: str = Field(..., description="The API key that made it.", examples=["ttj7ncmsm3dac"])


class RequestLogPage(BaseModel):
    items: list[RequestLogEntry]
    next_cursor: str | None = Field(..., description=NEXT_CURSOR)


# --- webhook deliveries (app.api.routes.webhook_deliveries) --------------------------------


class WebhookDeliveryStatus(StrEnum):
    """`pending`: due or waiting for a retry; `succeeded`: a 2xx came back; `failed`: the
    retry schedule ran out (redeliver to try again)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


_DELIVERY_EXAMPLE: dict[str, Any] = {
    "id": "dlv_6b1f0c2e9d8a4b7c8e5f3a2d1c0b9a87",
    "webhook_id": "wh_3c9e1a7b5d2f4e6a8b0c1d2e3f4a5b6c",
    "event_id": "evt_0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "event_type": "enrollment.created",
    "status": "pending",
    "attempts": 2,
    "last_attempt_at": "2026-12-03T11:40:35.120000Z",
    "last_status_code": 503,
    "last_error_class": "http_status",
    "next_attempt_at": "2026-12-03T11:41:58.000000Z",
    "completed_at": None,
    "created_at": "2026-12-03T11:40:00.010000Z",
}


class WebhookDelivery(BaseModel):
    """One event for one endpoint, and how its delivery went so far."""

    model_config = ConfigDict(json_schema_extra={"examples": [_DELIVERY_EXAMPLE]})
    id: str
    webhook_id: str
    event_id: str = Field(..., description="Also the `webhook-id` header of every attempt.")
    event_type: str
    status: WebhookDeliveryStatus
    attempts: int = Field(..., description="Attempts made so far.")
    last_attempt_at: datetime | None
    last_status_code: int | None = Field(..., description="The last answer's HTTP status.")
    last_error_class: str | None = Field(
        ...,
        description="Why the last attempt failed: `http_status`, `redirect`, `timeout`, "
        "`connection_refused`, `connection_error`, `tls`, `refused_destination`, "
        "`signing_unavailable`; null after a success.",
    )
    next_attempt_at: datetime | None = Field(..., description="When it is tried next (pending).")
    completed_at: datetime | None
    created_at: datetime


class WebhookAttempt(BaseModel):
    attempted_at: datetime
    status_code: int | None = Field(..., description="null: no HTTP answer came back.")
    latency_ms: float = Field(..., description="Connect to the end of the answer (or failure).")
    error_class: str | None = Field(..., description="null: a 2xx.")


class WebhookDeliveryDetail(WebhookDelivery):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_DELIVERY_EXAMPLE,
                    "attempt_log": [
                        {
                            "attempted_at": "2026-12-03T11:40:00.020000Z",
                            "status_code": None,
                            "latency_ms": 1.8,
                            "error_class": "connection_refused",
                        },
                        {
                            "attempted_at": "2026-12-03T11:40:35.120000Z",
                            "status_code": 503,
                            "latency_ms": 12.4,
                            "error_class": "http_status",
                        },
                    ],
                }
            ]
        }
    )
    attempt_log: list[WebhookAttempt] = Field(..., description="Every attempt, first first.")


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDelivery]
    next_cursor: str | None = Field(..., description=NEXT_CURSOR)


class ErrorDetail(BaseModel):
    code: str = Field(..., examples=["no_face"])
    message: str
    request_id: str
    details: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# --- health ---------------------------------------------------------------------------------


class HealthStatus(StrEnum):
    OK = "ok"


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})
    status: HealthStatus


class ReadinessStatus(StrEnum):
    READY = "ready"
    NOT_READY = "not_ready"


class IndexCounts(BaseModel):
    orgs: int
    vectors: int = Field(..., description="Vectors the org indexes hold now.")
    vectors_at_start: int
    tampered_embeddings: int


class FeedPosition(BaseModel):
    model_config = ConfigDict(extra="allow")
    listening: bool
    notifications: int
    namespaces: int
    behind: int
    changes_behind: int


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "models": True,
                    "database": True,
                    "indexes": True,
                    "feed": True,
                    "model_id": "yunet-sface-2021dec",
                    "index": {
                        "orgs": 3,
                        "vectors": 1200,
                        "vectors_at_start": 1180,
                        "tampered_embeddings": 0,
                    },
                    "position": {
                        "listening": True,
                        "notifications": 12,
                        "namespaces": 0,
                        "behind": 0,
                        "changes_behind": 0,
                    },
                }
            ]
        }
    )
    status: ReadinessStatus
    models: bool
    database: bool
    indexes: bool
    feed: bool
    model_id: str | None = None
    index: IndexCounts | None = None
    position: FeedPosition | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or invalid API key (`unauthorized`)."},
    403: {"model": ErrorBody, "description": "The key lacks the scope (`forbidden`)."},
    422: {"model": ErrorBody, "description": "Invalid input; `error.code` says which."},
}


# --- shared watchlists ----------------------------------------------------------------------


# A name that is not blank: at least one character that is neither a control character nor
# white space (the service strips white space first).
_NAME_PATTERN = (
    "^[^\\u0000-\\u001f\\u007f-\\u009f]*"
    "[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    "[^\\u0000-\\u001f\\u007f-\\u009f]*$"
)


class WatchlistCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "consortium confirmed fraud", "region": "ID"}]},
    )
    name: Text = Field(
        ..., min_length=1, max_length=200, json_schema_extra={"pattern": _NAME_PATTERN}
    )
    region: Text | None = Field(
        None, min_length=2, max_length=32, description="Default: the deployment's region."
    )


class WatchlistMember(BaseModel):
    org_id: str
    state: MembershipState


class Watchlist(BaseModel):
    watchlist_id: str
    name: str
    region: str
    model_id: str
    status: WatchlistStatus
    role: WatchlistRole
    membership: MembershipState | None
    created_at: datetime
    members: list[WatchlistMember] | None = Field(None, description="Shown to the owner only.")


class WatchlistPage(BaseModel):
    items: list[Watchlist]
    next_cursor: str | None = Field(..., description=NEXT_CURSOR)


class Invitation(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"org_id": "org_..."}]}
    )
    org_id: Text = Field(..., min_length=1, max_length=40)


class Membership(BaseModel):
    watchlist_id: str
    org_id: str
    state: MembershipState


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
    reason_code: Text = Field(
        ...,
        json_schema_extra={"pattern": "^[a-z][a-z0-9_]{0,63}$"},
        description="Lower-case snake_case, your own vocabulary.",
        examples=["confirmed_fraud"],
    )
    subject_id: SubjectId | None = None
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
    top_k: JsonInt = Field(10, ge=1, le=50)


class ScreenHit(BaseModel):
    """A hit names the entry, never the contributor's subject, PII or frames."""

    watchlist_id: str
    entry_id: str
    reason_code: str
    score: float
    decision: Decision


class ScreenResponse(BaseModel):
    watchlist_id: str
    hits: list[ScreenHit]
    threshold: float
    threshold_source: str
    model_id: str
    probe: ProbeKind
    audit_id: str


EnrollmentResponse.model_rebuild()  # it refers to ScreenHit, defined above it in reading order


# --- data-subject rights: export and rectification (app.services.rights) ----------------------


class PiiPatch(BaseModel):
    """The PII fields to change: a value sets or changes one, `null` clears it, a field left
    out stays as it is. At least one field."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})
    nik: Nik | None = Field(None, examples=["3171234567890123"])
    email: Email | None = Field(None, examples=["budi@example.co.id"])
    phone: Phone | None = Field(None, examples=["+6281234567890"])


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
    pii_fields: dict[str, PiiChange] = Field(
        ..., description="What happened to each field; never a value."
    )
    updated_at: datetime
    audit_id: str


class SubjectExport(BaseModel):
    """One subject's data (see README, "Data-subject rights"); `sha256` is over the canonical
    JSON of the document without `sha256` and `audit_id`."""

    model_config = ConfigDict(extra="allow")
    format: Literal["wajah-subject-export/1"]
    exported_at: datetime
    org_id: str
    subject_id: str
    status: SubjectStatus
    erasure: dict[str, Any] | None
    pii: dict[str, str | None]
    enrollments: list[dict[str, Any]]
    watchlist_entries: list[dict[str, Any]]
    audit_events: list[dict[str, Any]]
    frames: dict[str, Any]
    source_documents: list[dict[str, Any]] = Field(
        default_factory=list,
        description="ID documents kept from `POST /v1/compare`: ids, types, sizes and dates; "
        "never their bytes (sealed like frames, never served).",
    )
    vectors_included: bool
    sha256: str
    audit_id: str


# --- onboarding: compare a selfie with an ID document (app.services.onboarding) -------------


class ReferenceKind(StrEnum):
    """`document`: an ID document's image (own detection settings; sealed and kept as a
    source document); `photo`: a plain photo (the selfie's gate; not kept)."""

    DOCUMENT = "document"
    PHOTO = "photo"


class CompareProbe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: Base64Image = Field(..., description="The selfie: base64 JPEG, PNG or WebP.")


class CompareReference(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: Base64Image = Field(..., description="The ID document (or photo): base64 image.")
    kind: ReferenceKind = Field(ReferenceKind.DOCUMENT, description="Left out: `document`.")


class CompareEnroll(BaseModel):
    """Enroll the selfie under `subject_id` when it matches, as `POST
    /v1/subjects/{subject_id}/enrollments` would (`enroll` scope)."""

    model_config = ConfigDict(extra="forbid")
    subject_id: SubjectId
    duplicate_check: DuplicateCheck = _omittable("Left out: the org's duplicate policy.")


class CompareJson(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "probe": {"image": _B64_EXAMPLE},
                    "reference": {"image": _B64_EXAMPLE, "kind": "document"},
                    "enroll": {"subject_id": "cust-0042"},
                }
            ]
        },
    )
    probe: CompareProbe
    reference: CompareReference
    enroll: CompareEnroll | None = Field(None, description="Left out: compare only.")
    liveness_challenge: str | None = Field(
        None, max_length=64, description=LIVENESS_CHALLENGE_DESCRIPTION
    )
    liveness_frames: list[Base64Image] = Field(
        default_factory=list,
        description="With `liveness_challenge`: the frames captured after the selfie, in "
        "order (the selfie is the challenge's frontal first frame).",
    )


class CompareForm(BaseModel):
    """The multipart form of a compare: the same fields as `CompareJson`, the two images as
    files. Documents the form; `app.api.routes.compare` reads it."""

    probe: bytes = Field(..., description="The selfie: a JPEG, PNG or WebP file.")
    reference: bytes = Field(..., description="The ID document (or photo): an image file.")
    reference_kind: ReferenceKind = _omittable("Left out: `document`.")
    enroll_subject_id: str = _omittable(
        "Enroll the selfie under this subject when it matches.",
        {"pattern": SUBJECT_ID_PATTERN, "minLength": 1, "maxLength": 128},
    )
    duplicate_check: DuplicateCheck = _omittable("With `enroll_subject_id`.")
    liveness_challenge: str = _omittable(LIVENESS_CHALLENGE_DESCRIPTION, {"maxLength": 64})
    liveness_frames: list[bytes] = _omittable(
        "With `liveness_challenge`: the frames captured after the selfie, each a part named "
        "`liveness_frames`, in order."
    )


class DocumentQuality(Quality):
    """The reference's quality; for a document, `interocular_px` is in its own pixels."""


class CompareResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "decision": "match",
                    "score": 0.78,
                    "threshold": 0.363,
                    "threshold_source": "model pack yunet-sface-2021dec: OpenCV ...",
                    "model_id": "yunet-sface-2021dec",
                    "probe_quality": {
                        "face_count": 1,
                        "detector_score": 0.91,
                        "interocular_px": 88.2,
                        "blur_variance": 241.0,
                        "yaw_degrees": -4.1,
                        "pitch_degrees": 6.3,
                        "passed": True,
                        "reasons": [],
                    },
                    "reference_kind": "document",
                    "reference_quality": {
                        "face_count": 2,
                        "detector_score": 0.92,
                        "interocular_px": 23.6,
                        "blur_variance": 38.5,
                        "yaw_degrees": -8.6,
                        "pitch_degrees": 7.9,
                        "passed": True,
                        "reasons": [],
                    },
                    "reference_rotation_degrees": 270,
                    "document_id": "doc_5c0e2a9b7d6f4e3a8b1c0d9e8f7a6b5c",
                    "enrollment": None,
                    "liveness": LIVENESS_EXAMPLE,
                    "audit_id": "aud_...",
                }
            ]
        }
    )
    decision: Decision
    score: float = Field(..., description="Cosine similarity of the two faces.")
    threshold: float = Field(..., description="The org's effective threshold.")
    threshold_source: str
    model_id: str
    probe_quality: Quality
    reference_kind: ReferenceKind
    reference_quality: DocumentQuality
    reference_rotation_degrees: int = Field(
        ..., description="How far the reference was turned clockwise to stand the face upright."
    )
    document_id: str | None = Field(
        ..., description="The sealed source document (never served); null for a `photo`."
    )
    enrollment: EnrollmentResponse | None = Field(
        ..., description="The enrollment, when `enroll` was asked and the faces match."
    )
    liveness: LivenessResult | None = Field(
        None, description="The selfie's liveness under the org's policy."
    )
    audit_id: str


# --- active liveness ----------------------------------------------------------------------------

LivenessStep = Literal["turn_left", "turn_right", "look_up", "look_down"]


class LivenessChallengeCreated(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "lch_3f9a0c5e7b1d4a2f9e8c7b6a5d4c3b2a",
                    "nonce": "mJ0o0wGk7f3oYJ7tq2m1b8aQyq6Yv8c3xX2Yt1n0ZkE",
                    "sequence": ["turn_left", "look_up"],
                    "expires_at": "2026-12-03T10:02:00Z",
                    "instructions": [
                        "Look straight at the camera.",
                        "Turn your head to your left.",
                        "Tilt your head up.",
                    ],
                }
            ]
        }
    )
    id: str
    nonce: str = Field(
        ...,
        description="Shown once (only its SHA-256 is stored). Send it as `liveness_challenge` "
        "with the capture bundle that answers the challenge; it is valid once, until "
        "`expires_at`.",
    )
    sequence: list[LivenessStep] = Field(
        ..., description="The head movements to capture, in order, after a frontal frame."
    )
    expires_at: datetime
    instructions: list[str] = Field(
        ..., description="One line per frame to capture: the frontal start, then each step."
    )
