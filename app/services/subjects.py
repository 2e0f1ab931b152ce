"""Subjects and their enrollments: enroll a capture bundle, read, list, retire, erase."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.crypto import DecryptionError, Purpose, Scope
from app.errors import (
    DuplicateFaceError,
    EnrollmentNotActiveError,
    EnrollmentNotFoundError,
    ForbiddenError,
    InvalidCursorError,
    InvalidPiiError,
    InvalidRequestError,
    NoUsableFrameError,
    SubjectErasedError,
    SubjectNotFoundError,
    TooManyFramesError,
)
from app.runtime import Runtime
from app.services.orgs import effective_threshold, org_settings
from app.services.principal import Principal, record
from app.storage import new_id, repo
from app.storage.schema import enrollments, frames, subjects, utcnow
from models.pipeline import FrameOutcome

SUBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
# Ids the service generates (`enr_<hex>`). Anything else cannot exist, and must not reach the
# database either: PostgreSQL refuses text with NUL bytes with an error, not an empty result.
SERVICE_ID = re.compile(r"[A-Za-z0-9_]{1,40}")
NIK = re.compile(r"\d{16}")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,63}")
PHONE = re.compile(r"\+?\d{8,15}")
PII_FIELDS = {"nik": Purpose.PII_NIK, "email": Purpose.PII_EMAIL, "phone": Purpose.PII_PHONE}


def check_subject_id(subject_id: str) -> str:
    if not SUBJECT_ID.fullmatch(subject_id):
        raise InvalidRequestError(
            "subject_id must be 1..128 characters of letters, digits and . _ : @ -, "
            "starting with a letter or digit"
        )
    return subject_id


def check_pii(pii: dict[str, str | None]) -> dict[str, str]:
    """Validate NIK (16 digits), email and phone; unknown fields are refused."""
    clean: dict[str, str] = {}
    for name, value in pii.items():
        if name not in PII_FIELDS:
            raise InvalidPiiError(f"unknown PII field {name!r}; allowed: nik, email, phone")
        if value is None:
            continue
        value = value.strip()
        pattern = {"nik": NIK, "email": EMAIL, "phone": PHONE}[name]
        if not pattern.fullmatch(value):
            rule = {"nik": "16 digits", "email": "an email address", "phone": "8-15 digits"}
            raise InvalidPiiError(f"{name} must be {rule[name]}", field=name)
        clean[name] = value
    return clean


def _pii_object_id(org_id: str, subject_id: str, name: str) -> str:
    return f"{org_id}/{subject_id}/{name}"


def _seal_pii(
    runtime: Runtime, org_id: str, subject_id: str, pii: dict[str, str]
) -> dict[str, bytes]:
    return {
        f"{name}_sealed": runtime.cipher.seal(
            value.encode(),
            org_id=org_id,
            object_id=_pii_object_id(org_id, subject_id, name),
            purpose=PII_FIELDS[name],
        )
        for name, value in pii.items()
    }


def _open_pii(runtime: Runtime, row: Any) -> dict[str, str | None]:
    opened: dict[str, str | None] = {}
    for name, purpose in PII_FIELDS.items():
        blob = getattr(row, f"{name}_sealed")
        if blob is None:
            opened[name] = None
            continue
        try:
            opened[name] = runtime.cipher.open(
                bytes(blob),
                org_id=row.org_id,
                object_id=_pii_object_id(row.org_id, row.subject_id, name),
                purpose=purpose,
            ).decode()
        except DecryptionError:
            opened[name] = None  # shredded or tampered: never guess
    return opened


def _subject_row(conn: Connection, org_id: str, subject_id: str) -> Any:
    return conn.execute(
        sa.select(subjects).where(subjects.c.org_id == org_id, subjects.c.subject_id == subject_id)
    ).first()


# --- enroll ---------------------------------------------------------------------------------


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


def find_duplicates(
    runtime: Runtime, org_id: str, vectors: np.ndarray, threshold: float, exclude_subject: str
) -> list[DuplicateCandidate]:
    """Other subjects of this org whose enrollments match any of `vectors`."""
    index = runtime.org_index(org_id)
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
    """Map index ids to the org's active subjects (the org filter is belt and braces).

    Rows whose hashed reference no longer verifies are left out: the index may hold a
    vector from before the row was edited in the database, and a match must rest on data
    the service itself wrote.
    """
    with runtime.read() as conn:
        rows = conn.execute(
            sa.select(
                enrollments.c.id,
                enrollments.c.vector_id,
                enrollments.c.vector,
                enrollments.c.hashed_ref,
                enrollments.c.model_id,
                subjects.c.subject_id,
            )
            .join(subjects, subjects.c.id == enrollments.c.subject_pk)
            .where(
                enrollments.c.org_id == org_id,
                subjects.c.org_id == org_id,
                enrollments.c.vector_id.in_(vector_ids),
                enrollments.c.status == "active",
            )
        ).all()
    return {
        int(r.vector_id): r.subject_id for r in rows if runtime.intact_vector(org_id, r) is not None
    }


def enroll_subject(
    runtime: Runtime,
    principal: Principal,
    subject_id: str,
    frame_bytes: list[bytes],
    duplicate_check: str | None = None,
    pii: dict[str, str | None] | None = None,
    screen_watchlists: bool = False,
    on_commit: Callable[[Connection, EnrollmentResult], None] | None = None,
) -> EnrollmentResult:
    """Enroll a capture bundle; see the module docstring of `app.api.routes.subjects`.

    `on_commit(conn, result)` runs inside the enrollment's transaction, so what it writes
    (the stored answer to an Idempotency-Key) commits with the enrollment or not at all.
    """
    org_id = principal.org_id
    if screen_watchlists and not principal.can(Scope.WATCHLIST):
        raise ForbiddenError("screen_watchlists needs a key with the `watchlist` scope")
    check_subject_id(subject_id)
    clean_pii = check_pii(pii or {})
    if not frame_bytes:
        raise InvalidRequestError("a capture bundle needs at least one frame")
    if len(frame_bytes) > runtime.settings.max_frames_per_request:
        raise TooManyFramesError(
            f"{len(frame_bytes)} frames; at most {runtime.settings.max_frames_per_request}"
        )
    settings = org_settings(runtime, org_id)
    policy = duplicate_check or settings.get("duplicate_policy", "off")
    if policy not in ("off", "flag", "reject"):
        raise InvalidRequestError("duplicate_check must be off, flag or reject")
    threshold, _ = effective_threshold(runtime, settings)

    with runtime.read() as conn:
        existing = _subject_row(conn, org_id, subject_id)
    if existing is not None and existing.status == "erased":
        raise SubjectErasedError(f"subject {subject_id!r} was erased; use a new subject_id")

    outcomes = runtime.infer(lambda pipeline: pipeline.capture_bundle(frame_bytes))
    reports = _frame_reports(outcomes)
    accepted = [(i, o.capture) for i, o in enumerate(outcomes) if o.capture is not None]
    if not accepted:
        raise NoUsableFrameError(
            "no frame of the bundle passed decoding and the quality gate",
            frames=[_report_dict(r) for r in reports],
        )
    vectors = np.stack([c.embedding for _, c in accepted]).astype(np.float32)

    duplicates: list[DuplicateCandidate] = []
    if policy != "off":
        duplicates = find_duplicates(runtime, org_id, vectors, threshold, subject_id)
        if duplicates and policy == "reject":
            with runtime.engine.begin() as conn:
                record(
                    conn,
                    runtime,
                    principal,
                    org_id=org_id,
                    action="enrollment.duplicate_rejected",
                    target=subject_id,
                    details={
                        "candidates": [d.__dict__ for d in duplicates],
                        "threshold": threshold,
                    },
                )
            raise DuplicateFaceError(
                "the face is already enrolled under another subject",
                candidates=[d.__dict__ for d in duplicates],
            )

    # Seal and store the accepted frames before the transaction that references them.
    frame_rows = []
    purge_after = utcnow() + timedelta(days=int(settings["retention"]["frames_days"]))
    written: list[str] = []
    committed = False
    try:
        for index, _ in accepted:
            frame_id = new_id("frm")
            wrapped, payload = runtime.cipher.seal_detached(
                frame_bytes[index], org_id=org_id, object_id=frame_id, purpose=Purpose.FRAME
            )
            runtime.objects.put(frame_id, payload)
            written.append(frame_id)
            frame_rows.append((frame_id, wrapped))

        bundle_id = new_id("enr")
        embedding_ids: list[int] = []
        final_reports = list(reports)
        with runtime.org_writer(org_id):
            with runtime.engine.begin() as conn:
                subject_created = existing is None
                sealed = _seal_pii(runtime, org_id, subject_id, clean_pii)
                if subject_created:
                    subject_pk = repo.insert_subject(
                        conn,
                        org_id=org_id,
                        subject_id=subject_id,
                        nik_sealed=sealed.get("nik_sealed"),
                        email_sealed=sealed.get("email_sealed"),
                        phone_sealed=sealed.get("phone_sealed"),
                    )
                else:
                    subject_pk = existing.id
                    if sealed:
                        conn.execute(
                            sa.update(subjects)
                            .where(subjects.c.id == subject_pk)
                            .values(updated_at=utcnow(), **sealed)
                        )
                for (index, capture), (frame_id, wrapped) in zip(accepted, frame_rows, strict=True):
                    row_id = new_id("emb")
                    reference = runtime.hasher.reference(
                        org_id=org_id,
                        model_id=runtime.model_id,
                        enrollment_id=row_id,
                        vector=capture.embedding,
                    )
                    ref = repo.insert_enrollment(
                        conn,
                        org_id=org_id,
                        subject_pk=subject_pk,
                        vector=capture.embedding.astype("<f4").tobytes(),
                        dimension=runtime.pipeline.dimension,
                        model_id=runtime.model_id,
                        hashed_ref=reference,
                        quality=capture.quality.as_dict(),
                        enrollment_id=row_id,
                        bundle_id=bundle_id,
                        frame_index=index,
                    )
                    repo.insert_frame(
                        conn,
                        org_id=org_id,
                        enrollment_id=row_id,
                        object_key=frame_id,
                        wrapped_dek=wrapped,
                        kek_version=_kek_version(wrapped),
                        purge_after=purge_after,
                        frame_id=frame_id,
                    )
                    embedding_ids.append(ref.vector_id)
                    final_reports[index] = FrameReport(
                        index, True, reports[index].quality, None, row_id, reference.hex()
                    )
                record(
                    conn,
                    runtime,
                    principal,
                    org_id=org_id,
                    action="enrollment.create",
                    target=bundle_id,
                    details={
                        "subject_id": subject_id,
                        "embeddings": len(accepted),
                        "frames": len(frame_bytes),
                        "model_id": runtime.model_id,
                        "duplicate_check": policy,
                        "duplicates": [d.__dict__ for d in duplicates],
                        "pii_fields": sorted(clean_pii),
                    },
                )
                result = EnrollmentResult(
                    enrollment_id=bundle_id,
                    subject_id=subject_id,
                    subject_created=subject_created,
                    model_id=runtime.model_id,
                    threshold=threshold,
                    frames=final_reports,
                    duplicate_check=policy,
                    duplicates=duplicates,
                )
                if on_commit is not None:
                    on_commit(conn, result)
            committed = True
            runtime.index_committed(org_id, embedding_ids, vectors)
    except BaseException:
        # Nothing half-written: no orphan sealed frames either. Once the rows are committed
        # the frames belong to them (the index is rebuilt from the rows at the next start),
        # so a failure after the commit must not delete them.
        if not committed:
            for frame_id in written:
                runtime.objects.delete(frame_id)
        raise
    if screen_watchlists:
        from app.services.watchlists import screen_everywhere

        # The sharpest accepted frame stands for the bundle: one screening, one audit trail.
        best = max(accepted, key=lambda item: item[1].quality.detector_score)[1]
        result.watchlist_hits = screen_everywhere(runtime, principal, best.embedding)
    return result


def _kek_version(wrapped_dek: bytes) -> int:
    from app.crypto import kek_version_of

    return int(kek_version_of(wrapped_dek))


def _report_dict(report: FrameReport) -> dict[str, Any]:
    return {k: v for k, v in report.__dict__.items() if v is not None}


# --- read -----------------------------------------------------------------------------------


def get_subject(runtime: Runtime, principal: Principal, subject_id: str) -> dict[str, Any]:
    if not SUBJECT_ID.fullmatch(subject_id):
        raise SubjectNotFoundError(f"no subject {subject_id!r}")
    with runtime.read() as conn:
        row = _subject_row(conn, principal.org_id, subject_id)
        if row is None:
            raise SubjectNotFoundError(f"no subject {subject_id!r}")
        rows = conn.execute(
            sa.select(enrollments)
            .where(enrollments.c.subject_pk == row.id, enrollments.c.org_id == principal.org_id)
            .order_by(enrollments.c.created_at, enrollments.c.frame_index)
        ).all()
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
            None if e.vector is None else (runtime.intact_vector(principal.org_id, e) is not None)
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
        "pii": _open_pii(runtime, row),
        "enrollments": list(bundles.values()),
    }


def _encode_cursor(created_at: datetime, pk: str) -> str:
    raw = json.dumps([created_at.isoformat(), pk]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, pk = json.loads(raw)
        moment = datetime.fromisoformat(created)
    except (ValueError, TypeError) as exc:
        raise InvalidCursorError("cursor is not one this API returned") from exc
    if moment.tzinfo is None:  # ours are always UTC; a naive one would fail in the query
        raise InvalidCursorError("cursor is not one this API returned")
    return moment, str(pk)


def list_subjects(
    runtime: Runtime, principal: Principal, limit: int = 50, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the org's subjects, oldest first; pass `next_cursor` back for more."""
    stmt = sa.select(subjects).where(subjects.c.org_id == principal.org_id)
    if cursor:
        created, pk = _decode_cursor(cursor)
        stmt = stmt.where(
            sa.or_(
                subjects.c.created_at > created,
                sa.and_(subjects.c.created_at == created, subjects.c.id > pk),
            )
        )
    with runtime.read() as conn:
        rows = conn.execute(
            stmt.order_by(subjects.c.created_at, subjects.c.id).limit(limit + 1)
        ).all()
        counts: dict[str, int] = dict(
            conn.execute(
                sa.select(enrollments.c.subject_pk, sa.func.count())
                .where(
                    enrollments.c.org_id == principal.org_id,
                    enrollments.c.status == "active",
                    enrollments.c.subject_pk.in_([r.id for r in rows[:limit]]),
                )
                .group_by(enrollments.c.subject_pk)
            ).all()
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
        _encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id)
        if len(rows) > limit
        else None
    )
    return page, next_cursor


