"""Real face images for the benchmarks: augmented captures of the six people in t1.jpg.

insightface's wheel ships one group photo (``t1.jpg``, six people). Each face is cropped with
a 40% margin, scaled to 320 px high, and re-captured eight ways (JPEG quality 90 and 60,
0.8× and 0.6× rescale, brighter, darker, slight blur, a 6° rotation), the way
`tests/models/test_calibration.py` builds its smoke-test folder. Every genuine pair is thus
two renderings of *one photograph*: genuine scores come out higher than two real captures
of a person on different days would give, and there are only six people. Enough to see the
shape of the model's score distributions and to exercise the plumbing; not a calibration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import insightface
import numpy as np

from models.errors import FacePipelineError
from models.imaging import decode_image, encode_jpeg
from models.pipeline import FacePipeline

IMAGES = Path(insightface.__file__).parent / "data" / "images"
GROUP_PHOTO = IMAGES / "t1.jpg"
CAPTURES_PER_PERSON = 8


def _rotate(face: np.ndarray, degrees: float) -> np.ndarray:
    h, w = face.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(face, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)


def augmented_captures(face: np.ndarray) -> list[bytes]:
    """Eight deterministic captures of one face crop, as JPEG bytes."""
    return [
        encode_jpeg(face, 90),
        encode_jpeg(face, 60),
        encode_jpeg(cv2.resize(face, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA)),
        encode_jpeg(cv2.resize(face, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)),
        encode_jpeg(cv2.convertScaleAbs(face, alpha=1.0, beta=30)),
        encode_jpeg(cv2.convertScaleAbs(face, alpha=0.8, beta=-10)),
        encode_jpeg(cv2.GaussianBlur(face, (3, 3), 0)),
        encode_jpeg(_rotate(face, 6.0)),
    ]


def face_crops(pipeline: FacePipeline) -> list[np.ndarray]:
    """The six faces of t1.jpg, left to right, 40% margin, 320 px high (BGR)."""
    image = decode_image(GROUP_PHOTO.read_bytes())
    detections = sorted(pipeline.detector.detect(image), key=lambda d: float(d.box[0]))
    height, width = image.shape[:2]
    crops = []
    for detection in detections:
        x1, y1, x2, y2 = detection.box
        mx, my = 0.4 * (x2 - x1), 0.4 * (y2 - y1)
        face = image[
            int(max(0, y1 - my)) : int(min(height, y2 + my)),
            int(max(0, x1 - mx)) : int(min(width, x2 + mx)),
        ]
        crops.append(
            cv2.resize(
                face,
                (round(face.shape[1] * 320 / face.shape[0]), 320),
                interpolation=cv2.INTER_CUBIC,
            )
        )
    return crops


def write_folder(pipeline: FacePipeline, root: Path) -> Path:
    """``root/person_<i>/<k>.jpg``: the LFW layout `wajah calibrate` reads."""
    for person, face in enumerate(face_crops(pipeline)):
        folder = root / f"person_{person}"
        folder.mkdir(parents=True, exist_ok=True)
        for k, data in enumerate(augmented_captures(face)):
            (folder / f"{k}.jpg").write_bytes(data)
    return root


@dataclass(frozen=True)
class ScoreDistributions:
    """Genuine and impostor cosines of the real model on the augmented captures."""

    genuine: np.ndarray
    impostor: np.ndarray
    persons: int
    captures: int
    refused: int
    mean_direction: np.ndarray  # unit mean of all accepted captures' embeddings

    def summary(self) -> dict[str, float | int]:
        return {
            "genuine_mean": round(float(self.genuine.mean()), 4),
            "genuine_std": round(float(self.genuine.std()), 4),
            "genuine_min": round(float(self.genuine.min()), 4),
            "genuine_pairs": int(self.genuine.size),
            "impostor_mean": round(float(self.impostor.mean()), 4),
            "impostor_std": round(float(self.impostor.std()), 4),
            "impostor_max": round(float(self.impostor.max()), 4),
            "impostor_pairs": int(self.impostor.size),
            "persons": self.persons,
            "captures": self.captures,
            "refused_by_quality_gate": self.refused,
        }


def measure_scores(pipeline: FacePipeline) -> ScoreDistributions:
    """Embed every capture through the real pipeline; all genuine and impostor pairs."""
    vectors: list[np.ndarray] = []
    labels: list[int] = []
    refused = 0
    for person, face in enumerate(face_crops(pipeline)):
        for data in augmented_captures(face):
            try:
                vectors.append(pipeline.capture(data).embedding)
            except FacePipelineError:  # refused by the quality gate: counted, not scored
                refused += 1
                continue
            labels.append(person)
    matrix = np.stack(vectors)
    scores = matrix @ matrix.T
    ids = np.asarray(labels)
    upper = np.triu(np.ones_like(scores, dtype=bool), k=1)
    same = ids[:, None] == ids[None, :]
    return ScoreDistributions(
        genuine=scores[upper & same],
        impostor=scores[upper & ~same],
        persons=len(set(labels)),
        captures=len(labels),
        refused=refused,
        mean_direction=matrix.mean(axis=0) / np.linalg.norm(matrix.mean(axis=0)),
    )
