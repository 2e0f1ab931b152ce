"""Liveness of a capture: passive PAD on every captured face, the active challenge when one is
sent, and the org's policy over both.

`assess` takes the frames the pipeline already captured (their bytes and their `FaceCapture`:
the detection is reused, nothing is detected twice), scores each face with the PAD model
(`models.liveness`) on the inference pool, checks the challenge when a nonce is sent
(`app.services.challenges.check_challenge`, which uses the nonce up), and returns a
`LivenessReport`. `refuse_if_spoof` turns a report into the refusal the policy asks for.

Policy (org setting ``liveness``; docs/onboarding.md "Liveness policy"):

* ``off`` (default) — the passive model is not run. A challenge nonce, when the client sends
  one, is still checked and reported; nothing is refused on liveness grounds.
* ``flag`` — the passive model runs on every captured face; the report goes in the answer and
  the audit row; nothing is refused.
* ``reject`` — as ``flag``, and a decision other than ``live`` refuses the request with 422
  ``liveness_failed`` (its reasons listed) before anything is stored: a spoof, or a vector
  probe, which carries no pixels to check (``not_checked``, reason ``vector_probe``).

``require_challenge: true`` makes a request without a nonce a spoof (reason
``challenge_required``) under ``flag`` and ``reject``. A nonce that is unknown, used or expired
is refused as such (404/409/410) whatever the policy: the client asked for a check that
cannot run.

Decision: ``not_checked`` when nothing was checked; ``spoof`` when a checked frame scored
under the threshold (``passive_spoof``), the challenge failed (its own reasons) or a required
challenge is missing; ``live`` otherwise. A bundle is as live as its least live frame: each
accepted frame is stored, so each must pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from app.errors import (
    InvalidRequestError,
    InvalidSettingsError,
    LivenessFailedError,
    TooManyFramesError,
)
from app.runtime import Runtime
from app.services.challenges import ChallengeFrame, check_challenge
from models.liveness import DEFAULT_THRESHOLD, PassiveLiveness, face_crop
from models.pipeline import FaceCapture, FacePipeline, FrameOutcome

POLICIES = ("off", "flag", "reject")
DEFAULT_LIVENESS: dict[str, Any] = {
    "policy": "off",
    "passive_threshold": DEFAULT_THRESHOLD,
    "require_challenge": False,
}
#: The live score is the mean of a depth map in [0, 1]; a threshold at either end would pass
#: or refuse everything.
THRESHOLD_RANGE = (0.01, 0.99)


# --- settings ------------------------------------------------------------------------------


def liveness_settings(org_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The org's liveness settings, defaults filled in (orgs made before it have none)."""
    return {**DEFAULT_LIVENESS, **(org_settings.get("liveness") or {})}


def changed_liveness_settings(current: Mapping[str, Any], changes: Any) -> dict[str, Any]:
    """`current` liveness settings with `changes` (a partial object) applied and validated."""
    if not isinstance(changes, Mapping):
        raise InvalidSettingsError("liveness must be an object")
    updated = liveness_settings({"liveness": current})
    for name, value in changes.items():
        if name == "policy":
            if value not in POLICIES:
                raise InvalidSettingsError(f"liveness.policy must be one of {POLICIES}")
        elif name == "passive_threshold":
            low, high = THRESHOLD_RANGE
            number = value if type(value) in (int, float) else None
            if number is None or not math.isfinite(number) or not low <= number <= high:
                raise InvalidSettingsError(
                    f"liveness.passive_threshold must be a number in [{low}, {high}]",
                    bounds=[low, high],
                )
            value = float(number)
        elif name == "require_challenge":
            if type(value) is not bool:
                raise InvalidSettingsError("liveness.require_challenge must be true or false")
        else:
            raise InvalidSettingsError(f"unknown liveness field {name!r}")
        updated[name] = value
    return updated


# --- the report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PassiveFrame:
    index: int  # the frame's position in the request (0: the probe, or the bundle's first)
    score: float
    live: bool


@dataclass(frozen=True)
class PassiveResult:
    model_id: str
    threshold: float
    score: float  # the least live frame's: the bundle's overall score
    live: bool
    frames: list[PassiveFrame]


@dataclass(frozen=True)
class LivenessReport:
    policy: str
    decision: str  # live / spoof / not_checked
    reasons: list[str]
    passive: PassiveResult | None = None
    challenge: dict[str, Any] | None = None  # `ChallengeResult.as_dict()`
    require_challenge: bool = False

    def as_dict(self) -> dict[str, Any]:
        """What the answer and the audit row carry: scores and reasons, never pixels."""
        return asdict(self)

    @property
    def refused(self) -> bool:
        """Under ``reject`` only ``live`` passes: a spoof, or a capture that could not be
        checked (a vector probe carries no pixels)."""
        return self.policy == "reject" and self.decision != "live"


NOT_CHECKED = LivenessReport(policy="off", decision="not_checked", reasons=[])


@dataclass(frozen=True)
class CapturedFrame:
    """A frame of the request as sent, and the face the pipeline captured in it."""

    index: int
    data: bytes
    capture: FaceCapture


def captured_frames(
    frames: Sequence[bytes], outcomes: Sequence[FrameOutcome]
) -> list[CapturedFrame]:
    """The accepted frames of a bundle (`capture_bundle`'s outcomes, same order)."""
    return [
        CapturedFrame(index, data, outcome.capture)
        for index, (data, outcome) in enumerate(zip(frames, outcomes, strict=True))
        if outcome.capture is not None
    ]


