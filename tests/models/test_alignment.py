"""The closed-form alignment and the detector's input blob, against the slower code they
replace: insightface's `estimate_norm`/`norm_crop`, and an HWC canvas converted afterwards."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from insightface.utils import face_align

from models.alignment import ARCFACE_TEMPLATE, CROP_SIZE, align_face, similarity_to_template
from models.detector import Letterbox

warnings.filterwarnings("ignore", category=FutureWarning, module="insightface.utils.face_align")


def _similar_landmarks(rng: np.random.Generator, noise_px: float) -> np.ndarray:
    angle = rng.uniform(-1.2, 1.2)
    scale = rng.uniform(0.3, 5.0)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shift = rng.uniform(0, 600, 2)
    points = ARCFACE_TEMPLATE @ rotation.T + shift + rng.normal(0, noise_px, (5, 2))
    return points.astype(np.float32)


def test_the_template_is_insightfaces() -> None:
    assert np.array_equal(ARCFACE_TEMPLATE, face_align.arcface_dst.astype(np.float64))


def test_a_pure_similarity_is_undone_exactly() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        landmarks = _similar_landmarks(rng, noise_px=0.0)
        matrix = similarity_to_template(landmarks)
        mapped = landmarks.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]
        assert np.allclose(mapped, ARCFACE_TEMPLATE, atol=1e-3)


def test_it_finds_insightfaces_transform() -> None:
    # insightface solves the same least-squares problem with scikit-image's Umeyama (SVD)
    # partly in float32: the matrices agree to that rounding.
    rng = np.random.default_rng(2)
    for _ in range(300):
        landmarks = _similar_landmarks(rng, noise_px=4.0)
        expected = face_align.estimate_norm(landmarks, CROP_SIZE)
        assert np.allclose(similarity_to_template(landmarks), expected, rtol=1e-5, atol=5e-4)


def test_its_crops_are_insightfaces_norm_crop(group_photo_path: Path) -> None:
    image = cv2.imread(str(group_photo_path))
    rng = np.random.default_rng(3)
    differing = total = 0
    for _ in range(100):
        landmarks = _similar_landmarks(rng, noise_px=3.0)
        ours = align_face(image, landmarks).astype(np.int16)
        theirs = face_align.norm_crop(image, landmarks).astype(np.int16)
        assert np.abs(ours - theirs).max() <= 1  # bilinear weights rounded the other way
        differing += int((ours != theirs).sum())
        total += ours.size
    assert differing / total < 1e-3


def test_coincident_landmarks_give_a_flat_crop_not_nan() -> None:
    matrix = similarity_to_template(np.full((5, 2), 40.0, np.float32))
    assert np.isfinite(matrix).all()
    assert np.array_equal(matrix[:, :2], np.zeros((2, 2)))
    crop = align_face(np.full((80, 80, 3), 7, np.uint8), np.full((5, 2), 40.0, np.float32))
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)


def _canvas_blob(
    image: np.ndarray,
    box: Letterbox,
    target_w: int,
    target_h: int,
    rgb: bool,
    mean: float,
    std: float,
) -> np.ndarray:
    """The detector's input built the old way: an HWC canvas, converted afterwards."""
    height, width = image.shape[:2]
    new_w = max(1, min(target_w, round(width * box.scale)))
    new_h = max(1, min(target_h, round(height * box.scale)))
    interpolation = cv2.INTER_AREA if box.scale < 1 else cv2.INTER_LINEAR
    canvas = np.zeros((target_h, target_w, 3), np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    if rgb:
        canvas = canvas[:, :, ::-1]
    blob = (canvas.astype(np.float32) - mean) / std
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[None])


@pytest.mark.parametrize(
    ("size", "target", "rgb", "mean", "std"),
    [
        ((640, 480), (640, 480), False, 0.0, 1.0),  # the common case: no resize, no padding
        ((1000, 700), (640, 640), False, 0.0, 1.0),  # shrunk, padded below
        ((300, 500), (640, 640), True, 127.5, 128.0),  # enlarged, padded right; RGB, normalised
        ((641, 479), (640, 480), False, 0.0, 1.0),  # shrunk by a pixel
    ],
)
def test_the_detector_blob_equals_a_converted_canvas(
    size: tuple[int, int], target: tuple[int, int], rgb: bool, mean: float, std: float
) -> None:
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    box = Letterbox.fit(size[0], size[1], *target)
    channels = (2, 1, 0) if rgb else (0, 1, 2)
    blob = box.blob(image, target[0], target[1], channels, mean, std)
    expected = _canvas_blob(image, box, target[0], target[1], rgb, mean, std)
    assert blob.dtype == np.float32 and blob.flags.c_contiguous
    assert np.array_equal(blob, expected)
