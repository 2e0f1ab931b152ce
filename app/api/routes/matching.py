"""Match decisions: 1:1 verify and 1:N search within the caller's org."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.contract import INDEX, PROBE, JsonBodyRoute, errors
from app.api.deps import MatcherDep
from app.api.schemas import (
    ProbeBody,
    SearchRequest,
    SearchResponse,
    VerifyRequest,
    VerifyResponse,
)
from app.services import matching as service

router = APIRouter(tags=["matching"], route_class=JsonBodyRoute)


def probe_from(body: ProbeBody) -> service.Probe:
    return service.Probe(
        image=body.image,
        vector=body.vector,
        model_id=body.model_id,
    )


@router.post(
    "/v1/verify",
    response_model=VerifyResponse,
    responses=errors(
        PROBE,
        {
            404: ("subject_not_found", "liveness_challenge_not_found"),
            409: ("conflict", "liveness_challenge_used"),
            410: ("liveness_challenge_expired",),
            422: ("liveness_failed", "too_many_frames"),
        },
        body=True,
    ),
    summary="1:1 — does the probe match this subject?",
)
async def verify(body: VerifyRequest, caller: MatcherDep) -> VerifyResponse:
    """Compare the probe with the subject's active embeddings: the best cosine score, the
    threshold it was held to (and where that comes from) and the decision. Audited. A
    subject with nothing active to compare with is 409 `conflict`.

    Liveness follows the org's policy and answers in `liveness`: passive PAD on the probe's
    face, and, with `liveness_challenge`, the challenge answered by the probe (the frontal
    first frame) and `liveness_frames`. Under `reject`, a spoof (or a vector probe, which
    cannot be checked) is 422 `liveness_failed`."""
    return VerifyResponse.model_validate(
        await caller.run(
            service.verify_probe,
            body.subject_id,
            probe_from(body.probe),
            body.liveness_challenge,
            body.liveness_frames,
        )
    )


@router.post(
    "/v1/search",
    response_model=SearchResponse,
    responses=errors(PROBE, INDEX, body=True),
    summary="1:N — which of this org's subjects match the probe?",
)
async def search(body: SearchRequest, caller: MatcherDep) -> SearchResponse:
    """Search the org's own index: up to `top_k` subjects at or above the threshold, best
    first. Reflects every enrollment committed before the request arrived, or answers 503."""
    return SearchResponse.model_validate(
        await caller.run(service.search_probe, probe_from(body.probe), body.top_k)
    )
