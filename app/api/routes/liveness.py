"""Active liveness: issue a head-movement challenge for the next capture bundle."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter

from app.api.contract import JsonBodyRoute, errors
from app.api.deps import EnrollerDep
from app.api.schemas import LivenessChallengeCreated
from app.runtime import Runtime
from app.services import challenges as service
from app.services.principal import Principal

router = APIRouter(tags=["liveness"], route_class=JsonBodyRoute)


def _issue(runtime: Runtime, principal: Principal) -> service.IssuedChallenge:
    return service.create_challenge(runtime, principal.org_id, principal)


@router.post(
    "/v1/liveness/challenges",
    status_code=201,
    response_model=LivenessChallengeCreated,
    responses=errors(),
    summary="Create an active liveness challenge (the nonce is shown once)",
)
async def create_liveness_challenge(caller: EnrollerDep) -> LivenessChallengeCreated:
    """A single-use nonce, valid for about two minutes, and 2-3 random head movements
    (`turn_left`, `turn_right`, `look_up`, `look_down`; directions are the person's own, on
    unmirrored frames). Capture a frontal frame, then one or more frames per step, in order,
    and send them as one bundle to enroll, verify or compare with the nonce as
    `liveness_challenge`. The bundle fails with named reasons (`too_few_frames`,
    `start_not_frontal`, `sequence_not_followed`, `face_changed`, `static_frames`); a nonce
    is refused when unknown or another org's (404 `liveness_challenge_not_found`), used
    before (409 `liveness_challenge_used`) or expired (410 `liveness_challenge_expired`).

    No body. Not idempotent by design: a stored answer would keep the nonce in the clear; a
    retry gets a fresh challenge, and an unused one expires. Audited (never the nonce)."""
    issued = await caller.run(_issue)
    return LivenessChallengeCreated.model_validate(dataclasses.asdict(issued))