# --- retire and erase -----------------------------------------------------------------------


def retire_enrollment(runtime: Runtime, principal: Principal, enrollment_id: str) -> dict[str, Any]:
    org_id = principal.org_id
    if not SERVICE_ID.fullmatch(enrollment_id):
        raise EnrollmentNotFoundError(f"no enrollment {enrollment_id!r}")
    with runtime.org_writer(org_id):
        with runtime.engine.begin() as conn:
            rows = conn.execute(
                sa.select(enrollments.c.id, enrollments.c.vector_id, enrollments.c.status).where(
                    enrollments.c.org_id == org_id, enrollments.c.bundle_id == enrollment_id
                )
            ).all()
            if not rows:
                raise EnrollmentNotFoundError(f"no enrollment {enrollment_id!r}")
            active = [r for r in rows if r.status == "active"]
            if not active:
                raise EnrollmentNotActiveError(f"enrollment {enrollment_id!r} is not active")
            for r in active:
                repo.set_enrollment_status(
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
        runtime.org_index(org_id).remove([r.vector_id for r in active])
    return {"enrollment_id": enrollment_id, "status": "retired", "embeddings": len(active)}


def erase_subject(runtime: Runtime, principal: Principal, subject_id: str) -> dict[str, Any]:
    """Right to erasure: out of the index at once, frames and PII crypto-shredded.

    The receipt lists what was destroyed and carries a SHA-256 over its canonical JSON, which
    the audit row records too, so the org can later prove what it was told.
    """
    org_id = principal.org_id
    if not SUBJECT_ID.fullmatch(subject_id):
        raise SubjectNotFoundError(f"no subject {subject_id!r}")
    with runtime.org_writer(org_id):
        with runtime.engine.begin() as conn:
            row = _subject_row(conn, org_id, subject_id)
            if row is None:
                raise SubjectNotFoundError(f"no subject {subject_id!r}")
            if row.status == "erased":
                raise SubjectErasedError(f"subject {subject_id!r} is already erased")
            rows = conn.execute(
                sa.select(enrollments.c.id, enrollments.c.vector_id, enrollments.c.status).where(
                    enrollments.c.org_id == org_id, enrollments.c.subject_pk == row.id
                )
            ).all()
            for r in rows:
                if r.status != "erased":
                    repo.set_enrollment_status(
                        conn, org_id=org_id, enrollment_id=r.id, status="erased"
                    )
            frame_rows = conn.execute(
                sa.select(frames.c.id, frames.c.object_key).where(
                    frames.c.org_id == org_id, frames.c.enrollment_id.in_([r.id for r in rows])
                )
            ).all()
            now = utcnow()
            # Dropping the wrapped DEK is the shred: the ciphertext, wherever copies of it
            # survive (backups), can no longer be opened.
            conn.execute(
                sa.update(frames)
                .where(frames.c.id.in_([f.id for f in frame_rows]))
                .values(wrapped_dek=None, purged_at=now)
            )
            conn.execute(
                sa.update(subjects)
                .where(subjects.c.id == row.id)
                .values(
                    status="erased",
                    erased_at=now,
                    updated_at=now,
                    nik_sealed=None,
                    email_sealed=None,
                    phone_sealed=None,
                )
            )
            receipt = {
                "subject_id": subject_id,
                "org_id": org_id,
                "erased_at": now.isoformat(),
                "embeddings_erased": len(rows),
                "frames_shredded": len(frame_rows),
                "pii_shredded": [n for n in PII_FIELDS if getattr(row, f"{n}_sealed") is not None],
            }
            # Copies of its embeddings in shared watchlists go too.
            from app.services.watchlists import remove_from_indexes, withdraw_embeddings

            withdrawn = withdraw_embeddings(runtime, conn, [r.id for r in rows])
            receipt["watchlist_entries_withdrawn"] = len(withdrawn)
            digest = hashlib.sha256(
                json.dumps(receipt, sort_keys=True, separators=(",", ":")).encode()
            ).hexdigest()
            audit_id = record(
                conn,
                runtime,
                principal,
                org_id=org_id,
                action="subject.erase",
                target=subject_id,
                details={**receipt, "receipt_sha256": digest},
            )
        runtime.org_index(org_id).remove([r.vector_id for r in rows if r.status == "active"])
    remove_from_indexes(runtime, withdrawn)
    for f in frame_rows:
        runtime.objects.delete(f.object_key)
    return {**receipt, "receipt_sha256": digest, "audit_id": audit_id}
