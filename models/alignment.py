"""Alignment of a detected face to the 112×112 ArcFace template (insightface's `norm_crop`)."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
from insightface.utils import face_align
from numpy.typing import NDArray

CROP_SIZE = 112

# scikit-image deprecated the call insightface makes inside estimate_norm; the result is the
# same, and the warning would otherwise repeat on every request's log.
warnings.filterwarnings("ignore", category=FutureWarning, module="insightface.utils.face_align")


def align_face(
    image_bgr: NDArray[np.uint8], landmarks: NDArray[np.float32], replicate_border: bool = False
) -> NDArray[np.uint8]:
    """Warp the face with these 5 landmarks to a 112×112 BGR crop (similarity transform).

    With the default black border this is exactly insightface's ``face_align.norm_crop``, which
    the recognizers were trained with. ``replicate_border`` is for quality measurements: where
    the warp samples outside the image, a black edge would read as a sharp detail.
    """
    matrix = face_align.estimate_norm(np.asarray(landmarks, np.float32), CROP_SIZE)
    border = cv2.BORDER_REPLICATE if replicate_border else cv2.BORDER_CONSTANT
    crop = cv2.warpAffine(image_bgr, matrix, (CROP_SIZE, CROP_SIZE), borderMode=border)
    return np.ascontiguousarray(crop, dtype=np.uint8)
