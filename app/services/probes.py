"""Probes: what a match request compares, an image run through the pipeline or a vector of
the served model, checked before any gallery is touched."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import InvalidProbeError
from app.runtime import Runtime
from models.pipeline import FaceCapture


@dataclass(frozen=True)
class Probe:
    """An image to run through the pipeline, or a vector from the same model pack."""

    image: bytes | None = None
    vector: list[float] | None = None
    model_id: str | None = None


@dataclass(frozen=True)
class ProbeVector:
    vector: np.ndarray
    kind: str
    quality: dict[str, Any] | None
    capture: FaceCapture | None = None  # an image probe's face (liveness reuses it)


def probe_vector(runtime: Runtime, probe: Probe) -> ProbeVector:
    return start_probe(runtime, probe).wait()


class PendingProbe:
    """A probe whose capture may still be running on the inference pool."""

    def __init__(
        self, capture: Future[FaceCapture] | None = None, vector: ProbeVector | None = None
    ) -> None:
        self._capture = capture
        self._vector = vector

    def wait(self) -> ProbeVector:
        if self._capture is None:
            assert self._vector is not None
            return self._vector
        capture = self._capture.result()
        return ProbeVector(capture.embedding, "image", capture.quality.as_dict(), capture)

    def cancel(self) -> None:
        """Drop the capture if it has not started: a request that fails early must not leave
        work queued behind it (each request otherwise waits for its own capture, which is
        what bounds the queue)."""
        if self._capture is not None:
            self._capture.cancel()


def start_probe(runtime: Runtime, probe: Probe) -> PendingProbe:
    """Check the probe and start its capture on the inference pool.

    Lets a caller read what it needs from the database while the models run on another core;
    the caller must `wait()` for it or `cancel()` it. Errors in the image surface when
    waiting; errors in a vector probe right away.
    """
    if (probe.image is None) == (probe.vector is None):
        raise InvalidProbeError("send exactly one of an image or a vector as the probe")
    if probe.image is not None:
        image = probe.image
        return PendingProbe(
            capture=runtime.inference.submit(lambda pipeline: pipeline.capture(image))
        )
    return PendingProbe(vector=_vector_probe(runtime, probe))


def _vector_probe(runtime: Runtime, probe: Probe) -> ProbeVector:
    assert probe.vector is not None
    if probe.model_id != runtime.model_id:
        raise InvalidProbeError(
            f"vector probes must come from model {runtime.model_id!r}, got {probe.model_id!r}"
        )
    vector = np.asarray(probe.vector, dtype=np.float64)
    if vector.shape != (runtime.pipeline.dimension,):
        raise InvalidProbeError(
            f"the probe vector has {vector.size} values; model {runtime.model_id} makes "
            f"{runtime.pipeline.dimension}"
        )
    # Finite values can still have an infinite norm (128 × 1e308 overflows the sum of
    # squares): dividing by it would make a zero vector that scores 0 against everything.
    with np.errstate(over="ignore"):
        norm = float(np.linalg.norm(vector)) if np.isfinite(vector).all() else 0.0
    if not (norm > 1e-6 and np.isfinite(norm)):
        raise InvalidProbeError("the probe vector must be finite, with a finite non-zero norm")
    return ProbeVector((vector / norm).astype(np.float32), "vector", None)
