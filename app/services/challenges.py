"""Active liveness: a single-use challenge (a nonce and a short random sequence of head
movements) that a capture bundle must answer.

`create_challenge` issues one: 32 random bytes (URL-safe base64, shown once; only their SHA-256
is stored), 2-3 random steps, valid for `CHALLENGE_TTL`. `check_challenge` uses the nonce up
(atomically, once: a second use is `LivenessChallengeUsedError`, whatever the first bundle
showed) and judges the bundle's frames, in the order they were captured:

* ``too_few_frames`` — fewer frames than a frontal start plus one per step;
* ``start_not_frontal`` — the first frame is not within `CENTER_DEGREES` of frontal;
* ``sequence_not_followed`` — the movements the frames show (each frame's pose against the
  first frame's: beyond `STEP_DEGREES` in one direction) are not the steps asked for, in
  their order (returns to the centre in between are fine);
* ``face_changed`` — some frame's embedding is further from the first frame's than the model
  pack's match threshold (cosine);
* ``static_frames`` — two consecutive frames are near-duplicates (mean absolute difference of
  their aligned grayscale face crops, shrunk to 16×16, under `STATIC_MEAN_ABS_DIFF`): a
  replayed photo.

What it does not stop, by design: a tilted printed photo or a screen moved by hand can move
the landmarks the way a turn does, and a live deepfake can follow any sequence. The nonce
and the random sequence stop replays of recorded captures; passive PAD
(`app.services.liveness`) is the check for presentation attacks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from app.errors import (
    LivenessChallengeExpiredError,
    LivenessChallengeNotFoundError,
    LivenessChallengeUsedError,
)
from app.runtime import Runtime
from app.services.principal import Principal, record
from app.storage import challenges as store
from app.storage import new_id, read_transaction, utcnow, write_transaction
from models.alignment import align_face
from models.detector import Detection
from models.head_pose import HeadPose, estimate_head_pose
from models.pipeline import FaceCapture, FacePipeline, FrameOutcome

FloatArray = NDArray[np.float32]

STEPS = ("turn_left", "turn_right", "look_up", "look_down")
INSTRUCTIONS = {
    "center": "Look straight at the camera.",
    "turn_left": "Turn your head to your left.",
    "turn_right": "Turn your head to your right.",
    "look_up": "Tilt your head up.",
    "look_down": "Tilt your head down.",
}
#: How long a challenge can be answered: time to read it, move, and upload.
CHALLENGE_TTL = timedelta(seconds=120)
MIN_STEPS, MAX_STEPS = 2, 3
NONCE_BYTES = 32
_NONCE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # 32 bytes, URL-safe base64, unpadded
#: A step counts once the pose moved this far from the first frame's, in its direction.
STEP_DEGREES = 15.0
#: A frame within this of the first frame's pose on both axes shows the centre again.
RETURN_DEGREES = 8.0
#: The first frame's estimated pose must lie within this of frontal (see models.head_pose:
#: the absolute angles are estimates good to perhaps ±10°).
CENTER_DEGREES = 20.0
#: Mean absolute difference (grey levels of 255) of two frames' aligned face crops, shrunk to
#: 16×16 (which averages out the detector's landmark jitter and JPEG noise), under which they
#: count as the same picture. Measured on six real faces (docs/onboarding.md): identical
#: bytes 0; JPEG q95 re-encodes 0.4-2.0, q60 1.4-5.3, q40 2.0-7.7; rescaled copies 2.4-5.7;
#: synthetic turns of 3° 3.3-7.3, 6° 4.6-14.3, 15° 14-22. Heavier re-encodes of one photo
#: can pass this check, but they show no movement, so the sequence check refuses them.
STATIC_MEAN_ABS_DIFF = 4.0
_STATIC_SIZE = 16


@dataclass(frozen=True)
class IssuedChallenge:
    """A new challenge. `nonce` is in this answer only: the service keeps its hash."""

    id: str
    nonce: str
    sequence: list[str]
    expires_at: datetime
    instructions: list[str]


@dataclass(frozen=True)
class ChallengeFrame:
    """One captured frame of a bundle, as the pipeline saw it: the decoded image (BGR),
    the face's detection (box and five landmarks) and its L2-normalised embedding."""

    image: NDArray[np.uint8]
    detection: Detection
    embedding: FloatArray

    @classmethod
    def from_capture(cls, image: NDArray[np.uint8], capture: FaceCapture) -> ChallengeFrame:
        return cls(image=image, detection=capture.detection, embedding=capture.embedding)


