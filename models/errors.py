"""Domain errors of the face pipeline.

Each error carries a stable machine-readable `code`; the service maps them to HTTP statuses in
one place. Messages never contain image bytes.
"""

from __future__ import annotations

from typing import Any


class FacePipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""

    code = "face_pipeline_error"


# --- image decoding -------------------------------------------------------------------------


class ImageError(FacePipelineError):
    code = "invalid_image"


class EmptyImageError(ImageError):
    code = "empty_image"


class ImageTooLargeError(ImageError):
    """The encoded bytes exceed the byte limit."""

    code = "image_too_large"


class UnsupportedImageTypeError(ImageError):
    """Not JPEG, PNG or WebP by its magic bytes (e.g. GIF, PDF, garbage)."""

    code = "unsupported_image_type"


class ImageDimensionsError(ImageError):
    """The header announces more pixels than allowed: refused before decoding (bombs)."""

    code = "image_dimensions_too_large"


class CorruptImageError(ImageError):
    """The type is right but the data does not decode (truncated, damaged)."""

    code = "corrupt_image"


# --- quality gate ---------------------------------------------------------------------------


class QualityError(FacePipelineError):
    """A face was found but the capture is not good enough; `report` holds the measurements."""

    code = "quality_rejected"

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class NoFaceError(QualityError):
    code = "no_face"


class MultipleFacesError(QualityError):
    code = "multiple_faces"


class FaceTooSmallError(QualityError):
    code = "face_too_small"


class LowDetectorScoreError(QualityError):
    code = "low_detector_score"


class BlurryFaceError(QualityError):
    code = "blurry_face"


class ExtremePoseError(QualityError):
    code = "extreme_pose"


# --- ID documents (models.documents): the reference side of a compare ----------------------


class DocumentUnreadableError(ImageError):
    """The document image does not decode (garbage, truncated, not an image type)."""

    code = "document_unreadable"


class DocumentQualityError(QualityError):
    """The document's face is missing or unusable; `report` holds what was measured."""

    code = "document_quality_rejected"


class DocumentNoFaceError(DocumentQualityError):
    code = "document_no_face"


class DocumentFaceTooSmallError(DocumentQualityError):
    code = "document_face_too_small"


class DocumentTooBlurryError(DocumentQualityError):
    code = "document_too_blurry"


class DocumentFacePoseError(DocumentQualityError):
    code = "document_face_pose"


# --- model packs ----------------------------------------------------------------------------


class ModelPackError(FacePipelineError):
    code = "model_pack_error"


class ModelIntegrityError(ModelPackError):
    """A model file's SHA-256 does not match its manifest."""

    code = "model_integrity_error"


class ModelPackNotFoundError(ModelPackError):
    code = "model_pack_not_found"


class EmbeddingShapeError(FacePipelineError):
    code = "embedding_shape_error"
