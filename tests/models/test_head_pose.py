"""models.head_pose: the generic model's own projections come back exactly; on real photos
the signs hold (a mirror negates yaw), the frontal calibration is what the docstring says,
and synthetic turns of a real face (tests/models/head_turns.py) move the estimate the way
they turn it."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.head_pose import FRONTAL_NOSE_RATIO, HeadPose, estimate_head_pose
from models.pipeline import FacePipeline
from tests.models.head_turns import face_crop, turn_head

# The generic 3D face of models.head_pose (x to the image's right, y down, z to the camera):
# right eye, left eye, nose tip, right and left mouth corner, in model units.
MODEL = np.array(
    [
        [-160.0, -170.0, -135.0],
        [160.0, -170.0, -135.0],
        [0.0, 0.0, 0.0],
        [-150.0, 150.0, -125.0],
        [150.0, 150.0, -125.0],
    ]
)


def project(yaw: float, pitch: float, roll: float = 0.0, nose_ratio: float = 0.53) -> np.ndarray:
    """The model turned by yaw (to its left), then pitch (up), then roll, seen orthographically;
    `nose_ratio` slides the nose between eye line and mouth line (people differ)."""
    points = MODEL.copy()
    points[2, 1] = -170.0 + nose_ratio * 320.0
    a, b, c = (math.radians(v) for v in (yaw, pitch, roll))
    turn = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    tilt = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    spin = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    seen = points @ (spin @ tilt @ turn).T
    return (seen[:, :2] * 0.3 + 200.0).astype(np.float32)


@pytest.mark.parametrize(("yaw", "pitch"), [(0, 0), (20, 0), (-30, 0), (0, 15), (0, -20)])
def test_the_generic_models_projections_come_back(yaw: float, pitch: float) -> None:
    pose = estimate_head_pose(project(yaw, pitch, nose_ratio=FRONTAL_NOSE_RATIO))
    assert pose.yaw == pytest.approx(yaw, abs=1.5)
    assert pose.pitch == pytest.approx(pitch, abs=2.0)


def test_roll_is_removed() -> None:
    upright = estimate_head_pose(project(20, 10, nose_ratio=FRONTAL_NOSE_RATIO))
    rolled = estimate_head_pose(project(20, 10, roll=25, nose_ratio=FRONTAL_NOSE_RATIO))
    assert rolled.yaw == pytest.approx(upright.yaw, abs=0.5)
    assert rolled.pitch == pytest.approx(upright.pitch, abs=0.5)


def test_degenerate_landmarks_read_as_frontal() -> None:
    assert estimate_head_pose(np.zeros((5, 2), np.float32)) == HeadPose(0.0, 0.0)


def test_on_real_photos_a_mirror_negates_yaw_and_frontal_faces_read_near_zero(
    group_photo_path: Path, single_face_path: Path, pipeline: FacePipeline
) -> None:
    group = cv2.imread(str(group_photo_path))
    tom = cv2.imread(str(single_face_path))
    for image in (group, tom):
        width = image.shape[1]
        for face in pipeline.detector.detect(image):
            mirrored = face.landmarks.copy()
            mirrored[:, 0] = width - 1 - mirrored[:, 0]
            mirrored = mirrored[[1, 0, 2, 4, 3]]  # the subject's right eye is now on the right
            pose, flipped = estimate_head_pose(face.landmarks), estimate_head_pose(mirrored)
            assert flipped.yaw == pytest.approx(-pose.yaw, abs=0.05)
            assert flipped.pitch == pytest.approx(pose.pitch, abs=0.05)
    # Tom Hanks is photographed turned to his left; t1's third face from the left faces
    # the camera (the calibration set of the module docstring).
    assert estimate_head_pose(pipeline.detector.detect(tom)[0].landmarks).yaw > 5
    ross = sorted(pipeline.detector.detect(group), key=lambda d: float(d.box[0]))[2]
    assert abs(estimate_head_pose(ross.landmarks).yaw) < 10


def test_synthetic_turns_of_a_real_face_move_the_estimate_their_way(
    group_photo_path: Path, pipeline: FacePipeline
) -> None:
    group = cv2.imread(str(group_photo_path))
    ross = sorted(pipeline.detector.detect(group), key=lambda d: float(d.box[0]))[2]
    image = face_crop(group, ross.box)
    face = max(pipeline.detector.detect(image), key=lambda d: d.area)
    base = estimate_head_pose(face.landmarks)
    moved = {}
    for yaw in (-30, -15, 15, 30):
        turned = max(
            pipeline.detector.detect(turn_head(image, face.landmarks, yaw)), key=lambda d: d.area
        )
        moved[yaw] = estimate_head_pose(turned.landmarks).yaw - base.yaw
    assert moved[-30] < moved[-15] < 0 < moved[15] < moved[30]
    assert moved[30] >= 15 and moved[-30] <= -15
