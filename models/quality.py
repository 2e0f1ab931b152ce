"""The quality gate: named, measured reasons to refuse a capture.

Every check is measured and reported even when it passes, so a caller can show the customer
why a capture was refused ("move closer", "hold still") and tune thresholds from real data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from models.alignment import align_face
from models.detector import Detection
from models.errors import (
    BlurryFaceError,
    ExtremePoseError,
    FaceTooSmallError,
    LowDetectorScoreError,
    MultipleFacesError,
    NoFaceError,
    QualityError,
)

# On the ArcFace template the nose tip sits 49.4% of the way from the eye line to the mouth
# line; a frontal face in any image keeps roughly that ratio.
_FRONTAL_NOSE_RATIO = (71.7366 - 51.5977) / (92.2041 - 51.5977)


@dataclass(frozen=True)
class QualityPolicy:
    """Thresholds of the gate. Defaults are documented in README ("Quality gate")."""

    min_interocular_px: float = 24.0
    min_detector_score: float = 0.75
    min_blur_variance: float = 40.0
    max_yaw_degrees: float = 45.0
    max_pitch_degrees: float = 40.0
    multiple_faces: Literal["reject", "largest"] = "reject"


@dataclass(frozen=True)
class QualityReport:
    face_count: int
    detector_score: float
    interocular_px: float
    blur_variance: float
    yaw_degrees: float
    pitch_degrees: float
    passed: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def interocular_distance(landmarks: NDArray[np.float32]) -> float:
    return float(np.linalg.norm(landmarks[0] - landmarks[1]))


def blur_variance(crop_bgr: NDArray[np.uint8]) -> float:
    """Variance of the Laplacian over the inner face of an aligned crop: low means blurry.

    Pass a crop aligned with ``replicate_border=True`` and only the eyes-nose-mouth region
    counts, so that neither a black warp border nor the background reads as sharp detail.
    """
    gray = cv2.cvtColor(crop_bgr[28:100, 20:92], cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def estimate_pose(landmarks: NDArray[np.float32]) -> tuple[float, float]:
    """Coarse (yaw, pitch) in degrees from 5 landmarks, after removing roll.

    Yaw: how far the nose tip sits from the eyes' midpoint, relative to half the eye distance.
    Pitch: how far the nose's relative height between eye line and mouth line departs from
    the frontal template. Good enough to refuse profiles and chin-up selfies, not a 3D fit.
    """
    right_eye, left_eye, nose, mouth_r, mouth_l = (np.asarray(p, np.float64) for p in landmarks)
    eye_vec = left_eye - right_eye
    half_iod = float(np.linalg.norm(eye_vec)) / 2
    if half_iod < 1e-6:
        return 90.0, 90.0
    angle = math.atan2(eye_vec[1], eye_vec[0])
    rot = np.array([[math.cos(-angle), -math.sin(-angle)], [math.sin(-angle), math.cos(-angle)]])
    eye_mid = (right_eye + left_eye) / 2
    mouth_mid = (mouth_r + mouth_l) / 2
    nose_local = rot @ (nose - eye_mid)
    mouth_local = rot @ (mouth_mid - eye_mid)
    yaw = math.degrees(math.asin(float(np.clip(nose_local[0] / half_iod, -1, 1))))
    if mouth_local[1] <= 1e-6:
        return yaw, 90.0
    ratio = nose_local[1] / mouth_local[1]
    pitch = math.degrees(math.asin(float(np.clip((ratio - _FRONTAL_NOSE_RATIO) * 2, -1, 1))))
    return yaw, pitch


def choose_face(detections: list[Detection], policy: QualityPolicy) -> Detection:
    """Apply the one-face policy: exactly one face, or the largest one when allowed."""
    if not detections:
        raise NoFaceError("no face was found in the image")
    if len(detections) > 1 and policy.multiple_faces == "reject":
        raise MultipleFacesError(f"{len(detections)} faces were found; send exactly one")
    return max(detections, key=lambda d: d.area)


def assess(
    image_bgr: NDArray[np.uint8], detection: Detection, face_count: int, policy: QualityPolicy
) -> QualityReport:
    """Measure one face; `passed` is False with named `reasons` if any check fails."""
    yaw, pitch = estimate_pose(detection.landmarks)
    iod = interocular_distance(detection.landmarks)
    blur = blur_variance(align_face(image_bgr, detection.landmarks, replicate_border=True))
    reasons: list[str] = []
    if iod < policy.min_interocular_px:
        reasons.append(FaceTooSmallError.code)
    if detection.score < policy.min_detector_score:
        reasons.append(LowDetectorScoreError.code)
    if blur < policy.min_blur_variance:
        reasons.append(BlurryFaceError.code)
    if abs(yaw) > policy.max_yaw_degrees or abs(pitch) > policy.max_pitch_degrees:
        reasons.append(ExtremePoseError.code)
    return QualityReport(
        face_count=face_count,
        detector_score=round(detection.score, 4),
        interocular_px=round(iod, 2),
        blur_variance=round(blur, 2),
        yaw_degrees=round(yaw, 1),
        pitch_degrees=round(pitch, 1),
        passed=not reasons,
        reasons=reasons,
    )


_ERRORS: dict[str, type[QualityError]] = {
    cls.code: cls
    for cls in (FaceTooSmallError, LowDetectorScoreError, BlurryFaceError, ExtremePoseError)
}


def raise_for_report(report: QualityReport) -> None:
    """Raise the error of the first failed check (the report travels with it)."""
    if report.passed:
        return
    raise _ERRORS[report.reasons[0]](
        f"the face failed the quality gate: {', '.join(report.reasons)}", report
    )