# --- the check ------------------------------------------------------------------------------


def _challenge_frames(
    images: Sequence[NDArray[np.uint8]], captures: Sequence[CapturedFrame]
) -> list[ChallengeFrame]:
    return [
        ChallengeFrame(image=image, detection=c.capture.detection, embedding=c.capture.embedding)
        for image, c in zip(images, captures, strict=True)
    ]


def assess(
    runtime: Runtime,
    org_settings: Mapping[str, Any],
    captures: Sequence[CapturedFrame],
    challenge_nonce: str | None = None,
    *,
    org_id: str | None = None,
) -> LivenessReport:
    """The liveness of `captures` under the org's policy (see the module docstring).

    `org_id` is needed only when a challenge is checked (the nonce belongs to an org).
    Raises the challenge errors (404/409/410) for a bad nonce; never refuses on its own
    (`refuse_if_spoof` does)."""
    config = liveness_settings(org_settings)
    policy = str(config["policy"])
    run_passive = policy != "off"
    if not run_passive and challenge_nonce is None:
        return LivenessReport(policy=policy, decision="not_checked", reasons=[])
    images, passive = runtime.inference.run(
        lambda pipeline: _decode_and_score(
            runtime, pipeline, captures, float(config["passive_threshold"]), run_passive
        )
    )
    reasons: list[str] = []
    if passive is not None and not passive.live:
        reasons.append("passive_spoof")
    challenge: dict[str, Any] | None = None
    if challenge_nonce is not None:
        if org_id is None:
            raise ValueError("a challenge is checked for an org: pass org_id")
        result = check_challenge(
            runtime, org_id, challenge_nonce, _challenge_frames(images, captures)
        )
        challenge = result.as_dict()
        reasons.extend(result.reasons)
    elif config["require_challenge"] and run_passive:
        reasons.append("challenge_required")
    return LivenessReport(
        policy=policy,
        decision="spoof" if reasons else "live",
        reasons=reasons,
        passive=passive,
        challenge=challenge,
        require_challenge=bool(config["require_challenge"]),
    )


def _decode_and_score(
    runtime: Runtime,
    pipeline: FacePipeline,
    captures: Sequence[CapturedFrame],
    threshold: float,
    run_passive: bool,
) -> tuple[list[NDArray[np.uint8]], PassiveResult | None]:
    """On the inference pool: decode each frame again (the pipeline keeps no pixels) and
    score its already-detected face."""
    images = [pipeline.decode(c.data) for c in captures]
    if not run_passive or not captures:
        return images, None
    model = runtime.pad.get()
    scores = model.score_crops(
        [
            face_crop(image, c.capture.detection.box)
            for image, c in zip(images, captures, strict=True)
        ]
    )
    frames = [
        PassiveFrame(c.index, round(s, 4), s >= threshold)
        for c, s in zip(captures, scores, strict=True)
    ]
    overall = min(scores)
    return images, PassiveResult(
        model_id=model.model_id,
        threshold=threshold,
        score=round(overall, 4),
        live=overall >= threshold,
        frames=frames,
    )


def assess_probe(
    runtime: Runtime,
    org_settings: Mapping[str, Any],
    org_id: str,
    image: bytes | None,
    capture: FaceCapture | None,
    challenge_nonce: str | None = None,
    challenge_frames: Sequence[bytes] = (),
) -> LivenessReport:
    """The liveness of a match probe (verify): its image, already captured, and, answering a
    challenge, the frames that followed it (the probe is the challenge's frontal first frame;
    these are captured here). A vector probe carries no pixels: ``not_checked`` (reason
    ``vector_probe``), which ``reject`` refuses."""
    config = liveness_settings(org_settings)
    if challenge_frames and challenge_nonce is None:
        raise InvalidRequestError("liveness_frames answer a challenge: send liveness_challenge")
    if image is None or capture is None:
        if challenge_nonce is not None:
            raise InvalidRequestError("a liveness challenge needs an image probe")
        reasons = [] if config["policy"] == "off" else ["vector_probe"]
        return LivenessReport(policy=str(config["policy"]), decision="not_checked", reasons=reasons)
    limit = runtime.settings.max_frames_per_request
    if len(challenge_frames) + 1 > limit:
        raise TooManyFramesError(f"{len(challenge_frames) + 1} frames; at most {limit}")
    captures = [CapturedFrame(0, image, capture)]
    if challenge_frames:
        frames = list(challenge_frames)
        outcomes = runtime.inference.run(lambda pipeline: pipeline.capture_bundle(frames))
        captures += [
            CapturedFrame(position + 1, data, outcome.capture)
            for position, (data, outcome) in enumerate(zip(frames, outcomes, strict=True))
            if outcome.capture is not None
        ]
    return assess(runtime, org_settings, captures, challenge_nonce, org_id=org_id)


def refuse_if_spoof(report: LivenessReport) -> None:
    """Under ``reject``, a spoof refuses the request (422 ``liveness_failed``)."""
    if report.refused:
        raise LivenessFailedError(
            "the capture failed the liveness check: " + ", ".join(report.reasons),
            reasons=list(report.reasons),
            liveness=report.as_dict(),
        )


__all__ = [
    "NOT_CHECKED",
    "POLICIES",
    "CapturedFrame",
    "LivenessReport",
    "PassiveLiveness",
    "assess",
    "assess_probe",
    "captured_frames",
    "changed_liveness_settings",
    "liveness_settings",
    "refuse_if_spoof",
]
