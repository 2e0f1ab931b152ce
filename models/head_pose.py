"""Head pose (yaw, pitch) from the detector's five landmarks, for the active liveness challenge.

Signs, in the subject's own frame on an *unmirrored* frame (as the camera sensor delivers it,
not a mirrored selfie preview):

* yaw > 0: the subject turned to their left (the nose moves towards the image's right);
* pitch > 0: the subject looks up (the nose tip moves towards the eye line).

The model is a generic 3D face (the six-point model commonly used with `cv2.solvePnP`: nose
tip at the origin, eye centres 135 units behind it and mouth corners 125 units behind, eyes
and mouth 320 units apart vertically, eyes about 320 apart), seen under weak perspective:

* a yaw of θ moves the nose tip sideways, relative to the eyes' and the mouth's midpoints, by
  `NOSE_DEPTH · sin θ` while the eye distance shrinks by cos θ, so
  `θ = atan(offset / (NOSE_DEPTH · observed eye distance))`;
* a pitch of φ moves the nose tip up by its depth · sin φ while the eye-to-mouth distance
  shrinks by cos φ: the nose's relative height between the eye line and the mouth line, `r`,
  becomes `(r₀ − D_n·tan φ) / (1 − D_m·tan φ)`, solved for φ below.

Calibration (tests/models/test_head_pose.py measures it again): on the five near-frontal real
faces this project has (four of insightface's `t1.jpg`, `Tom_Hanks_54745.png`), YuNet puts the
nose tip at 0.536-0.604 of the way from the eye line to the mouth line (median 0.568; the
model's 0.53; the ArcFace template's 0.494, from another landmark convention), and the
eye-to-mouth distance at 0.91-1.07 eye distances (the model's 1.0). `FRONTAL_NOSE_RATIO` is
that median. Five faces are no population study and none of them has a measured pose: the
absolute angles are estimates good to perhaps ±10°, which is why the challenge compares each
frame with the bundle's first frame rather than with zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

#: The nose tip's depth in front of the eyes' and mouth's midpoints (mean of 135 and 125
#: model units), per eye distance (320 units).
NOSE_DEPTH = 0.405
#: The nose tip's depth in front of the eye line, and the mouth's, per eye-to-mouth distance.
_NOSE_DEPTH_PITCH = 135 / 320
_MOUTH_DEPTH_PITCH = 10 / 320
#: Where YuNet puts a frontal face's nose tip between eye line (0) and mouth line (1):
#: the median of five real near-frontal faces (see the module docstring).
FRONTAL_NOSE_RATIO = 0.568


@dataclass(frozen=True)
class HeadPose:
    """Degrees; see the module docstring for the signs."""

    yaw: float
    pitch: float


def estimate_head_pose(landmarks: NDArray[np.float32]) -> HeadPose:
    """The head's yaw and pitch from five landmarks (right eye, left eye, nose tip, right and
    left mouth corner, as `models.detector` orders them), after removing roll."""
    points = np.asarray(landmarks, np.float64).reshape(5, 2)
    right_eye, left_eye, nose, mouth_right, mouth_left = points
    eye_vector = left_eye - right_eye
    eye_distance = float(np.hypot(*eye_vector))
    if eye_distance < 1e-6:
        return HeadPose(0.0, 0.0)
    roll = math.atan2(eye_vector[1], eye_vector[0])
    cos_r, sin_r = math.cos(roll), math.sin(roll)
    unroll = np.array([[cos_r, sin_r], [-sin_r, cos_r]])
    eye_mid = (right_eye + left_eye) / 2
    mouth = unroll @ ((mouth_right + mouth_left) / 2 - eye_mid)
    nose_local = unroll @ (nose - eye_mid)
    # Sideways: the nose against the face's midline (halfway between eye and mouth midpoints).
    offset = (nose_local[0] - mouth[0] / 2) / eye_distance
    yaw = math.degrees(math.atan(offset / NOSE_DEPTH))
    if mouth[1] <= 1e-6:  # mouth at or above the eyes: no face a detector would report
        return HeadPose(round(yaw, 2), 0.0)
    ratio = nose_local[1] / mouth[1]
    # r = (r0 - Dn t) / (1 - Dm t)  =>  t = (r0 - r) / (Dn - r Dm)
    tangent = (FRONTAL_NOSE_RATIO - ratio) / (_NOSE_DEPTH_PITCH - ratio * _MOUTH_DEPTH_PITCH)
    pitch = math.degrees(math.atan(tangent))
    return HeadPose(round(yaw, 2), round(pitch, 2))