@dataclass(frozen=True)
class FramePose:
    """A frame's estimated pose (degrees, see `models.head_pose`), and the movement it shows
    against the first frame: a step name, ``center``, or ``between`` (neither)."""

    yaw: float
    pitch: float
    movement: str


@dataclass(frozen=True)
class ChallengeResult:
    challenge_id: str | None
    passed: bool
    reasons: list[str]
    sequence: list[str]  # what was asked
    observed: list[str]  # the movements the frames showed, in order
    poses: list[FramePose]
    min_face_similarity: float | None  # cosine of the least similar frame to the first
    min_frame_difference: float | None  # the closest two consecutive frames came

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- issuing ------------------------------------------------------------------------------


def random_sequence(rng: secrets.SystemRandom | None = None) -> list[str]:
    """2-3 steps, no step twice in a row (two in a row would read as one movement)."""
    chooser = rng or secrets.SystemRandom()
    count = chooser.randint(MIN_STEPS, MAX_STEPS)
    steps: list[str] = []
    while len(steps) < count:
        step = chooser.choice(STEPS)
        if not steps or steps[-1] != step:
            steps.append(step)
    return steps


def nonce_digest(nonce: str) -> str:
    return hashlib.sha256(nonce.encode("ascii")).hexdigest()


def create_challenge(
    runtime: Runtime,
    org_id: str,
    principal: Principal | None = None,
    *,
    sequence: Sequence[str] | None = None,
    now: datetime | None = None,
) -> IssuedChallenge:
    """Issue a challenge for `org_id` (audited). `sequence` fixes the steps (tests, tools);
    by default they are drawn at random."""
    steps = list(sequence) if sequence is not None else random_sequence()
    if not MIN_STEPS <= len(steps) <= MAX_STEPS or any(s not in STEPS for s in steps):
        raise ValueError(f"a sequence is {MIN_STEPS}-{MAX_STEPS} of {STEPS}")
    moment = now or utcnow()
    nonce = secrets.token_urlsafe(NONCE_BYTES)
    challenge_id = new_id("lch")
    expires_at = moment + CHALLENGE_TTL
    with write_transaction(runtime.engine) as conn:
        store.insert(
            conn,
            challenge_id=challenge_id,
            org_id=org_id,
            nonce_sha256=nonce_digest(nonce),
            sequence=steps,
            created_at=moment,
            expires_at=expires_at,
        )
        record(
            conn,
            runtime,
            principal,
            org_id=org_id,
            action="liveness.challenge_create",
            target=challenge_id,
            details={"sequence": steps, "expires_at": expires_at.isoformat()},
            actor=None if principal else "service",
        )
    return IssuedChallenge(
        id=challenge_id,
        nonce=nonce,
        sequence=steps,
        expires_at=expires_at,
        instructions=[INSTRUCTIONS["center"], *(INSTRUCTIONS[s] for s in steps)],
    )


# --- using ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsumedChallenge:
    id: str
    sequence: list[str]


def _well_formed(nonce: str) -> bool:
    if not isinstance(nonce, str) or not _NONCE_PATTERN.fullmatch(nonce):
        return False
    try:
        return len(base64.urlsafe_b64decode(nonce + "=")) == NONCE_BYTES
    except (binascii.Error, ValueError):
        return False


def consume_challenge(
    runtime: Runtime, org_id: str, nonce: str, *, now: datetime | None = None
) -> ConsumedChallenge:
    """Use the org's challenge with this nonce up, once (audited), or refuse: unknown, garbage
    or another org's nonce → `LivenessChallengeNotFoundError`; used before →
    `LivenessChallengeUsedError`; expired → `LivenessChallengeExpiredError`."""
    if not _well_formed(nonce):
        raise LivenessChallengeNotFoundError("no liveness challenge has this nonce")
    moment = now or utcnow()
    digest = nonce_digest(nonce)
    with write_transaction(runtime.engine) as conn:
        row = store.consume(conn, org_id, digest, moment)
        if row is not None:
            record(
                conn,
                runtime,
                None,
                org_id=org_id,
                action="liveness.challenge_use",
                target=row.id,
                details={"sequence": list(row.sequence)},
                actor="service",
            )
            return ConsumedChallenge(id=row.id, sequence=list(row.sequence))
    with read_transaction(runtime.engine) as conn:
        found = store.find(conn, org_id, digest)
    if found is None:
        raise LivenessChallengeNotFoundError("no liveness challenge has this nonce")
    if found.used_at is not None:
        raise LivenessChallengeUsedError(
            "this liveness challenge was used; request a new one", challenge_id=found.id
        )
    raise LivenessChallengeExpiredError(
        "this liveness challenge expired; request a new one",
        challenge_id=found.id,
        expired_at=found.expires_at.isoformat(),
    )


