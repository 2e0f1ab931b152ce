"""Onboarding's first face check: is the person in this selfie the person on this ID document?

`compare_faces` reads top to bottom: check the request → capture both sides at once (the
selfie through the selfie gate, the document through `models.documents`) → score against the
org's threshold → the selfie's liveness under the org's policy (as verify judges its probe)
→ seal the document (a *source document*) → persist (one transaction: the document's row,
the audit row, the stored answer to an `Idempotency-Key`) → optionally enroll the selfie,
through enroll's own code path, in that same transaction.

Source documents are sealed exactly as frames are (a fresh DEK wrapped by the org KEK, the
payload in the object store; purpose `frame`, object id `doc_…`); when the selfie is enrolled
in the same call the document belongs to that subject and its payload key also mixes in the
subject's key, so erasing the subject crypto-shreds it as it does the frames. Never served;
deleted with the subject (`app.services.subjects.erase_rows`) or with a closed org, and swept
after the org's `retention.source_documents_days` (`app.services.retention`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from app.crypto import Purpose, Scope
from app.errors import ForbiddenError, InvalidRequestError, SubjectErasedError
from app.runtime import Runtime
from app.services import idempotency, sealing
from app.services.liveness import LivenessReport, assess_probe, refuse_if_spoof
from app.services.orgs import DUPLICATE_POLICIES, effective_threshold, org_settings
from app.services.principal import Principal, record
from app.services.subjects import CaptureBundle, EnrollmentResult, check_subject_id, enroll_subject
from app.storage import Connection, new_id, read_transaction, subjects, write_transaction
from app.storage import documents as source_documents
from models.documents import DocumentCapture, DocumentSettings, capture_document
from models.errors import FacePipelineError
from models.imaging import sniff_image_type
from models.pipeline import FaceCapture, FrameOutcome

REFERENCE_KINDS = ("document", "photo")
#: The document side's detection and quality settings (README "Onboarding").
DOCUMENT_SETTINGS = DocumentSettings()


@dataclass(frozen=True)
class CompareRequest:
    """A selfie (`probe`) and the reference it is compared with: an ID document's image (the
    default; sealed and kept as a source document) or a plain photo (not kept)."""

    probe: bytes
    reference: bytes
    reference_kind: str = "document"
    #: Enroll the selfie under this subject when it matches (None: compare only).
    enroll_subject_id: str | None = None
    duplicate_check: str | None = None
    #: A nonce from `POST /v1/liveness/challenges`, answered by the selfie (the frontal first
    #: frame) and `liveness_frames` (the frames captured after it, in order).
    liveness_challenge: str | None = None
    liveness_frames: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class _Sealed:
    document_id: str
    wrapped_dek: bytes
    kek_version: int
    media_type: str
    byte_size: int
    subject_id: str | None


@dataclass(frozen=True)
class _Compared:
    probe: FaceCapture
    reference: FaceCapture | DocumentCapture
    score: float
    threshold: float
    threshold_source: str

    @property
    def decision(self) -> str:
        return "match" if self.score >= self.threshold else "no_match"


def compare_faces(
    runtime: Runtime,
    principal: Principal,
    request: CompareRequest,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Compare the selfie with the reference; keep a document sealed; enroll on a match if
    asked. With `idempotency_key` (reserved by the caller) the answer is stored in the same
    transaction as the document and the enrollment."""
    _check_request(runtime, principal, request)
    compared = _compare(runtime, principal.org_id, request)
    # As verify does: the selfie's liveness under the org's policy; a refusal stores nothing.
    liveness = _selfie_liveness(runtime, principal, request, compared)
    enroll = request.enroll_subject_id is not None and compared.decision == "match"
    sealed = _seal_document(runtime, principal.org_id, request, enroll)
    answer: dict[str, Any] = {}

    def persist(conn: Connection, enrollment: EnrollmentResult | None) -> tuple[int, Any]:
        answer.update(
            _persist(conn, runtime, principal, request, compared, liveness, sealed, enrollment)
        )
        return 200, answer

    try:
        if enroll:
            assert request.enroll_subject_id is not None
            bundle = CaptureBundle([request.probe], request.duplicate_check)
            enroll_subject(
                runtime,
                principal,
                request.enroll_subject_id,
                bundle,
                idempotency_key,
                within=persist,
                # The selfie was captured and assessed for the comparison: enroll does not run
                # it again (nor spend the challenge's nonce a second time).
                outcomes=[FrameOutcome(compared.probe, None)],
                liveness=liveness,
            )
        else:
            with write_transaction(runtime.engine) as conn:
                persist(conn, None)
                if idempotency_key is not None:
                    idempotency.store_answer(conn, principal.org_id, idempotency_key, 200, answer)
    except BaseException:
        # Nothing half-written: the sealed document goes if its row did not commit. A failure
        # after the commit (enroll's index catch-up) leaves it to the row that owns it.
        if sealed is not None and not _committed(runtime, principal.org_id, sealed.document_id):
            runtime.objects.delete(sealed.document_id)
        raise
    return answer


