"""Match decisions: verify (1:1 against one subject) and search (1:N within the org)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from app.errors import ConflictError, InvalidProbeError, SubjectNotFoundError
from app.runtime import Runtime
from app.services.orgs import effective_threshold, org_settings
from app.services.principal import Principal, record
from app.services.subjects import check_subject_id, subject_ids_for_vectors
from app.storage.schema import enrollments, subjects
from models.pipeline import FaceCapture

MAX_TOP_K = 100


@dataclass(frozen=True)
class Probe:
    """An image to run through the pipeline, or a vector from the same model pack."""

    image: bytes | None = None
    vector: list[float] | None = None
    model_id: str | None = None


@dataclass(frozen=True)
class ProbeVector:
    vector: np.ndarray
    kind: str
    quality: dict[str, Any] | None


def probe_vector(runtime: Runtime, probe: Probe) -> ProbeVector:
    return start_probe(runtime, probe).wait()


class PendingProbe:
    """A probe whose capture may still be running on the inference pool."""

    def __init__(
        self, capture: Future[FaceCapture] | None = None, vector: ProbeVector | None = None
    ) -> None:
        self._capture = capture
        self._vector = vector

    def wait(self) -> ProbeVector:
        if self._capture is None:
            assert self._vector is not None
            return self._vector
        capture = self._capture.result()
        return ProbeVector(capture.embedding, "image", capture.quality.as_dict())

    def cancel(self) -> None:
        """Drop the capture if it has not started: a request that fails early must not leave
        work queued behind it (each request otherwise waits for its own capture, which is
        what bounds the queue)."""
        if self._capture is not None:
            self._capture.cancel()


def start_probe(runtime: Runtime, probe: Probe) -> PendingProbe:
    """Check the probe and start its capture on the inference pool.

    Lets a caller read what it needs from the database while the models run on another core;
    the caller must `wait()` for it or `cancel()` it. Errors in the image surface when
    waiting; errors in a vector probe right away.
    """
    if (probe.image is None) == (probe.vector is None):
        raise InvalidProbeError("send exactly one of an image or a vector as the probe")
    if probe.image is not None:
        image = probe.image
        return PendingProbe(capture=runtime.infer_later(lambda pipeline: pipeline.capture(image)))
    return PendingProbe(vector=_vector_probe(runtime, probe))


def _vector_probe(runtime: Runtime, probe: Probe) -> ProbeVector:
    assert probe.vector is not None
    if probe.model_id != runtime.model_id:
        raise InvalidProbeError(
            f"vector probes must come from model {runtime.model_id!r}, got {probe.model_id!r}"
        )
    vector = np.asarray(probe.vector, dtype=np.float64)
    if vector.shape != (runtime.pipeline.dimension,):
        raise InvalidProbeError(
            f"the probe vector has {vector.size} values; model {runtime.model_id} makes "
            f"{runtime.pipeline.dimension}"
        )
    norm = float(np.linalg.norm(vector)) if np.isfinite(vector).all() else 0.0
    if not norm > 1e-6:
        raise InvalidProbeError("the probe vector must be finite and non-zero")
    return ProbeVector((vector / norm).astype(np.float32), "vector", None)


def _decision(score: float, threshold: float) -> str:
    return "match" if score >= threshold else "no_match"


def verify_probe(
    runtime: Runtime, principal: Principal, subject_id: str, probe: Probe
) -> dict[str, Any]:
    """1:1: the best cosine between the probe and the subject's active, intact embeddings."""
    org_id = principal.org_id
    check_subject_id(subject_id)
    # The capture runs while the subject's embeddings and the org's threshold are read.
    pending = start_probe(runtime, probe)
    try:
        gallery, threshold, source = _verify_inputs(runtime, org_id, subject_id)
    except BaseException:
        pending.cancel()
        raise
    probe_result = pending.wait()
    score = float(np.max(np.stack(gallery) @ probe_result.vector))
    decision = _decision(score, threshold)
    with runtime.engine.begin() as conn:
        audit_id = record(
            conn,
            runtime,
            principal,
            org_id=org_id,
            action="match.verify",
            target=subject_id,
            details={
                "score": round(score, 6),
                "threshold": threshold,
                "decision": decision,
                "model_id": runtime.model_id,
                "probe": probe_result.kind,
            },
        )
    return {
        "subject_id": subject_id,
        "score": round(score, 6),
        "threshold": threshold,
        "threshold_source": source,
        "decision": decision,
        "model_id": runtime.model_id,
        "probe": probe_result.kind,
        "probe_quality": probe_result.quality,
        "audit_id": audit_id,
    }


