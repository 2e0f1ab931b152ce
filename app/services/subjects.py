"""Subjects and their enrollments: enroll a capture bundle, read, list, retire, erase.

Enroll reads top to bottom: check the request → capture (decode, detect, gate, embed) →
duplicate check → seal the frames → persist (one transaction: rows, audit row, the stored
answer to an `Idempotency-Key`) → index → optional watchlist screening.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

from app.crypto import Scope
from app.crypto.subject_keys import SubjectKey
from app.errors import (
    DuplicateFaceError,
    EnrollmentNotActiveError,
    EnrollmentNotFoundError,
    ForbiddenError,
    InvalidPiiError,
    InvalidRequestError,
    NoUsableFrameError,
    SubjectErasedError,
    SubjectNotFoundError,
    TooManyFramesError,
)
from app.runtime import Runtime
from app.services import idempotency, indexing, pages, sealing, text
from app.services.liveness import (
    NOT_CHECKED,
    CapturedFrame,
    LivenessReport,
    assess,
    liveness_settings,
    refuse_if_spoof,
)
from app.services.orgs import DUPLICATE_POLICIES, effective_threshold, org_settings
from app.services.principal import Principal, record
from app.services.watchlists import screen_everywhere
from app.storage import (
    Connection,
    documents,
    feed,
    frames,
    new_id,
    read_transaction,
    rights,
    subjects,
    utcnow,
    watchlists,
    write_transaction,
)
from app.storage import idempotency as idempotency_records
from app.storage.webhooks import record_event
from models.pipeline import FaceCapture, FrameOutcome

SUBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
NIK = re.compile(r"\d{16}")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,63}")
PHONE = re.compile(r"\+?\d{8,15}")
# Sealed under the subject's own key (`app.services.sealing`).
PII_FIELDS = sealing.PII_FIELDS


def check_subject_id(subject_id: str) -> str:
    if not SUBJECT_ID.fullmatch(subject_id):
        raise InvalidRequestError(
            "subject_id must be 1..128 characters of letters, digits and . _ : @ -, "
            "starting with a letter or digit"
        )
    return subject_id


def check_pii(pii: Mapping[str, str | None]) -> dict[str, str]:
    """Validate NIK (16 digits), email and phone; unknown fields are refused."""
    clean: dict[str, str] = {}
    for name, value in pii.items():
        if name not in PII_FIELDS:
            raise InvalidPiiError(f"unknown PII field {name!r}; allowed: nik, email, phone")
        if value is None:
            continue
        if not text.is_clean(value):
            raise InvalidPiiError(f"{name} {text.MESSAGE}", field=name)
        value = value.strip()
        pattern = {"nik": NIK, "email": EMAIL, "phone": PHONE}[name]
        if not pattern.fullmatch(value):
            rule = {"nik": "16 digits", "email": "an email address", "phone": "8-15 digits"}
            raise InvalidPiiError(f"{name} must be {rule[name]}", field=name)
        clean[name] = value
    return clean


# --- enroll ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureBundle:
    """What a client sends to enroll: the frames of one capture, and its options."""

    frames: list[bytes]
    duplicate_check: str | None = None
    pii: Mapping[str, str | None] = field(default_factory=dict)
    screen_watchlists: bool = False
    #: A nonce from `POST /v1/liveness/challenges`: the frames answer that challenge.
    liveness_challenge: str | None = None


@dataclass(frozen=True)
class FrameReport:
    index: int
    accepted: bool
    quality: dict[str, Any] | None
    error: dict[str, str] | None = None
    embedding_id: str | None = None
    hashed_reference: str | None = None


@dataclass(frozen=True)
class DuplicateCandidate:
    subject_id: str
    score: float


@dataclass
class EnrollmentResult:
    enrollment_id: str
    subject_id: str
    subject_created: bool
    model_id: str
    threshold: float
    frames: list[FrameReport]
    duplicate_check: str
    duplicates: list[DuplicateCandidate] = field(default_factory=list)
    # Only when `screen_watchlists` was asked for: hits in the watchlists the org screens.
    watchlist_hits: list[dict[str, Any]] | None = None
    liveness: dict[str, Any] | None = None  # `LivenessReport.as_dict()`


@dataclass(frozen=True)
class _CheckedRequest:
    """An enrollment request that passed every check that needs no inference."""

    org_id: str
    subject_id: str
    pii: dict[str, str]
    policy: str
    threshold: float
    frames_days: int
    existing: Any  # the subject's row, None for a new subject
    liveness: dict[str, Any] = field(default_factory=dict)  # the org's liveness settings
    key: SubjectKey | None = None  # the subject's own key, once it is known


@dataclass(frozen=True)
class _Captured:
    """The capture of a bundle: a report per frame, and the frames the gate accepted."""

    reports: list[FrameReport]
    accepted: list[tuple[int, FaceCapture]]
    liveness: LivenessReport = NOT_CHECKED

    @property
    def vectors(self) -> NDArray[np.float32]:
        return np.stack([c.embedding for _, c in self.accepted]).astype(np.float32)


@dataclass(frozen=True)
class _SealedFrame:
    frame_id: str
    wrapped_dek: bytes
    kek_version: int


def enroll_subject(
    runtime: Runtime,
    principal: Principal,
    subject_id: str,
    bundle: CaptureBundle,
    idempotency_key: str | None = None,
    *,
    within: Callable[[Connection, EnrollmentResult], tuple[int, Any]] | None = None,
    outcomes: list[FrameOutcome] | None = None,
    liveness: LivenessReport | None = None,
) -> EnrollmentResult:
    """Enroll a capture bundle: one embedding per accepted frame, frames sealed.

    With `idempotency_key` (reserved by the caller), the answer is stored in the same
    transaction as the enrollment, so a crash can never leave a committed enrollment whose
    retry would run it a second time. `within`: the rest of a larger change that enrolls as
    one of its steps (`POST /v1/compare`), written in the enrollment's transaction after its
    rows; the (status, answer) it returns is what `idempotency_key` stores. `outcomes`: the
    frames' captures when the caller already ran them (compare's selfie), one per frame.
    `liveness`: the report when the caller already assessed these frames; otherwise they are
    assessed here under the org's policy, and a refusal stores nothing.
    """
    request = _check_request(runtime, principal, subject_id, bundle)
    captured = _capture(runtime, bundle.frames, outcomes)
    captured = _check_liveness(runtime, principal, request, bundle, captured, liveness)
    key = sealing.ensure_subject_key(runtime, request.org_id, request.subject_id)
    request = dataclasses.replace(request, key=key)
    sealed = _seal_frames(runtime, key, bundle.frames, captured)
    try:
        with write_transaction(runtime.engine) as conn:
            duplicates = _duplicate_check(conn, runtime, request, captured.vectors)
            result = _persist(conn, runtime, principal, request, captured, sealed, duplicates)
            status, answer = (201, result) if within is None else within(conn, result)
            if idempotency_key is not None:
                idempotency.store_answer(
                    conn, request.org_id, idempotency_key, status, answer, request.subject_id
                )
    except BaseException as failure:
        # Nothing half-written: no orphan sealed frames either. Once the rows are committed
        # the frames belong to them, so a failure after the commit must not delete them.
        _discard(runtime, sealed)
        if isinstance(failure, DuplicateFaceError):
            _audit_refusal(runtime, principal, request, failure)
        raise
    indexing.catch_up_org(runtime, request.org_id)
    if bundle.screen_watchlists:
        # The sharpest accepted frame stands for the bundle: one screening, one audit trail.
        best = max(captured.accepted, key=lambda item: item[1].quality.detector_score)[1]
        result.watchlist_hits = screen_everywhere(runtime, principal, best.embedding)
    return result


def _check_request(
    runtime: Runtime, principal: Principal, subject_id: str, bundle: CaptureBundle
) -> _CheckedRequest:
    """Every check of an enrollment that needs no inference; the frame limit lives here."""
    if bundle.screen_watchlists and not principal.can(Scope.WATCHLIST):
        raise ForbiddenError("screen_watchlists needs a key with the `watchlist` scope")
    check_subject_id(subject_id)
    clean_pii = check_pii(bundle.pii)
    if not bundle.frames:
        raise InvalidRequestError("a capture bundle needs at least one frame")
    limit = runtime.settings.max_frames_per_request
    if len(bundle.frames) > limit:
        raise TooManyFramesError(f"{len(bundle.frames)} frames; at most {limit}")
    settings = org_settings(runtime, principal.org_id)
    policy = bundle.duplicate_check or settings.get("duplicate_policy", "off")
    if policy not in DUPLICATE_POLICIES:
        raise InvalidRequestError("duplicate_check must be off, flag or reject")
    threshold, _ = effective_threshold(runtime, settings)
    with read_transaction(runtime.engine) as conn:
        existing = subjects.find_subject(conn, principal.org_id, subject_id)
    if existing is not None and existing.status == "erased":
        raise SubjectErasedError(f"subject {subject_id!r} was erased; use a new subject_id")
    return _CheckedRequest(
        org_id=principal.org_id,
        subject_id=subject_id,
        pii=clean_pii,
        policy=policy,
        threshold=threshold,
        frames_days=int(settings["retention"]["frames_days"]),
        existing=existing,
        liveness=liveness_settings(settings),
    )


def _capture(
    runtime: Runtime, frame_bytes: list[bytes], outcomes: list[FrameOutcome] | None = None
) -> _Captured:
    """Decode, detect, gate, align and embed every frame on the inference pool (unless the
    caller did: `outcomes`)."""
    if outcomes is None:
        outcomes = runtime.inference.run(lambda pipeline: pipeline.capture_bundle(frame_bytes))
    elif len(outcomes) != len(frame_bytes):
        raise ValueError("one capture outcome per frame")
    reports = _frame_reports(outcomes)
    accepted = [(i, o.capture) for i, o in enumerate(outcomes) if o.capture is not None]
    if not accepted:
        raise NoUsableFrameError(
            "no frame of the bundle passed decoding and the quality gate",
            frames=[_report_dict(r) for r in reports],
        )
    return _Captured(reports, accepted)


def _check_liveness(
    runtime: Runtime,
    principal: Principal,
    request: _CheckedRequest,
    bundle: CaptureBundle,
    captured: _Captured,
    given: LivenessReport | None,
) -> _Captured:
    """The bundle's liveness under the org's policy, before anything is sealed or written:
    a refusal is audited on its own and raised (422 `liveness_failed`)."""
    report = given or assess(
        runtime,
        {"liveness": request.liveness},
        [CapturedFrame(i, bundle.frames[i], capture) for i, capture in captured.accepted],
        bundle.liveness_challenge,
        org_id=request.org_id,
    )
    if report.refused:
        with write_transaction(runtime.engine) as conn:
            record(
                conn,
                runtime,
                principal,
                org_id=request.org_id,
                action="enrollment.liveness_rejected",
                target=request.subject_id,
                details={"liveness": report.as_dict()},
            )
        refuse_if_spoof(report)
    return dataclasses.replace(captured, liveness=report)


def _frame_reports(outcomes: list[FrameOutcome]) -> list[FrameReport]:
    reports = []
    for index, outcome in enumerate(outcomes):
        quality = outcome.quality.as_dict() if outcome.quality is not None else None
        if outcome.error is not None:
            error = {"code": outcome.error.code, "message": str(outcome.error)}
            reports.append(FrameReport(index, False, quality, error))
        else:
            reports.append(FrameReport(index, True, quality))
    return reports


def _report_dict(report: FrameReport) -> dict[str, Any]:
    return {k: v for k, v in report.__dict__.items() if v is not None}


def _duplicate_check(
    conn: Connection, runtime: Runtime, request: _CheckedRequest, vectors: np.ndarray
) -> list[DuplicateCandidate]:
    """Other subjects this face is enrolled under, as the policy asks; `reject` refuses.

    Runs inside the enrollment's transaction, after taking the org's enrollment lock: two
    enrollments of one face, on any replicas, cannot both pass the check before either
    commits (on SQLite the write transaction already excludes every other writer).
    """
    if request.policy == "off":
        return []
    feed.lock_for_transaction(conn, f"enroll:{request.org_id}")
    duplicates = find_duplicates(
        runtime, request.org_id, vectors, request.threshold, request.subject_id
    )
    if duplicates and request.policy == "reject":
        raise DuplicateFaceError(
            "the face is already enrolled under another subject",
            candidates=[asdict(d) for d in duplicates],
        )
    return duplicates


def _audit_refusal(
    runtime: Runtime, principal: Principal, request: _CheckedRequest, refusal: DuplicateFaceError
) -> None:
    """The refused enrollment rolled back; its refusal is a decision, audited on its own."""
    with write_transaction(runtime.engine) as conn:
        record(
            conn,
            runtime,
            principal,
            org_id=request.org_id,
            action="enrollment.duplicate_rejected",
            target=request.subject_id,
            details={
                "candidates": refusal.details["candidates"],
                "threshold": request.threshold,
            },
        )


def find_duplicates(
    runtime: Runtime, org_id: str, vectors: np.ndarray, threshold: float, exclude_subject: str
) -> list[DuplicateCandidate]:
    """Other subjects of this org whose enrollments match any of `vectors`, as committed
    before this call (the index catches up first)."""
    index = indexing.current_org_index(runtime, org_id)
    if index.count == 0:
        return []
    result = index.search(vectors, model_id=runtime.model_id, k=10, min_score=threshold)
    best: dict[int, float] = {}
    for q in range(len(vectors)):
        for hit in result.hits(q):
            best[hit.id] = max(best.get(hit.id, -1.0), hit.score)
    if not best:
        return []
    by_subject = subject_ids_for_vectors(runtime, org_id, list(best))
    scores: dict[str, float] = {}
    for vector_id, score in best.items():
        subject_id = by_subject.get(vector_id)
        if subject_id is None or subject_id == exclude_subject:
            continue
        scores[subject_id] = max(scores.get(subject_id, -1.0), score)
    return [
        DuplicateCandidate(s, round(v, 6)) for s, v in sorted(scores.items(), key=lambda kv: -kv[1])
    ]


def subject_ids_for_vectors(runtime: Runtime, org_id: str, vector_ids: list[int]) -> dict[int, str]:
    """Map index ids to the org's active subjects.

    Rows whose hashed reference no longer verifies are left out: the index may hold a
    vector from before the row was edited in the database, and a match must rest on data
    the service itself wrote.
    """
    with read_transaction(runtime.engine) as conn:
        rows = subjects.active_embeddings_by_vector_id(conn, org_id, vector_ids)
    return {
        int(r.vector_id): r.subject_id
        for r in rows
        if indexing.intact_vector(runtime, org_id, r) is not None
    }


def _seal_frames(
    runtime: Runtime, key: SubjectKey, frame_bytes: list[bytes], captured: _Captured
) -> list[_SealedFrame]:
    """Seal each accepted frame and write it to the object store, before the transaction
    that references it; on a failure, what was written is deleted again."""
    sealed: list[_SealedFrame] = []
    try:
        for index, _ in captured.accepted:
            frame_id = new_id("frm")
            seal = key.seal_frame(runtime.kms, frame_bytes[index], object_id=frame_id)
            runtime.objects.put(frame_id, seal.payload)
            sealed.append(_SealedFrame(frame_id, seal.wrapped_dek, seal.kek_version))
    except BaseException:
        _discard(runtime, sealed)
        raise
    return sealed


def _discard(runtime: Runtime, sealed: list[_SealedFrame]) -> None:
    for frame in sealed:
        runtime.objects.delete(frame.frame_id)


def _persist(
    conn: Connection,
    runtime: Runtime,
    principal: Principal,
    request: _CheckedRequest,
    captured: _Captured,
    sealed: list[_SealedFrame],
    duplicates: list[DuplicateCandidate],
) -> EnrollmentResult:
    """The enrollment's rows and its audit row, in the caller's transaction."""
    subject_pk, created = _store_subject(conn, runtime, request)
    bundle_id = new_id("enr")
    reports = _store_embeddings(conn, runtime, request, subject_pk, bundle_id, captured, sealed)
    record(
        conn,
        runtime,
        principal,
        org_id=request.org_id,
        action="enrollment.create",
        target=bundle_id,
        details={
            "subject_id": request.subject_id,
            "embeddings": len(captured.accepted),
            "frames": len(captured.reports),
            "model_id": runtime.model_id,
            "duplicate_check": request.policy,
            "duplicates": [asdict(d) for d in duplicates],
            "pii_fields": sorted(request.pii),
            "liveness": captured.liveness.as_dict(),
        },
    )
    event = {"subject_id": request.subject_id, "enrollment_id": bundle_id}
    record_event(conn, request.org_id, "enrollment.created", event)
    return EnrollmentResult(
        enrollment_id=bundle_id,
        subject_id=request.subject_id,
        subject_created=created,
        model_id=runtime.model_id,
        threshold=request.threshold,
        frames=reports,
        duplicate_check=request.policy,
        duplicates=duplicates,
        liveness=captured.liveness.as_dict(),
    )


def _store_subject(
    conn: Connection, runtime: Runtime, request: _CheckedRequest
) -> tuple[str, bool]:
    """The subject's primary key, and whether this enrollment created it: a new row, or the
    existing one (locked, checked again, any new PII sealed into it).

    The request was checked before inference, outside this transaction; the subject may have
    been created or erased since, on any replica. The lock makes an erasure of the subject
    wait for this enrollment (and then erase it too) or this enrollment see the erasure.
    """
    org_id, subject_id = request.org_id, request.subject_id
    assert request.key is not None  # set by enroll_subject before the transaction
    sealed = sealing.seal_pii(request.key, request.pii)
    if request.existing is None:
        created = subjects.insert_subject(
            conn,
            org_id=org_id,
            subject_id=subject_id,
            nik_sealed=sealed.get("nik_sealed"),
            email_sealed=sealed.get("email_sealed"),
            phone_sealed=sealed.get("phone_sealed"),
        )
        if created is not None:
            return created, True
    row = subjects.find_subject(conn, org_id, subject_id, lock=True)
    if row.status == "erased":
        raise SubjectErasedError(f"subject {subject_id!r} was erased; use a new subject_id")
    if sealed:
        subjects.update_subject_pii(conn, row.id, sealed)
    return str(row.id), False


def _store_embeddings(
    conn: Connection,
    runtime: Runtime,
    request: _CheckedRequest,
    subject_pk: str,
    bundle_id: str,
    captured: _Captured,
    sealed: list[_SealedFrame],
) -> list[FrameReport]:
    """One enrollment row (with its hashed reference) and one frame row per accepted frame;
    returns the final frame reports."""
    reports = list(captured.reports)
    purge_after = utcnow() + timedelta(days=request.frames_days)
    for (index, capture), frame in zip(captured.accepted, sealed, strict=True):
        embedding_id = new_id("emb")
        reference = runtime.hasher.reference(
            org_id=request.org_id,
            model_id=runtime.model_id,
            enrollment_id=embedding_id,
            vector=capture.embedding,
        )
        subjects.insert_enrollment(
            conn,
            org_id=request.org_id,
            subject_pk=subject_pk,
            vector=capture.embedding.astype("<f4").tobytes(),
            dimension=runtime.pipeline.dimension,
            model_id=runtime.model_id,
            hashed_ref=reference,
            quality=capture.quality.as_dict(),
            enrollment_id=embedding_id,
            bundle_id=bundle_id,
            frame_index=index,
        )
        frames.insert_frame(
            conn,
            org_id=request.org_id,
            enrollment_id=embedding_id,
            object_key=frame.frame_id,
            wrapped_dek=frame.wrapped_dek,
            kek_version=frame.kek_version,
            purge_after=purge_after,
            frame_id=frame.frame_id,
        )
        reports[index] = FrameReport(
            index, True, reports[index].quality, None, embedding_id, reference.hex()
        )
    return reports


# --- read -----------------------------------------------------------------------------------


def get_subject(runtime: Runtime, principal: Principal, subject_id: str) -> dict[str, Any]:
    if not SUBJECT_ID.fullmatch(subject_id):
        raise SubjectNotFoundError(f"no subject {subject_id!r}")
    with read_transaction(runtime.engine) as conn:
        row = subjects.find_subject(conn, principal.org_id, subject_id)
        if row is None:
            raise SubjectNotFoundError(f"no subject {subject_id!r}")
        rows = subjects.subject_enrollments(conn, principal.org_id, row.id)
        key = sealing.subject_key_in(conn, runtime, principal.org_id, subject_id)
    bundles: dict[str, dict[str, Any]] = {}
    for e in rows:
        bundle = bundles.setdefault(
            e.bundle_id or e.id,
            {
                "enrollment_id": e.bundle_id or e.id,
                "status": e.status,
                "model_id": e.model_id,
                "created_at": e.created_at,
                "embeddings": [],
            },
        )
        intact = (
            None
            if e.vector is None
            else (indexing.intact_vector(runtime, principal.org_id, e) is not None)
        )
        bundle["embeddings"].append(
            {
                "embedding_id": e.id,
                "frame_index": e.frame_index,
                "status": e.status,
                "hashed_reference": bytes(e.hashed_ref).hex() if e.hashed_ref else None,
                "integrity": {True: "ok", False: "tampered", None: "erased"}[intact],
                "quality": e.quality,
            }
        )
    return {
        "subject_id": row.subject_id,
        "status": row.status,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "erased_at": row.erased_at,
        "pii": sealing.open_pii(runtime, row, key),
        "enrollments": list(bundles.values()),
    }


def list_subjects(
    runtime: Runtime, principal: Principal, limit: int = 50, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the org's subjects, oldest first; pass `next_cursor` back for more."""
    after = pages.after_hex_id(cursor, "sub") if cursor is not None else None
    with read_transaction(runtime.engine) as conn:
        rows = subjects.subjects_page(conn, principal.org_id, after, limit + 1)
        counts = subjects.active_embedding_counts(
            conn, principal.org_id, [r.id for r in rows[:limit]]
        )
    page = [
        {
            "subject_id": r.subject_id,
            "status": r.status,
            "created_at": r.created_at,
            "active_embeddings": int(counts.get(r.id, 0)),
        }
        for r in rows[:limit]
    ]
    next_cursor = (
        pages.encode(*pages.hex_id_position(rows[limit - 1].created_at, rows[limit - 1].id))
        if len(rows) > limit
        else None
    )
    return page, next_cursor


