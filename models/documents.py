"""The face on an ID document (KTP, passport, driving licence): the reference side of a compare.

A document's portrait is small (often 60–120 px across in a phone photo of the card), printed,
re-photographed through a laminate, JPEG-compressed twice and, as often as not, sideways. The
selfie gate would refuse most of them, so a document gets its own settings (`DocumentSettings`):

* small images are upscaled (bicubic) before detection, so the detector and the 112×112
  alignment see more than a handful of pixels per eye;
* the detector keeps candidates down to a lower score, and the size gate is measured in the
  document's own pixels with a lower minimum;
* the blur gate is relaxed: print and laminate take the fine detail a selfie keeps;
* when no face is found upright, the image is tried at 90°, 180° and 270° and the rotation
  whose best face scores highest wins;
* an ID card's "ghost image" (a second, faint copy of the portrait) is not refused as a second
  face: the largest face is the portrait.

Failures have names of their own (`document_no_face`, `document_face_too_small`,
`document_too_blurry`, `document_face_pose`, `document_unreadable`), so a client can tell the
customer to retake the document rather than the selfie.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
from numpy.typing import NDArray

from models.alignment import align_face
from models.detector import Detection, FaceDetector, ScrfdDetector, YuNetDetector
from models.errors import (
    BlurryFaceError,
    CorruptImageError,
    DocumentFacePoseError,
    DocumentFaceTooSmallError,
    DocumentNoFaceError,
    DocumentQualityError,
    DocumentTooBlurryError,
    DocumentUnreadableError,
    EmptyImageError,
    ExtremePoseError,
    FaceTooSmallError,
    UnsupportedImageTypeError,
)
from models.imaging import open_image
from models.pipeline import FacePipeline
from models.quality import QualityPolicy, QualityReport, assess

FloatArray = NDArray[np.float32]

_ROTATE = {
    90: cv2.ROTATE_90_CLOCKWISE,
    180: cv2.ROTATE_180,
    270: cv2.ROTATE_90_COUNTERCLOCKWISE,
}


@dataclass(frozen=True)
class DocumentSettings:
    """Detection and quality settings of the document side. README "Onboarding" gives the
    reasons; the selfie's own (`QualityPolicy`) are in brackets."""

    #: Images whose longer side is below this are upscaled to it before detection.
    upscale_to_px: int = 640
    #: Never upscale more than this: past 4× bicubic invents nothing the detector can use.
    max_upscale: float = 4.0
    #: The detector keeps candidates down to this score (the pack's 0.6 for YuNet).
    min_detector_score: float = 0.5
    #: Eye distance in the document's own pixels (24): a 60 px portrait has about 25.
    min_interocular_px: float = 12.0
    #: Laplacian variance of the aligned inner face (40): print and laminate soften it, and
    #: the crop is upsampled from a small face. Measured on renders of t1.jpg's faces (80 px
    #: portraits, JPEG 40): σ = 1 px blur reads 9–25 and keeps identity; σ = 2 px reads 4–9
    #: and does not (same-person cosine 0.13–0.32, under SFace's 0.363).
    min_blur_variance: float = 8.0
    max_yaw_degrees: float = 45.0
    max_pitch_degrees: float = 40.0
    #: An upright face scoring this much is taken without trying the rotations. A card
    #: photographed sideways still yields upright "faces" scoring 0.5–0.8 (with landmarks
    #: that do not fit), and its true rotation 0.8–0.9; upright portraits score 0.88–0.93.
    upright_score: float = 0.85
    #: Tried when the upright image has no face scoring `upright_score`; the best face of
    #: every orientation tried wins.
    rotations: tuple[int, ...] = (90, 180, 270)

    def __post_init__(self) -> None:
        if self.upscale_to_px < 1 or self.max_upscale < 1.0:
            raise ValueError("upscale_to_px must be >= 1 and max_upscale >= 1.0")
        if not 0.0 < self.min_detector_score < 1.0:
            raise ValueError("min_detector_score must be in (0, 1)")
        if any(r not in _ROTATE for r in self.rotations):
            raise ValueError("rotations are 90, 180 or 270 degrees")


@dataclass(frozen=True)
class DocumentCapture:
    """The document's portrait: its embedding, how it was found and how good it looked.

    `quality.interocular_px` is in the document's own pixels; `rotation_degrees` is how far
    the image was turned clockwise for the face to stand upright; `upscale` the factor it was
    enlarged by before detection."""

    embedding: FloatArray
    detection: Detection
    quality: QualityReport
    rotation_degrees: int
    upscale: float


