"""Match decisions: verify (1:1 against one subject) and search (1:N within the org)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from app.errors import ConflictError, InvalidProbeError, SubjectNotFoundError
from app.metrics import SEARCH_SECONDS
from app.runtime import Runtime
from app.services import indexing
from app.services.liveness import LivenessReport, assess_probe, refuse_if_spoof
from app.services.orgs import effective_threshold, org_settings
from app.services.principal import Principal, record
from app.services.probes import Probe, ProbeVector, start_probe
from app.services.subjects import check_subject_id, subject_ids_for_vectors
from app.storage import read_transaction, subjects, write_transaction

MAX_TOP_K = 100

__all__ = ["MAX_TOP_K", "Probe", "search_probe", "verify_probe"]


def _decision(score: float, threshold: float) -> str:
    return "match" if score >= threshold else "no_match"


def verify_probe(
    runtime: Runtime,
    principal: Principal,
    subject_id: str,
    probe: Probe,
    liveness_challenge: str | None = None,
    liveness_frames: Sequence[bytes] = (),
) -> dict[str, Any]:
    """1:1: the best cosine between the probe and the subject's active, intact embeddings,
    and the probe's liveness under the org's policy (`app.services.liveness.assess_probe`;
    a refusal is audited and raised before any decision)."""
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
    liveness = _probe_liveness(
        runtime, principal, subject_id, probe, probe_result, liveness_challenge, liveness_frames
    )
    score = float(np.max(np.stack(gallery) @ probe_result.vector))
    decision = _decision(score, threshold)
    with write_transaction(runtime.engine) as conn:
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
                "liveness": liveness.as_dict(),
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
        "liveness": liveness.as_dict(),
        "audit_id": audit_id,
    }


def _probe_liveness(
    runtime: Runtime,
    principal: Principal,
    subject_id: str,
    probe: Probe,
    probe_result: ProbeVector,
    challenge: str | None,
    challenge_frames: Sequence[bytes],
) -> LivenessReport:
    report = assess_probe(
        runtime,
        org_settings(runtime, principal.org_id),
        principal.org_id,
        probe.image,
        probe_result.capture,
        challenge,
        challenge_frames,
    )
    if report.refused:
        with write_transaction(runtime.engine) as conn:
            record(
                conn,
                runtime,
                principal,
                org_id=principal.org_id,
                action="match.verify_liveness_rejected",
                target=subject_id,
                details={"liveness": report.as_dict(), "probe": probe_result.kind},
            )
        refuse_if_spoof(report)
    return report


def _verify_inputs(
    runtime: Runtime, org_id: str, subject_id: str
) -> tuple[list[np.ndarray], float, str]:
    """The subject's active, intact embeddings and the org's threshold (and its source)."""
    with read_transaction(runtime.engine) as conn:
        rows = subjects.active_embeddings_of_subject(conn, org_id, subject_id, runtime.model_id)
    if rows is None:
        raise SubjectNotFoundError(f"no subject {subject_id!r}")
    gallery = [v for row in rows if (v := indexing.intact_vector(runtime, org_id, row)) is not None]
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
    index = indexing.current_org_index(runtime, org_id)
    candidates: list[dict[str, Any]] = []
    if index.count:
        # A subject may hold several embeddings: ask for more hits than subjects wanted.
        with SEARCH_SECONDS.time():
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
    with write_transaction(runtime.engine) as conn:
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