# --- retire and erase -----------------------------------------------------------------------


def retire_enrollment(runtime: Runtime, principal: Principal, enrollment_id: str) -> dict[str, Any]:
    org_id = principal.org_id
    if not text.SERVICE_ID.fullmatch(enrollment_id):
        raise EnrollmentNotFoundError(f"no enrollment {enrollment_id!r}")
    with write_transaction(runtime.engine) as conn:
        rows = subjects.bundle_embeddings(conn, org_id, enrollment_id, lock=True)
        if not rows:
            raise EnrollmentNotFoundError(f"no enrollment {enrollment_id!r}")
        active = [r for r in rows if r.status == "active"]
        if not active:
            raise EnrollmentNotActiveError(f"enrollment {enrollment_id!r} is not active")
        for r in active:
            subjects.set_enrollment_status(
                conn, org_id=org_id, enrollment_id=r.id, status="retired"
            )
        record(
            conn,
            runtime,
            principal,
            org_id=org_id,
            action="enrollment.retire",
            target=enrollment_id,
            details={"embeddings": len(active)},
        )
        record_event(conn, org_id, "enrollment.retired", {"enrollment_id": enrollment_id})
    indexing.catch_up_org(runtime, org_id)
    return {"enrollment_id": enrollment_id, "status": "retired", "embeddings": len(active)}