def _committed(runtime: Runtime, org_id: str, document_id: str) -> bool:
    """Whether the document's row exists; when that cannot be read, True: the orphan sweep
    (`app.services.retention`) deletes an object no row took."""
    try:
        with read_transaction(runtime.engine) as conn:
            return source_documents.find_document(conn, org_id, document_id) is not None
    except Exception:
        return True


def _check_request(runtime: Runtime, principal: Principal, request: CompareRequest) -> None:
    """Every check that needs no inference."""
    if request.reference_kind not in REFERENCE_KINDS:
        raise InvalidRequestError("reference.kind must be document or photo")
    if not request.probe or not request.reference:
        raise InvalidRequestError("send both images: the probe (selfie) and the reference")
    subject_id = request.enroll_subject_id
    if subject_id is None:
        if request.duplicate_check is not None:
            raise InvalidRequestError("duplicate_check goes with enroll")
        return
    if not principal.can(Scope.ENROLL):
        raise ForbiddenError("enroll needs a key with the `enroll` scope")
    check_subject_id(subject_id)
    if request.duplicate_check is not None and request.duplicate_check not in DUPLICATE_POLICIES:
        raise InvalidRequestError("duplicate_check must be off, flag or reject")
    with read_transaction(runtime.engine) as conn:
        existing = subjects.find_subject(conn, principal.org_id, subject_id)
    if existing is not None and existing.status == "erased":
        raise SubjectErasedError(f"subject {subject_id!r} was erased; use a new subject_id")


def _compare(runtime: Runtime, org_id: str, request: CompareRequest) -> _Compared:
    """Both captures on the inference pool at once, while the org's threshold is read."""
    probe = runtime.inference.submit(lambda pipeline: pipeline.capture(request.probe))
    if request.reference_kind == "document":
        reference: Any = runtime.inference.submit(
            lambda pipeline: capture_document(pipeline, request.reference, DOCUMENT_SETTINGS)
        )
    else:
        reference = runtime.inference.submit(lambda pipeline: pipeline.capture(request.reference))
    try:
        threshold, source = effective_threshold(runtime, org_settings(runtime, org_id))
    except BaseException:
        probe.cancel()
        reference.cancel()
        raise
    probe_capture = _side("probe", probe.result)
    reference_capture = _side("reference", reference.result)
    score = float(probe_capture.embedding @ reference_capture.embedding)
    return _Compared(probe_capture, reference_capture, round(score, 6), threshold, source)


def _selfie_liveness(
    runtime: Runtime, principal: Principal, request: CompareRequest, compared: _Compared
) -> LivenessReport:
    """The selfie's liveness (`app.services.liveness.assess_probe`); under `reject`, a spoof
    is audited on its own and refused (422 `liveness_failed`) before anything is sealed."""
    report = assess_probe(
        runtime,
        org_settings(runtime, principal.org_id),
        principal.org_id,
        request.probe,
        compared.probe,
        request.liveness_challenge,
        request.liveness_frames,
    )
    if report.refused:
        with write_transaction(runtime.engine) as conn:
            record(
                conn,
                runtime,
                principal,
                org_id=principal.org_id,
                action="onboarding.compare_liveness_rejected",
                target=request.enroll_subject_id or "compare",
                details={"liveness": report.as_dict(), "score": compared.score},
            )
        refuse_if_spoof(report)
    return report


