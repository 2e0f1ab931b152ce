"""Match decisions: 1:1 verify and 1:N search within the caller's org."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import MatcherDep
from app.api.schemas import (
    ERRORS,
    ErrorBody,
    ProbeBody,
    SearchRequest,
    SearchResponse,
    VerifyRequest,
    VerifyResponse,
)
from app.services import matching as service

router = APIRouter(tags=["matching"])


def probe_from(body: ProbeBody) -> service.Probe:
    return service.Probe(
        image=body.image,
        vector=body.vector,
        model_id=body.model_id,
    )


@router.post(
    "/v1/verify",
    response_model=VerifyResponse,
    responses={**ERRORS, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
    summary="1:1 — does the probe match this subject?",
)
async def verify(body: VerifyRequest, caller: MatcherDep) -> VerifyResponse:
    return VerifyResponse.model_validate(
        await caller.run(service.verify_probe, body.subject_id, probe_from(body.probe))
    )


@router.post(
    "/v1/search",
    response_model=SearchResponse,
    responses=ERRORS,
    summary="1:N — which of this org's subjects match the probe?",
)
async def search(body: SearchRequest, caller: MatcherDep) -> SearchResponse:
    return SearchResponse.model_validate(
        await caller.run(service.search_probe, probe_from(body.probe), body.top_k)
    )