def erase_subject(runtime: Runtime, principal: Principal, subject_id: str) -> dict[str, Any]:
    """Right to erasure: out of the index at once, frames and PII crypto-shredded.

    The receipt lists what was destroyed and carries a SHA-256 over its canonical JSON, which
    the audit row records too, so the org can later prove what it was told.
    """
    org_id = principal.org_id
    if not SUBJECT_ID.fullmatch(subject_id):
        raise SubjectNotFoundError(f"no subject {subject_id!r}")
    with write_transaction(runtime.engine) as conn:
        receipt, frame_rows, withdrawn_from = erase_rows(conn, org_id, subject_id)
        digest = log_erasure(conn, org_id, subject_id, receipt)
        audit_id = record(
            conn,
            runtime,
            principal,
            org_id=org_id,
            action="subject.erase",
            target=subject_id,
            details={**receipt, "receipt_sha256": digest},
        )
        record_event(conn, org_id, "subject.erased", {"subject_id": subject_id})
    indexing.catch_up_org(runtime, org_id)
    for watchlist_id in withdrawn_from:
        indexing.refresh_watchlist(runtime, watchlist_id)
    for f in frame_rows:
        runtime.objects.delete(f.object_key)
    return {**receipt, "receipt_sha256": digest, "audit_id": audit_id}