def _side(name: str, result: Callable[[], Any]) -> Any:
    """A side's capture; its refusal names the side (`no_face` alone would not say which)."""
    try:
        return result()
    except FacePipelineError as error:
        error.args = (f"{name}: {error}",)
        raise


def _seal_document(
    runtime: Runtime, org_id: str, request: CompareRequest, enroll: bool
) -> _Sealed | None:
    """Seal a document reference and write it to the object store, before the transaction
    that references it. Under the subject's own key as well when it is being enrolled."""
    if request.reference_kind != "document":
        return None
    document_id = new_id("doc")
    subject_id = request.enroll_subject_id if enroll else None
    if subject_id is not None:
        key = sealing.ensure_subject_key(runtime, org_id, subject_id)
        sealed = key.seal_frame(runtime.kms, request.reference, object_id=document_id)
    else:
        sealed = runtime.cipher.seal_detached(
            request.reference, org_id=org_id, object_id=document_id, purpose=Purpose.FRAME
        )
    runtime.objects.put(document_id, sealed.payload)
    return _Sealed(
        document_id=document_id,
        wrapped_dek=sealed.wrapped_dek,
        kek_version=sealed.kek_version,
        media_type=f"image/{sniff_image_type(request.reference)}",
        byte_size=len(request.reference),
        subject_id=subject_id,
    )


def _persist(
    conn: Connection,
    runtime: Runtime,
    principal: Principal,
    request: CompareRequest,
    compared: _Compared,
    liveness: LivenessReport,
    sealed: _Sealed | None,
    enrollment: EnrollmentResult | None,
) -> dict[str, Any]:
    """The document's row and the decision's audit row (no image, no PII); the answer."""
    if sealed is not None:
        source_documents.insert_document(
            conn,
            document_id=sealed.document_id,
            org_id=principal.org_id,
            subject_id=sealed.subject_id,
            wrapped_dek=sealed.wrapped_dek,
            kek_version=sealed.kek_version,
            media_type=sealed.media_type,
            byte_size=sealed.byte_size,
        )
    document_id = sealed.document_id if sealed is not None else None
    details = {
        "score": compared.score,
        "threshold": compared.threshold,
        "decision": compared.decision,
        "model_id": runtime.model_id,
        "reference_kind": request.reference_kind,
        "document_id": document_id,
        "enrollment_id": enrollment.enrollment_id if enrollment else None,
        "liveness": liveness.as_dict(),
    }
    audit_id = record(
        conn,
        runtime,
        principal,
        org_id=principal.org_id,
        action="onboarding.compare",
        target=document_id or (enrollment.subject_id if enrollment else "compare"),
        details=details,
    )
    reference = compared.reference
    return {
        "decision": compared.decision,
        "score": compared.score,
        "threshold": compared.threshold,
        "threshold_source": compared.threshold_source,
        "model_id": runtime.model_id,
        "probe_quality": compared.probe.quality.as_dict(),
        "reference_kind": request.reference_kind,
        "reference_quality": reference.quality.as_dict(),
        "reference_rotation_degrees": getattr(reference, "rotation_degrees", 0),
        "document_id": document_id,
        "enrollment": asdict(enrollment) if enrollment is not None else None,
        "liveness": liveness.as_dict(),
        "audit_id": audit_id,
    }


def open_source_document(runtime: Runtime, org_id: str, document_id: str) -> bytes | None:
    """A source document's bytes, for the service itself (never served by any endpoint);
    None when there is no such document or it no longer opens (its subject was erased)."""
    with read_transaction(runtime.engine) as conn:
        row = source_documents.find_document(conn, org_id, document_id)
        if row is None:
            return None
        key = (
            sealing.subject_key_in(conn, runtime, org_id, row.subject_id)
            if row.subject_id is not None
            else None
        )
    if row.subject_id is not None and key is None:
        return None
    payload = runtime.objects.get(row.object_key)
    return sealing.open_frame(runtime, org_id, key, document_id, bytes(row.wrapped_dek), payload)
