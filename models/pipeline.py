"""The face pipeline: bytes in, one quality-checked, L2-normalised embedding per frame out.

decode (sniffed type, byte and pixel limits) → detect → one-face policy → align to 112×112 →
quality gate → embed (batched across the frames of a bundle) → L2-normalise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.alignment import align_face
from models.detector import Detection, FaceDetector, ScrfdDetector, YuNetDetector
from models.embedder import ArcFaceEmbedder, FaceEmbedder
from models.errors import FacePipelineError
from models.imaging import ImageLimits, PixelBudget, decode_image, open_image
from models.packs import ModelPack
from models.quality import QualityPolicy, QualityReport, assess, choose_face, raise_for_report

FloatArray = NDArray[np.float32]


@dataclass(frozen=True)
class FaceCapture:
    """One accepted face: its embedding, where it was, and how good it looked."""

    embedding: FloatArray
    detection: Detection
    quality: QualityReport


@dataclass(frozen=True)
class FrameOutcome:
    """The result for one frame of a bundle: a capture, or the error that refused it."""

    capture: FaceCapture | None
    error: FacePipelineError | None

    @property
    def quality(self) -> QualityReport | None:
        if self.capture is not None:
            return self.capture.quality
        report: Any = getattr(self.error, "report", None)
        return report if isinstance(report, QualityReport) else None


class FacePipeline:
    def __init__(
        self,
        pack: ModelPack,
        detector: FaceDetector,
        embedder: FaceEmbedder,
        policy: QualityPolicy | None = None,
        limits: ImageLimits | None = None,
    ) -> None:
        self.pack = pack
        self.detector = detector
        self.embedder = embedder
        self.policy = policy or QualityPolicy()
        self.limits = limits or ImageLimits()
        # Shared by the pipelines of one process (the service sets both): see `PixelBudget`.
        self.budget = PixelBudget(self.limits.max_pixels)
        # A timing hook, `observe_stage(stage, seconds)`, for the service's metrics.
        self.observe_stage: Callable[[str, float], None] | None = None

    @classmethod
    def load(
        cls,
        pack: ModelPack,
        threads: int = 1,
        policy: QualityPolicy | None = None,
        limits: ImageLimits | None = None,
    ) -> FacePipeline:
        """Build sessions for `pack`; each file is checked against its manifest first."""
        detector: FaceDetector
        if pack.detector.kind == "yunet":
            detector = YuNetDetector.from_file(pack.detector_path(), pack.detector, threads)
        else:
            detector = ScrfdDetector(pack.detector_path(), pack.detector, threads)
        embedder: FaceEmbedder
        if pack.recognizer.kind == "arcface":
            embedder = ArcFaceEmbedder(pack.recognizer_path(), pack.recognizer, threads)
        else:
            embedder = FaceEmbedder.from_file(pack.recognizer_path(), pack.recognizer, threads)
        return cls(pack, detector, embedder, policy, limits)

    @property
    def model_id(self) -> str:
        return self.pack.model_id

    @property
    def dimension(self) -> int:
        return self.pack.embedding_dim

    @property
    def threshold(self) -> float:
        return self.pack.thresholds.cosine

    def decode(self, data: bytes) -> NDArray[np.uint8]:
        return decode_image(data, self.limits)

    def capture(self, data: bytes) -> FaceCapture:
        """One frame → one accepted face, or the `FacePipelineError` that refused it."""
        outcome = self.capture_bundle([data])[0]
        if outcome.error is not None:
            raise outcome.error
        assert outcome.capture is not None
        return outcome.capture

    def capture_bundle(self, frames: list[bytes]) -> list[FrameOutcome]:
        """Gate every frame, then embed all accepted crops in one batched graph run."""
        outcomes: list[FrameOutcome | None] = []
        accepted: list[tuple[int, Detection, NDArray[np.uint8], QualityReport]] = []
        for position, data in enumerate(frames):
            try:
                face, crop, report = self._gate(data)
            except FacePipelineError as error:
                outcomes.append(FrameOutcome(capture=None, error=error))
                continue
            outcomes.append(None)
            accepted.append((position, face, crop, report))
        started = time.perf_counter()
        vectors = self.embedder.embed([crop for _, _, crop, _ in accepted])
        self._timed("embed", started)
        for (position, face, _, report), vector in zip(accepted, vectors, strict=True):
            outcomes[position] = FrameOutcome(FaceCapture(vector, face, report), None)
        return [o for o in outcomes if o is not None]

    def _gate(self, data: bytes) -> tuple[Detection, NDArray[np.uint8], QualityReport]:
        """One frame: decode, detect, choose, align, assess. The decoded image is held
        (inside the pixel budget) only until this returns the 112×112 crop."""
        started = time.perf_counter()
        opened = open_image(data, self.limits)
        with self.budget.hold(opened.pixels):
            image = opened.decode()
            started = self._timed("decode", started)
            detections = self.detector.detect(image)
            started = self._timed("detect", started)
            face = choose_face(detections, self.policy)
            crop = align_face(image, face.landmarks)
            report = assess(image, face, len(detections), self.policy)
            raise_for_report(report)
            self._timed("gate", started)
        return face, crop, report

    def _timed(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        if self.observe_stage is not None:
            self.observe_stage(stage, now - started)
        return now

    def embed_all_faces(self, image: NDArray[np.uint8]) -> list[tuple[Detection, FloatArray]]:
        """Every detected face with its embedding, no gate (calibration and tests)."""
        detections = self.detector.detect(image)
        crops = [align_face(image, d.landmarks) for d in detections]
        return list(zip(detections, self.embedder.embed(crops), strict=True))
