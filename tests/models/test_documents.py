"""The document side of a compare on real faces (insightface's t1.jpg and Tom Hanks) printed
on card renders: small, blurred, JPEG-degraded, sideways, with a ghost image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.documents import DocumentSettings, capture_document
from models.errors import (
    DocumentFacePoseError,
    DocumentFaceTooSmallError,
    DocumentNoFaceError,
    DocumentTooBlurryError,
    DocumentUnreadableError,
    FaceTooSmallError,
    ImageTooLargeError,
    MultipleFacesError,
)
from models.imaging import ImageLimits, encode_jpeg
from models.pipeline import FacePipeline
from tests.document_renders import document, face_crops, selfie

# t1.jpg's faces, left to right. 2, 3 and 5 are near-frontal in the photo; 0 and 1 are turned
# about 20-30° and small in it, and their renders sit around SFace's threshold; 4 is a profile.
FRONTAL = (2, 3, 5)
PROFILE = 4


@pytest.fixture(scope="module")
def crops(pipeline: FacePipeline, group_photo_path: Path, single_face_path: Path) -> list:
    found = face_crops(pipeline.detector, group_photo_path)
    hanks = cv2.imread(str(single_face_path))  # a 112×112 crop: give it a margin
    return [*found, cv2.copyMakeBorder(hanks, 30, 30, 30, 30, cv2.BORDER_REPLICATE)]


def _selfie_vector(pipeline: FacePipeline, crop: np.ndarray) -> np.ndarray:
    return pipeline.capture(selfie(crop)).embedding


@pytest.mark.parametrize("person", [*FRONTAL, 6])
@pytest.mark.parametrize(
    ("render", "rotation"),
    [
        ({"portrait_px": 110}, 270),  # turned clockwise on the card: turned back by 270°
        ({"portrait_px": 100, "rotate": cv2.ROTATE_90_COUNTERCLOCKWISE, "jpeg_quality": 50}, 90),
        ({"portrait_px": 140, "blur_sigma": 1.5, "jpeg_quality": 30}, 270),
        ({"portrait_px": 110, "rotate": None}, 0),
    ],
)
def test_a_document_render_matches_its_own_selfie_and_nobody_else(
    pipeline: FacePipeline, crops: list, person: int, render: dict, rotation: int
) -> None:
    captured = capture_document(pipeline, document(crops[person], **render))
    assert captured.rotation_degrees == rotation
    assert captured.upscale > 1.0  # a 500×316 card is upscaled to 640 before detection
    assert captured.quality.passed and captured.quality.reasons == []
    threshold = pipeline.threshold  # the pack's, as published (0.363 for SFace)
    scores = {
        other: float(captured.embedding @ _selfie_vector(pipeline, crops[other]))
        for other in (*FRONTAL, 6)
    }
    assert scores[person] >= threshold
    assert all(score < threshold for other, score in scores.items() if other != person)


def test_the_selfie_gate_refuses_what_the_document_gate_accepts(
    pipeline: FacePipeline, crops: list
) -> None:
    small = document(crops[3], portrait_px=110, rotate=None, ghost=False)
    with pytest.raises(FaceTooSmallError):
        pipeline.capture(small)
    accepted = capture_document(pipeline, small).quality
    assert accepted.interocular_px < pipeline.policy.min_interocular_px
    # With its ghost image, the selfie gate sees two faces; the document keeps the largest.
    with pytest.raises(MultipleFacesError):
        pipeline.capture(document(crops[3], portrait_px=110, rotate=None))


def test_an_id_card_ghost_image_is_not_a_second_face(pipeline: FacePipeline, crops: list) -> None:
    card = document(crops[2], portrait_px=200, rotate=None, ghost=True, card_px=(640, 404))
    captured = capture_document(pipeline, card)
    # The largest face is the portrait (200 px wide, the ghost half of it).
    width = float(captured.detection.box[2] - captured.detection.box[0])
    assert width > 80
    assert float(captured.embedding @ _selfie_vector(pipeline, crops[2])) >= pipeline.threshold


def test_a_card_without_a_portrait_is_document_no_face(pipeline: FacePipeline) -> None:
    blank = np.full((316, 500, 3), (214, 196, 170), np.uint8)
    cv2.putText(blank, "KARTU TANDA PENDUDUK", (20, 60), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0))
    with pytest.raises(DocumentNoFaceError) as refused:
        capture_document(pipeline, encode_jpeg(blank, quality=40))
    assert refused.value.code == "document_no_face"


def test_a_tiny_portrait_is_document_face_too_small(pipeline: FacePipeline, crops: list) -> None:
    with pytest.raises(DocumentFaceTooSmallError) as refused:
        capture_document(pipeline, document(crops[3], portrait_px=40))
    assert refused.value.code == "document_face_too_small"
    assert refused.value.report.interocular_px < DocumentSettings().min_interocular_px


def test_a_smeared_portrait_is_document_too_blurry(pipeline: FacePipeline, crops: list) -> None:
    with pytest.raises(DocumentTooBlurryError) as refused:
        capture_document(pipeline, document(crops[2], portrait_px=110, blur_sigma=3.0))
    assert refused.value.code == "document_too_blurry"
    assert refused.value.report.blur_variance < DocumentSettings().min_blur_variance


def test_a_profile_portrait_is_document_face_pose(pipeline: FacePipeline, crops: list) -> None:
    with pytest.raises(DocumentFacePoseError) as refused:
        capture_document(pipeline, document(crops[PROFILE], portrait_px=110, rotate=None))
    assert abs(refused.value.report.yaw_degrees) > DocumentSettings().max_yaw_degrees


@pytest.mark.parametrize(
    "data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 64, b"GIF89a" + b"0" * 32]
)
def test_bytes_that_do_not_decode_are_document_unreadable(
    pipeline: FacePipeline, data: bytes
) -> None:
    with pytest.raises(DocumentUnreadableError) as refused:
        capture_document(pipeline, data)
    assert refused.value.code == "document_unreadable"


def test_a_truncated_document_jpeg_is_document_unreadable(
    pipeline: FacePipeline, crops: list
) -> None:
    whole = document(crops[2])
    with pytest.raises(DocumentUnreadableError):
        capture_document(pipeline, whole[: len(whole) // 3])


def test_an_oversized_document_keeps_the_size_error(pipeline: FacePipeline, crops: list) -> None:
    limited = FacePipeline(
        pipeline.pack, pipeline.detector, pipeline.embedder, limits=ImageLimits(max_bytes=1000)
    )
    with pytest.raises(ImageTooLargeError):
        capture_document(limited, document(crops[2]))


def test_settings_are_checked_when_built() -> None:
    with pytest.raises(ValueError):
        DocumentSettings(rotations=(45,))
    with pytest.raises(ValueError):
        DocumentSettings(min_detector_score=1.5)
