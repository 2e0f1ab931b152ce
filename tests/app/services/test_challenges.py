"""Active liveness challenges (issue 21, item 4): the single-use nonce on SQLite and
PostgreSQL, and bundles built from real photos turned synthetically (tests/models/head_turns)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from app.errors import (
    LivenessChallengeExpiredError,
    LivenessChallengeNotFoundError,
    LivenessChallengeUsedError,
)
from app.runtime import Runtime
from app.services import challenges
from app.services.challenges import ChallengeFrame, challenge_frames
from app.services.principal import Principal
from app.services.retention import CHALLENGE_KEEP, purge_liveness_challenges
from app.storage import challenges as store
from app.storage import read_transaction, utcnow
from models.imaging import decode_image, encode_jpeg
from models.pipeline import FacePipeline
from tests.app.services.helpers import audit_trail
from tests.models.head_turns import face_crop, turned_frames

SEQUENCE = ["turn_left", "look_up"]


def test_a_challenge_is_issued_with_a_fresh_nonce_stored_only_as_its_hash(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    now = utcnow()
    issued = challenges.create_challenge(runtime, admin.org_id, admin, now=now)
    assert len(issued.nonce) == 43 and issued.id.startswith("lch_")
    assert issued.expires_at == now + timedelta(seconds=120)
    assert 2 <= len(issued.sequence) <= 3
    assert set(issued.sequence) <= set(challenges.STEPS)
    assert all(a != b for a, b in pairwise(issued.sequence))
    assert issued.instructions[0] == challenges.INSTRUCTIONS["center"]
    assert len(issued.instructions) == len(issued.sequence) + 1
    digest = hashlib.sha256(issued.nonce.encode()).hexdigest()
    with read_transaction(runtime.engine) as conn:
        row = store.find(conn, admin.org_id, digest)
    assert row is not None and row.id == issued.id and list(row.sequence) == issued.sequence
    actions = [e.action for e in audit_trail(runtime, admin)]
    assert "liveness.challenge_create" in actions
    again = challenges.create_challenge(runtime, admin.org_id, admin)
    assert again.nonce != issued.nonce and again.id != issued.id


def test_random_sequences_use_every_step_and_never_repeat_one() -> None:
    drawn = [challenges.random_sequence() for _ in range(400)]
    assert {len(s) for s in drawn} == {2, 3}
    assert {step for s in drawn for step in s} == set(challenges.STEPS)
    assert all(a != b for s in drawn for a, b in pairwise(s))


def test_a_nonce_is_used_once_then_refused(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    issued = challenges.create_challenge(runtime, admin.org_id, admin, sequence=SEQUENCE)
    used = challenges.consume_challenge(runtime, admin.org_id, issued.nonce)
    assert used.id == issued.id and used.sequence == SEQUENCE
    with pytest.raises(LivenessChallengeUsedError):
        challenges.consume_challenge(runtime, admin.org_id, issued.nonce)
    assert "liveness.challenge_use" in [e.action for e in audit_trail(runtime, admin)]


def test_an_expired_nonce_is_refused_as_expired(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    now = utcnow()
    issued = challenges.create_challenge(runtime, admin.org_id, admin, now=now)
    later = now + challenges.CHALLENGE_TTL + timedelta(seconds=1)
    with pytest.raises(LivenessChallengeExpiredError):
        challenges.consume_challenge(runtime, admin.org_id, issued.nonce, now=later)
    # Expiry refused it without using it: still expired (not "used") a moment later.
    with pytest.raises(LivenessChallengeExpiredError):
        challenges.consume_challenge(runtime, admin.org_id, issued.nonce, now=later)
    just_in_time = now + challenges.CHALLENGE_TTL - timedelta(seconds=1)
    assert challenges.consume_challenge(
        runtime, admin.org_id, issued.nonce, now=just_in_time
    ).id == (issued.id)


@pytest.mark.parametrize(
    "nonce",
    ["", "x", "A" * 42, "A" * 44, "!" * 43, "é" * 43, "A" * 10_000, "AAAA" * 10 + "AA\n"],
)
def test_garbage_nonces_are_not_found(
    runtime: Runtime, new_admin: Callable[..., Principal], nonce: str
) -> None:
    admin = new_admin()
    with pytest.raises(LivenessChallengeNotFoundError):
        challenges.consume_challenge(runtime, admin.org_id, nonce)


def test_another_orgs_nonce_is_not_found_and_stays_usable_by_its_org(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    owner, other = new_admin("Owner Bank"), new_admin("Other Bank")
    issued = challenges.create_challenge(runtime, owner.org_id, owner)
    with pytest.raises(LivenessChallengeNotFoundError):
        challenges.consume_challenge(runtime, other.org_id, issued.nonce)
    unknown = challenges.create_challenge(runtime, owner.org_id, owner).nonce[::-1]
    with pytest.raises(LivenessChallengeNotFoundError):
        challenges.consume_challenge(runtime, owner.org_id, unknown)
    assert challenges.consume_challenge(runtime, owner.org_id, issued.nonce).id == issued.id


def race_to_use(runtime: Runtime, org_id: str, nonce: str, users: int) -> list[str]:
    """`users` threads use one nonce at the same moment; what each got."""
    start = threading.Barrier(users)
    outcomes: list[str] = []

    def use() -> None:
        start.wait()
        try:
            challenges.consume_challenge(runtime, org_id, nonce)
            outcomes.append("won")
        except LivenessChallengeUsedError:
            outcomes.append("used")

    threads = [threading.Thread(target=use) for _ in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_two_concurrent_uses_of_one_nonce_exactly_one_wins(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    for _ in range(3):
        issued = challenges.create_challenge(runtime, admin.org_id, admin)
        outcomes = race_to_use(runtime, admin.org_id, issued.nonce, 4)
        assert sorted(outcomes) == ["used", "used", "used", "won"]


def test_the_retention_round_deletes_challenges_a_day_after_they_expired(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    now = utcnow()
    old = challenges.create_challenge(runtime, admin.org_id, admin, now=now - timedelta(days=2))
    recent = challenges.create_challenge(runtime, admin.org_id, admin, now=now)
    purged = purge_liveness_challenges(runtime, now=now)
    assert purged.get(admin.org_id) == 1
    with read_transaction(runtime.engine) as conn:
        assert store.find(conn, admin.org_id, challenges.nonce_digest(old.nonce)) is None
        assert store.find(conn, admin.org_id, challenges.nonce_digest(recent.nonce)) is not None
    # Within the day after expiry a late answer still learns that it expired.
    late = now + challenges.CHALLENGE_TTL + CHALLENGE_KEEP - timedelta(minutes=1)
    assert purge_liveness_challenges(runtime, now=late).get(admin.org_id) is None
    with pytest.raises(LivenessChallengeExpiredError):
        challenges.consume_challenge(runtime, admin.org_id, recent.nonce, now=late)
    assert "retention.purge_liveness_challenges" in [e.action for e in audit_trail(runtime, admin)]


# --- bundles from real photos, turned synthetically (tests/models/head_turns.py) -------------


@dataclass(frozen=True)
class Face:
    image: NDArray[np.uint8]
    landmarks: NDArray[np.float32]


@pytest.fixture(scope="module")
def faces(
    group_photo_path: Path, single_face_path: Path, pipeline: FacePipeline
) -> dict[str, Face]:
    """t1.jpg's third face from the left (near frontal: yaw 0°, pitch -12° as estimated)
    and Tom Hanks (turned about 30° to his left) upscaled, both with a margin."""
    group = cv2.imread(str(group_photo_path))
    people = sorted(pipeline.detector.detect(group), key=lambda d: float(d.box[0]))
    tom = cv2.imread(str(single_face_path))
    tom = cv2.copyMakeBorder(
        cv2.resize(tom, (224, 224), interpolation=cv2.INTER_CUBIC),
        96,
        96,
        96,
        96,
        cv2.BORDER_REPLICATE,
    )
    images = {
        "ross": face_crop(group, people[2].box),
        "tom": np.ascontiguousarray(tom),
    }
    found = {}
    for name, image in images.items():
        face = max(pipeline.detector.detect(image), key=lambda d: d.area)
        found[name] = Face(image, face.landmarks)
    return found


def bundle_frames(runtime: Runtime, images: list[NDArray[np.uint8]]) -> list[ChallengeFrame]:
    """What the pipeline makes of these frames (JPEG q92, as a phone would send them)."""
    data = [encode_jpeg(image, 92) for image in images]
    outcomes = runtime.pipeline.capture_bundle(data)
    assert all(o.capture is not None for o in outcomes), [o.error for o in outcomes]
    return challenge_frames(runtime.pipeline, data, outcomes)


def answer(
    runtime: Runtime, admin: Principal, steps: list[str], images: list[NDArray[np.uint8]]
) -> challenges.ChallengeResult:
    issued = challenges.create_challenge(runtime, admin.org_id, admin, sequence=steps)
    return challenges.check_challenge(
        runtime, admin.org_id, issued.nonce, bundle_frames(runtime, images)
    )


@pytest.mark.parametrize(
    ("steps", "start_yaw"),
    [
        (["turn_left", "turn_right"], 0.0),
        (["turn_right", "turn_left", "turn_right"], 0.0),
        (["turn_left", "turn_right"], -20.0),
    ],
)
def test_a_bundle_that_follows_the_sequence_passes(
    runtime: Runtime,
    new_admin: Callable[..., Principal],
    faces: dict[str, Face],
    steps: list[str],
    start_yaw: float,
) -> None:
    ross = faces["ross"]
    result = answer(
        runtime, new_admin(), steps, turned_frames(ross.image, ross.landmarks, steps, start_yaw)
    )
    assert result.reasons == [] and result.passed
    assert result.observed == steps == result.sequence
    assert [p.movement for p in result.poses] == ["center", *steps]
    assert result.challenge_id is not None and result.challenge_id.startswith("lch_")
    # The detector saw the turns: every step moved the estimated yaw by 15° or more.
    for pose, step in zip(result.poses[1:], steps, strict=True):
        moved = pose.yaw - result.poses[0].yaw
        assert moved >= 15 if step == "turn_left" else moved <= -15
    assert result.min_face_similarity is not None
    assert result.min_face_similarity >= runtime.pipeline.threshold


def test_steps_in_the_wrong_order_fail_sequence_not_followed(
    runtime: Runtime, new_admin: Callable[..., Principal], faces: dict[str, Face]
) -> None:
    ross = faces["ross"]
    shown = turned_frames(ross.image, ross.landmarks, ["turn_right", "turn_left"])
    result = answer(runtime, new_admin(), ["turn_left", "turn_right"], shown)
    assert result.reasons == ["sequence_not_followed"] and not result.passed
    assert result.observed == ["turn_right", "turn_left"]


def test_a_static_photo_replayed_fails_static_frames(
    runtime: Runtime, new_admin: Callable[..., Principal], faces: dict[str, Face]
) -> None:
    admin = new_admin()
    for face in (faces["ross"], faces["tom"]):
        # Tom's photo does not start frontal: that is refused first, then the replay.
        first = "sequence_not_followed" if face is faces["ross"] else "start_not_frontal"
        repeated = answer(runtime, admin, ["turn_left", "turn_right"], [face.image] * 3)
        assert repeated.reasons == [first, "static_frames"]
        assert repeated.min_frame_difference == 0.0
        # Re-encoded copies (JPEG q95 of the q92 frame) are near-duplicates as well.
        copies = [decode_image(encode_jpeg(face.image, q)) for q in (92, 95, 92)]
        recoded = answer(runtime, admin, ["turn_left", "turn_right"], copies)
        assert recoded.reasons == [first, "static_frames"]
        assert recoded.min_frame_difference is not None
        assert recoded.min_frame_difference < challenges.STATIC_MEAN_ABS_DIFF


def test_another_person_mid_bundle_fails_face_changed(
    runtime: Runtime, new_admin: Callable[..., Principal], faces: dict[str, Face]
) -> None:
    ross, tom = faces["ross"], faces["tom"]
    steps = ["turn_left", "turn_right"]
    frames = turned_frames(ross.image, ross.landmarks, steps)
    frames[2] = turned_frames(tom.image, tom.landmarks, ["turn_right"], -20.0)[1]
    result = answer(runtime, new_admin(), steps, frames)
    assert result.reasons == ["face_changed"]
    assert result.min_face_similarity is not None
    assert result.min_face_similarity < runtime.pipeline.threshold


def test_too_few_frames_fail_and_spend_the_nonce(
    runtime: Runtime, new_admin: Callable[..., Principal], faces: dict[str, Face]
) -> None:
    admin = new_admin()
    ross = faces["ross"]
    steps = ["turn_left", "turn_right", "turn_left"]
    issued = challenges.create_challenge(runtime, admin.org_id, admin, sequence=steps)
    frames = bundle_frames(runtime, turned_frames(ross.image, ross.landmarks, steps[:2]))
    result = challenges.check_challenge(runtime, admin.org_id, issued.nonce, frames)
    assert result.reasons == ["too_few_frames"]
    none = challenges.evaluate_bundle(steps, [], runtime.pipeline.threshold)
    assert none.reasons == ["too_few_frames"] and none.poses == []
    with pytest.raises(LivenessChallengeUsedError):
        challenges.check_challenge(runtime, admin.org_id, issued.nonce, frames)


def test_a_start_far_from_frontal_fails_start_not_frontal(
    runtime: Runtime, new_admin: Callable[..., Principal], faces: dict[str, Face]
) -> None:
    tom = faces["tom"]  # turned about 30° to his left as photographed
    frames = [tom.image, *turned_frames(tom.image, tom.landmarks, ["turn_right"], -20.0)[1:]]
    frames.append(turned_frames(tom.image, tom.landmarks, ["turn_left"], -20.0)[1])
    result = answer(runtime, new_admin(), ["turn_right", "turn_left"], frames)
    assert result.poses[0].yaw > challenges.CENTER_DEGREES
    assert result.reasons[0] == "start_not_frontal"
