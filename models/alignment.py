"""Alignment of a detected face to the 112×112 ArcFace template (insightface's `norm_crop`)."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

CROP_SIZE = 112

# Where ArcFace's five landmarks sit in its 112×112 crop: eyes, nose tip, mouth corners. The
# values are insightface's `face_align.arcface_dst` (float32), copied rather than imported:
# that module pulls in scikit-image, a second of start-up. A test keeps the two equal.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
).astype(np.float64)


def similarity_to_template(landmarks: NDArray[np.float32]) -> NDArray[np.float64]:
    """The 2×3 similarity (rotation, uniform scale, shift) that maps `landmarks` onto
    `ARCFACE_TEMPLATE` in the least-squares sense.

    This is the transform insightface's `face_align.estimate_norm` finds with scikit-image's
    general N-D Umeyama solver (SVD, determinants, a rank test). In two dimensions the
    solution is closed-form: read each point as a complex number x; the best y ≈ z·x has
    z = Σ conj(x)·y / Σ |x|², over points centred on their means. Same matrix to float
    rounding, in 0.02 ms instead of 0.3-0.7 ms per face (it runs twice per capture).
    """
    source = np.asarray(landmarks, np.float64).reshape(5, 2)
    source_mean = source.mean(axis=0)
    target_mean = ARCFACE_TEMPLATE.mean(axis=0)
    x = source - source_mean
    y = ARCFACE_TEMPLATE - target_mean
    spread = float((x * x).sum())
    if spread > 0:
        a = float((x * y).sum()) / spread  # scale·cos(angle)
        b = float((x[:, 0] * y[:, 1] - x[:, 1] * y[:, 0]).sum()) / spread  # scale·sin(angle)
    else:
        # Five coincident points (no detector emits them): every pixel maps to the template's
        # centre, a flat crop that the quality gate then refuses as too small a face.
        a = b = 0.0
    rotation = np.array([[a, -b], [b, a]])
    shift = target_mean - rotation @ source_mean
    return np.hstack([rotation, shift[:, None]])


def align_face(
    image_bgr: NDArray[np.uint8], landmarks: NDArray[np.float32], replicate_border: bool = False
) -> NDArray[np.uint8]:
    """Warp the face with these 5 landmarks to a 112×112 BGR crop (similarity transform).

    With the default black border this is insightface's ``face_align.norm_crop``, which the
    recognizers were trained with. ``replicate_border`` is for quality measurements: where
    the warp samples outside the image, a black edge would read as a sharp detail.
    """
    matrix = similarity_to_template(landmarks)
    border = cv2.BORDER_REPLICATE if replicate_border else cv2.BORDER_CONSTANT
    crop = cv2.warpAffine(image_bgr, matrix, (CROP_SIZE, CROP_SIZE), borderMode=border)
    return np.ascontiguousarray(crop, dtype=np.uint8)
