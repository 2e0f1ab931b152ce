"""Model packs: a detector + a recognizer + preprocessing + calibrated thresholds.

A pack is a directory holding its ONNX files and a ``manifest.json``::

    {
      "format": 1,
      "model_id": "yunet-sface-2021dec",        # pinned by every org index built with it
      "description": "...",
      "detector":   {"file": "detector.onnx", "sha256": "<hex>", "kind": "yunet",
                     "input_size": [640, 640], "color_order": "BGR",
                     "mean": 0.0, "std": 1.0, "score_threshold": 0.6, "nms_threshold": 0.3},
      "recognizer": {"file": "recognizer.onnx", "sha256": "<hex>", "kind": "sface",
                     "input_size": [112, 112], "color_order": "RGB",
                     "mean": 0.0, "std": 1.0, "embedding_dim": 128},
      "thresholds": {"cosine": 0.363, "source": "..."},
      "provenance": {...}                         # free-form: where the weights came from
    }

``mean``/``std`` are applied as ``(pixel - mean) / std`` before the graph (SFace normalises
inside its graph, so its manifest says 0/1; ArcFace packs say 127.5/127.5). Every file is
checked against its SHA-256 each time a session is built from it; a mismatch raises
`ModelIntegrityError` naming the file, never a silent load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import crashsafe
from models.errors import ModelIntegrityError, ModelPackError, ModelPackNotFoundError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1

DetectorKind = Literal["yunet", "scrfd"]
RecognizerKind = Literal["sface", "arcface"]
ColorOrder = Literal["BGR", "RGB"]


@dataclass(frozen=True)
class DetectorSpec:
    file: str
    sha256: str
    kind: DetectorKind
    # (width, height) images are scaled to fit; SCRFD pads to it, YuNet to a multiple of 32
    input_size: tuple[int, int]
    color_order: ColorOrder = "BGR"
    mean: float = 0.0
    std: float = 1.0
    score_threshold: float = 0.6
    nms_threshold: float = 0.3


@dataclass(frozen=True)
class RecognizerSpec:
    file: str
    sha256: str
    kind: RecognizerKind
    embedding_dim: int
    input_size: tuple[int, int] = (112, 112)
    color_order: ColorOrder = "RGB"
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class Thresholds:
    cosine: float
    source: str


@dataclass(frozen=True)
class ModelPack:
    """A verified-on-load description of one pack directory."""

    directory: Path
    model_id: str
    description: str
    detector: DetectorSpec
    recognizer: RecognizerSpec
    thresholds: Thresholds
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def embedding_dim(self) -> int:
        return self.recognizer.embedding_dim

    def detector_path(self) -> Path:
        """The detector file, after checking its SHA-256 against the manifest."""
        return verify_file(self.directory / self.detector.file, self.detector.sha256)

    def recognizer_path(self) -> Path:
        """The recognizer file, after checking its SHA-256 against the manifest."""
        return verify_file(self.directory / self.recognizer.file, self.recognizer.sha256)

    def verify(self) -> None:
        self.detector_path()
        self.recognizer_path()

    def to_manifest(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "model_id": self.model_id,
            "description": self.description,
            "detector": asdict(self.detector),
            "recognizer": asdict(self.recognizer),
            "thresholds": asdict(self.thresholds),
            "provenance": self.provenance,
        }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, expected_sha256: str) -> Path:
    if not path.is_file():
        raise ModelIntegrityError(f"model file {path.name} is missing from {path.parent}")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ModelIntegrityError(
            f"model file {path.name} does not match its manifest "
            f"(sha256 {actual[:16]}…, expected {expected_sha256[:16]}…)"
        )
    return path


def load_pack(directory: Path) -> ModelPack:
    """Read and validate ``directory/manifest.json``; file hashes are checked at each load."""
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelPackNotFoundError(f"no model pack manifest at {manifest_path}")
    try:
        raw = json.loads(manifest_path.read_text())
        if raw.get("format") != MANIFEST_FORMAT:
            raise ModelPackError(f"unsupported manifest format {raw.get('format')!r}")
        det = dict(raw["detector"])
        det["input_size"] = tuple(det["input_size"])
        rec = dict(raw["recognizer"])
        rec["input_size"] = tuple(rec["input_size"])
        return ModelPack(
            directory=directory,
            model_id=str(raw["model_id"]),
            description=str(raw.get("description", "")),
            detector=DetectorSpec(**det),
            recognizer=RecognizerSpec(**rec),
            thresholds=Thresholds(**raw["thresholds"]),
            provenance=dict(raw.get("provenance", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelPackError(f"invalid model pack manifest {manifest_path}: {exc}") from exc


def write_manifest(pack: ModelPack) -> None:
    """Write the manifest crash-safely (see `crashsafe`), creating the pack directory."""
    pack.directory.mkdir(parents=True, exist_ok=True)
    crashsafe.write_bytes(
        pack.directory / MANIFEST_NAME,
        json.dumps(pack.to_manifest(), indent=2, sort_keys=True).encode(),
    )
