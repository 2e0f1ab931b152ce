"""Face embedders: aligned 112×112 BGR crops in, L2-normalised float32 vectors out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.errors import EmbeddingShapeError
from models.packs import RecognizerSpec
from models.session import ModelSession, create_session, session_options

FloatArray = NDArray[np.float32]


def l2_normalise(vectors: FloatArray) -> FloatArray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalised: FloatArray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalised


class FaceEmbedder:
    """Runs a recognizer graph on batches of crops.

    Preprocessing comes from the pack manifest (colour order, ``(x - mean) / std``), so the
    same class serves SFace (normalises inside its graph) and generic ArcFace graphs.
    onnxruntime sessions may be run from several threads at once, so one embedder serves the
    whole thread pool.
    """

    def __init__(self, session: ModelSession, spec: RecognizerSpec, warm_up: bool = True) -> None:
        self._session = session
        self._spec = spec
        self._input_name = session.get_inputs()[0].name
        if warm_up:  # first run allocates and plans; pay that at load, not on a request
            self.embed([np.zeros((*spec.input_size[::-1], 3), np.uint8)])

    @classmethod
    def from_file(cls, path: Path, spec: RecognizerSpec, threads: int = 1) -> FaceEmbedder:
        return cls(create_session(path, threads), spec)

    @property
    def dimension(self) -> int:
        return self._spec.embedding_dim

    def embed(self, crops: list[NDArray[np.uint8]]) -> FloatArray:
        """Embed a batch of crops in one graph run; returns an (N, dim) array of unit vectors."""
        if not crops:
            return np.zeros((0, self.dimension), np.float32)
        batch = np.stack(crops)
        if self._spec.color_order == "RGB":
            batch = batch[..., ::-1]
        # One pass: reorder to NCHW and convert to float32 together; normalise in place, and
        # only where the model asks for it.
        blob = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
        if self._spec.mean != 0 or self._spec.std != 1:
            blob -= self._spec.mean
            blob /= self._spec.std
        return self._finish(self._session.run(None, {self._input_name: blob})[0])

    def _finish(self, raw: Any) -> FloatArray:
        vectors = np.asarray(raw, np.float32).reshape(len(raw), -1)
        if vectors.shape[1] != self.dimension:
            raise EmbeddingShapeError(
                f"recognizer returned {vectors.shape[1]} values; manifest says {self.dimension}"
            )
        return l2_normalise(vectors)


class ArcFaceEmbedder(FaceEmbedder):
    """insightface ArcFace recognizers (buffalo_l, antelopev2), loaded through `model_zoo`.

    insightface's `ArcFaceONNX.get_feat` does its own BGR→RGB and ``(x - 127.5) / 127.5``;
    we only normalise its output.
    """

    def __init__(self, path: Path, spec: RecognizerSpec, threads: int = 1) -> None:
        from insightface.model_zoo import model_zoo

        self._model: Any = model_zoo.get_model(
            str(path), providers=["CPUExecutionProvider"], sess_options=session_options(threads)
        )
        if self._model is None or getattr(self._model, "taskname", "") != "recognition":
            raise EmbeddingShapeError(f"{path.name} is not a recognition model")
        super().__init__(self._model.session, spec)

    def embed(self, crops: list[NDArray[np.uint8]]) -> FloatArray:
        if not crops:
            return np.zeros((0, self.dimension), np.float32)
        return self._finish(self._model.get_feat(list(crops)))
