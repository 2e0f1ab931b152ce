"""Selfies and ID-document renders of the real faces in the insightface wheel.

A "document" is what a phone photo of a KTP looks like to the service: the portrait printed
small (60–90 px across), softened by print and laminate (Gaussian blur), on a card with text
and a faint ghost copy of the portrait, JPEG-compressed hard, and often sideways. The faces
are cut from t1.jpg (six people) with a margin, so each render starts from a real face.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from models.detector import FaceDetector
from models.imaging import decode_image, encode_jpeg

Image = NDArray[np.uint8]


def face_crops(detector: FaceDetector, group_photo: Path, margin: float = 0.6) -> list[Image]:
    """Each face of the group photo, left to right, with ``margin`` of its size around it."""
    image = decode_image(group_photo.read_bytes())
    crops = []
    for d in sorted(detector.detect(image), key=lambda d: float(d.box[0])):
        x1, y1, x2, y2 = (float(v) for v in d.box)
        pad_x, pad_y = (x2 - x1) * margin, (y2 - y1) * margin
        top, bottom = max(0, int(y1 - pad_y)), min(image.shape[0], int(y2 + pad_y))
        left, right = max(0, int(x1 - pad_x)), min(image.shape[1], int(x2 + pad_x))
        crops.append(np.ascontiguousarray(image[top:bottom, left:right]))
    return crops


def selfie(crop: Image, width: int = 480) -> bytes:
    """A phone selfie of the face: enlarged, a little brighter, JPEG quality 85."""
    scale = width / crop.shape[1]
    big = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    return encode_jpeg(cv2.convertScaleAbs(big, alpha=1.05, beta=10), quality=85)


def document(
    crop: Image,
    *,
    portrait_px: int = 80,
    blur_sigma: float = 1.0,
    jpeg_quality: int = 40,
    rotate: int | None = cv2.ROTATE_90_CLOCKWISE,
    ghost: bool = True,
    card_px: tuple[int, int] = (500, 316),
    seed: int = 7,
) -> bytes:
    """The face printed on a card: the portrait ``portrait_px`` wide (the crop with its
    margin; the face itself about 60 % of it), blurred, on a card with text lines and a ghost
    image, JPEG at ``jpeg_quality``, turned by ``rotate`` (a `cv2.ROTATE_*` or None)."""
    rng = np.random.default_rng(seed)
    width, height = card_px
    card = np.empty((height, width, 3), np.uint8)
    card[:] = (214, 196, 170)  # the pale blue of a KTP, in BGR
    card = cv2.add(card, rng.integers(0, 12, card.shape, dtype=np.uint8))
    cv2.rectangle(card, (0, 0), (width, 34), (150, 110, 60), -1)
    for row in range(6):  # name, address, ... as dark text-like strokes
        y = 60 + row * 28
        cv2.putText(
            card, "NIK 3171" + "0" * row, (18, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (40, 40, 40), 1
        )
    portrait_h = round(crop.shape[0] * portrait_px / crop.shape[1])
    portrait = cv2.resize(crop, (portrait_px, portrait_h), interpolation=cv2.INTER_AREA)
    if blur_sigma > 0:
        portrait = cv2.GaussianBlur(portrait, (0, 0), blur_sigma)
    x, y = width - portrait_px - 24, 48
    card[y : y + portrait_h, x : x + portrait_px] = portrait
    if ghost:  # a faint, smaller copy of the portrait, as ID cards print it
        small = cv2.resize(portrait, (portrait_px // 2, portrait_h // 2))
        gx, gy = width - portrait_px - 24 - portrait_px // 2 - 20, height - portrait_h // 2 - 16
        region = card[gy : gy + small.shape[0], gx : gx + small.shape[1]]
        card[gy : gy + small.shape[0], gx : gx + small.shape[1]] = cv2.addWeighted(
            region, 0.7, small, 0.3, 0
        )
    if rotate is not None:
        card = cv2.rotate(card, rotate)
    return encode_jpeg(np.ascontiguousarray(card), quality=jpeg_quality)