# Built once: every verify runs both (see `_verify_inputs`).
_SUBJECT = sa.select(subjects.c.id, subjects.c.status).where(
    subjects.c.org_id == sa.bindparam("org_id"),
    subjects.c.subject_id == sa.bindparam("subject_id"),
)
_ACTIVE_ENROLLMENTS = sa.select(
    enrollments.c.id, enrollments.c.vector, enrollments.c.hashed_ref, enrollments.c.model_id
).where(
    enrollments.c.org_id == sa.bindparam("org_id"),
    enrollments.c.subject_pk == sa.bindparam("subject_pk"),
    enrollments.c.status == "active",
    enrollments.c.model_id == sa.bindparam("model_id"),
)


def _verify_inputs(
    runtime: Runtime, org_id: str, subject_id: str
) -> tuple[list[np.ndarray], float, str]:
    """The subject's active, intact embeddings and the org's threshold (and its source)."""
    with runtime.read() as conn:
        subject = conn.execute(_SUBJECT, {"org_id": org_id, "subject_id": subject_id}).first()
        if subject is None or subject.status != "active":
            raise SubjectNotFoundError(f"no subject {subject_id!r}")
        rows = conn.execute(
            _ACTIVE_ENROLLMENTS,
            {"org_id": org_id, "subject_pk": subject.id, "model_id": runtime.model_id},
        ).all()
    gallery = [v for row in rows if (v := runtime.intact_vector(org_id, row)) is not None]
    if not gallery:
        raise ConflictError(f"subject {subject_id!r} has no active enrollment to verify against")
    threshold, source = effective_threshold(runtime, org_settings(runtime, org_id))
    return gallery, threshold, source


def search_probe(
    runtime: Runtime, principal: Principal, probe: Probe, top_k: int = 5
) -> dict[str, Any]:
    """1:N within the caller's org: the best-scoring subjects above the threshold."""
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidProbeError(f"top_k must be 1..{MAX_TOP_K}")
    org_id = principal.org_id
    pending = start_probe(runtime, probe)
    try:
        threshold, source = effective_threshold(runtime, org_settings(runtime, org_id))
    except BaseException:
        pending.cancel()
        raise
    probe_result = pending.wait()
    index = runtime.org_index(org_id)
    candidates: list[dict[str, Any]] = []
    if index.count:
        # A subject may hold several embeddings: ask for more hits than subjects wanted.
        result = index.search(
            probe_result.vector, model_id=runtime.model_id, k=top_k * 4, min_score=threshold
        )
        hits = result.hits(0)
        by_subject = subject_ids_for_vectors(runtime, org_id, [h.id for h in hits])
        best: dict[str, float] = {}
        for hit in hits:
            subject_id = by_subject.get(hit.id)
            if subject_id is not None and hit.score > best.get(subject_id, -2.0):
                best[subject_id] = hit.score
        candidates = [
            {"subject_id": s, "score": round(v, 6), "decision": "match"}
            for s, v in sorted(best.items(), key=lambda kv: -kv[1])[:top_k]
        ]
    with runtime.engine.begin() as conn:
        audit_id = record(
            conn,
            runtime,
            principal,
            org_id=org_id,
            action="match.search",
            target=f"top_k={top_k}",
            details={
                "candidates": candidates,
                "threshold": threshold,
                "model_id": runtime.model_id,
                "probe": probe_result.kind,
                "gallery_size": index.count,
            },
        )
    return {
        "candidates": candidates,
        "threshold": threshold,
        "threshold_source": source,
        "model_id": runtime.model_id,
        "gallery_size": index.count,
        "probe": probe_result.kind,
        "probe_quality": probe_result.quality,
        "audit_id": audit_id,
    }