def capture_document(
    pipeline: FacePipeline, data: bytes, settings: DocumentSettings | None = None
) -> DocumentCapture:
    """Decode, upscale, detect (rotating if need be), gate and embed a document's portrait.

    Raises `DocumentUnreadableError` for bytes that are not a decodable image, the pipeline's
    own size errors (`image_too_large`, `image_dimensions_too_large`) for oversized ones, and
    a `DocumentQualityError` subclass, with its measurements, when the face is unusable.
    """
    settings = settings or DocumentSettings()
    try:
        opened = open_image(data, pipeline.limits)
    except (EmptyImageError, UnsupportedImageTypeError, CorruptImageError) as error:
        raise DocumentUnreadableError(f"the document image is unreadable: {error}") from None
    scale = _upscale_factor(opened.size, settings)
    upscaled_pixels = round(opened.pixels * scale * scale)
    with pipeline.budget.hold(opened.pixels + upscaled_pixels):
        try:
            image = opened.decode()
        except CorruptImageError as error:
            raise DocumentUnreadableError(f"the document image is unreadable: {error}") from None
        if scale > 1.0:
            resized = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            image = np.ascontiguousarray(resized, dtype=np.uint8)
        detector = _document_detector(pipeline.detector, settings.min_detector_score)
        rotation, image, detections = _find_face(detector, image, settings)
        face = max(detections, key=lambda d: d.area)  # an ID card's ghost image is smaller
        report = _assess(image, face, len(detections), scale, settings)
        crop = align_face(image, face.landmarks)
    embedding = pipeline.embedder.embed([crop])[0]
    return DocumentCapture(embedding, face, report, rotation, round(scale, 3))


def _upscale_factor(size: tuple[int, int], settings: DocumentSettings) -> float:
    longer = max(size)
    if longer >= settings.upscale_to_px:
        return 1.0
    return min(settings.upscale_to_px / longer, settings.max_upscale)


def _document_detector(detector: FaceDetector, min_score: float) -> FaceDetector:
    """The pipeline's detector, keeping candidates down to the document's score."""
    if isinstance(detector, YuNetDetector | ScrfdDetector):
        return detector.with_score_threshold(min_score)
    return detector


def _find_face(
    detector: FaceDetector, image: NDArray[np.uint8], settings: DocumentSettings
) -> tuple[int, NDArray[np.uint8], list[Detection]]:
    """Upright when its best face is confident; else the orientation whose best face
    scores highest."""
    detections = detector.detect(image)
    if detections and _top(detections) >= settings.upright_score:
        return 0, image, detections
    best = (0, image, detections) if detections else None
    for degrees in settings.rotations:
        turned = np.ascontiguousarray(cv2.rotate(image, _ROTATE[degrees]), dtype=np.uint8)
        found = detector.detect(turned)
        if found and (best is None or _top(found) > _top(best[2])):
            best = (degrees, turned, found)
    if best is None:
        raise DocumentNoFaceError("no face was found on the document, at any rotation")
    return best


def _top(detections: list[Detection]) -> float:
    return max(d.score for d in detections)


# The selfie gate's reasons, as the document's own errors (no low-score reason: the detector
# already dropped every candidate below the document's minimum score).
_DOCUMENT_ERRORS: dict[str, type[DocumentQualityError]] = {
    FaceTooSmallError.code: DocumentFaceTooSmallError,
    BlurryFaceError.code: DocumentTooBlurryError,
    ExtremePoseError.code: DocumentFacePoseError,
}


def _assess(
    image: NDArray[np.uint8],
    face: Detection,
    face_count: int,
    scale: float,
    settings: DocumentSettings,
) -> QualityReport:
    """The selfie gate's measurements under the document's settings; the eye distance in the
    document's own pixels. Raises the document error of the first failed check."""
    policy = QualityPolicy(
        min_interocular_px=settings.min_interocular_px * scale,
        min_detector_score=settings.min_detector_score,
        min_blur_variance=settings.min_blur_variance,
        max_yaw_degrees=settings.max_yaw_degrees,
        max_pitch_degrees=settings.max_pitch_degrees,
        multiple_faces="largest",
    )
    measured = assess(image, face, face_count, policy)
    reasons = [_DOCUMENT_ERRORS[r].code for r in measured.reasons if r in _DOCUMENT_ERRORS]
    report = replace(
        measured,
        interocular_px=round(measured.interocular_px / scale, 2),
        passed=not reasons,
        reasons=reasons,
    )
    if report.reasons:
        first = next(e for e in _DOCUMENT_ERRORS.values() if e.code == report.reasons[0])
        raise first(f"the document's face failed the gate: {', '.join(report.reasons)}", report)
    return report