def check_challenge(
    runtime: Runtime,
    org_id: str,
    nonce: str,
    frames: Sequence[ChallengeFrame],
    *,
    now: datetime | None = None,
) -> ChallengeResult:
    """Use the challenge up (see `consume_challenge` for the errors), then judge the bundle's
    `frames` (in capture order) against its sequence. The nonce is spent whatever the
    bundle shows: a failed attempt gets no second try with the same nonce."""
    consumed = consume_challenge(runtime, org_id, nonce, now=now)
    result = evaluate_bundle(consumed.sequence, frames, runtime.pipeline.threshold)
    return replace(result, challenge_id=consumed.id)


# --- judging a bundle (no database) ---------------------------------------------------------


def movement(pose: HeadPose, first: HeadPose) -> str:
    """The movement `pose` shows against the bundle's first frame."""
    yaw, pitch = pose.yaw - first.yaw, pose.pitch - first.pitch
    if max(abs(yaw), abs(pitch)) <= RETURN_DEGREES:
        return "center"
    if abs(yaw) >= abs(pitch) and abs(yaw) >= STEP_DEGREES:
        return "turn_left" if yaw > 0 else "turn_right"
    if abs(pitch) > abs(yaw) and abs(pitch) >= STEP_DEGREES:
        return "look_up" if pitch > 0 else "look_down"
    return "between"


def observed_movements(labels: Sequence[str]) -> list[str]:
    """The steps a run of frame labels shows: repeats collapsed, centre and in-between
    frames dropped (a step held over several frames, or a return to the centre, is fine)."""
    shown: list[str] = []
    previous = None
    for label in labels:
        if label in ("center", "between"):
            previous = None if label == "center" else previous
            continue
        if label != previous:
            shown.append(label)
        previous = label
    return shown


def gray_face(frame: ChallengeFrame) -> NDArray[np.float32]:
    """The frame's aligned face, grayscale, shrunk to 16×16 (see `STATIC_MEAN_ABS_DIFF`)."""
    crop = align_face(frame.image, frame.detection.landmarks, replicate_border=True)
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(gray, (_STATIC_SIZE, _STATIC_SIZE), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32)


def evaluate_bundle(
    sequence: Sequence[str], frames: Sequence[ChallengeFrame], match_threshold: float
) -> ChallengeResult:
    """Judge `frames` against `sequence`; pure (the frames' faces are already detected and
    embedded by the pipeline)."""
    reasons: list[str] = []
    poses = [estimate_head_pose(f.detection.landmarks) for f in frames]
    labels = [movement(p, poses[0]) for p in poses] if poses else []
    observed = observed_movements(labels)
    if len(frames) < len(sequence) + 1:
        reasons.append("too_few_frames")
    elif abs(poses[0].yaw) > CENTER_DEGREES or abs(poses[0].pitch) > CENTER_DEGREES:
        reasons.append("start_not_frontal")
    elif observed != list(sequence):
        reasons.append("sequence_not_followed")
    similarity = None
    if len(frames) > 1:
        first = np.asarray(frames[0].embedding, np.float32).ravel()
        similarity = min(
            float(np.dot(first, np.asarray(f.embedding, np.float32).ravel())) for f in frames[1:]
        )
        if similarity < match_threshold:
            reasons.append("face_changed")
    difference = None
    if len(frames) > 1:
        faces = [gray_face(f) for f in frames]
        difference = min(float(np.mean(np.abs(a - b))) for a, b in pairwise(faces))
        if difference < STATIC_MEAN_ABS_DIFF:
            reasons.append("static_frames")
    return ChallengeResult(
        challenge_id=None,
        passed=not reasons,
        reasons=reasons,
        sequence=list(sequence),
        observed=observed,
        poses=[FramePose(p.yaw, p.pitch, m) for p, m in zip(poses, labels, strict=True)],
        min_face_similarity=None if similarity is None else round(similarity, 4),
        min_frame_difference=None if difference is None else round(difference, 2),
    )


def challenge_frames(
    pipeline: FacePipeline, frames: Sequence[bytes], outcomes: Sequence[FrameOutcome]
) -> list[ChallengeFrame]:
    """The `ChallengeFrame`s of a bundle the pipeline captured (`capture_bundle`'s outcomes,
    in the same order): each accepted frame decoded again; refused frames left out."""
    return [
        ChallengeFrame.from_capture(pipeline.decode(data), outcome.capture)
        for data, outcome in zip(frames, outcomes, strict=True)
        if outcome.capture is not None
    ]