def log_erasure(conn: Connection, org_id: str, subject_id: str, receipt: dict[str, Any]) -> str:
    """Log an erasure in the caller's transaction for a restore of an older backup to re-apply
    (`app.backup`; no PII in it). Returns the receipt's SHA-256 over its canonical JSON."""
    digest = hashlib.sha256(
        json.dumps(receipt, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    erased_at = datetime.fromisoformat(receipt["erased_at"])
    rights.log_erasure(conn, rights.Erasure(org_id, subject_id, erased_at, digest))
    return digest


def erase_rows(
    conn: Connection, org_id: str, subject_id: str
) -> tuple[dict[str, Any], list[Any], list[str]]:
    """Erase the subject's rows in the caller's transaction: embeddings erased, frames and
    PII shredded, source documents deleted, watchlist copies withdrawn. Returns the receipt,
    the sealed objects to delete once it commits (frames and source documents, each with its
    `object_key`) and the watchlists whose entries were withdrawn."""
    row = subjects.find_subject(conn, org_id, subject_id, lock=True)
    if row is None:
        raise SubjectNotFoundError(f"no subject {subject_id!r}")
    if row.status == "erased":
        raise SubjectErasedError(f"subject {subject_id!r} is already erased")
    embeddings = subjects.embeddings_of_subject(conn, org_id, row.id)
    for r in embeddings:
        if r.status != "erased":
            subjects.set_enrollment_status(conn, org_id=org_id, enrollment_id=r.id, status="erased")
    frame_rows = frames.frames_of_enrollments(conn, org_id, [r.id for r in embeddings])
    now = utcnow()
    # Dropping the wrapped DEK is the shred: the ciphertext, wherever copies of it survive
    # (backups), can no longer be opened.
    frames.shred(conn, [f.id for f in frame_rows], now)
    # Its ID documents from onboarding (`app.services.onboarding`): rows and DEKs deleted.
    document_rows = documents.delete_documents_of_subject(conn, org_id, subject_id)
    subjects.mark_subject_erased(conn, row.id, now)
    # The subject's own key: what still opens its PII and frames in copies of the database,
    # until the shred destroys the KEK versions that wrapped those copies (app.services.rights).
    key_destroyed = rights.delete_subject_key(conn, org_id, subject_id) > 0
    # Stored answers about it: a replay runs again and meets the erasure, not the old body.
    replays = idempotency_records.delete_for_subject(conn, org_id, subject_id)
    # Copies of its embeddings in shared watchlists go too.
    withdrawn = watchlists.withdraw_copies_of(conn, [r.id for r in embeddings])
    withdrawn_from = sorted({watchlist_id for watchlist_id, _ in withdrawn})
    for watchlist_id in withdrawn_from:
        feed.bump_watchlist(conn, watchlist_id)
    receipt = {
        "subject_id": subject_id,
        "org_id": org_id,
        "erased_at": now.isoformat(),
        "embeddings_erased": len(embeddings),
        "frames_shredded": len(frame_rows),
        "source_documents_deleted": len(document_rows),
        "pii_shredded": [n for n in PII_FIELDS if getattr(row, f"{n}_sealed") is not None],
        "watchlist_entries_withdrawn": len(withdrawn),
        "subject_key_destroyed": key_destroyed,
        "idempotency_records_deleted": replays,
    }
    return receipt, [*frame_rows, *document_rows], withdrawn_from
