"""PAD calibration: APCER and BPCER of the passive liveness model on a labelled folder.

The folder holds ``live/`` (bona fide presentations) and ``attack/`` (attack presentations)
images; files in nested folders count. Below ``attack/``, a first-level folder names the
presentation-attack-instrument (PAI) species (``attack/print/…``, ``attack/screen/…``); files
directly in ``attack/`` are species ``attack``. Each image is decoded, its faces detected
with the served detector, the largest one cropped as the service crops it
(`models.liveness.face_crop`) and scored.

Definitions (ISO/IEC 30107-3), with a presentation classified bona fide when its live score
``>= threshold`` (the service's rule):

    APCER(species, t) = #{attacks of that species scoring >= t} / #attacks of that species
    APCER(t)          = max over species of APCER(species, t)   (the standard's worst case)
    BPCER(t)          = #{bona fide scoring < t} / #bona fide

The threshold for a target BPCER is the highest threshold whose empirical BPCER is at most the
target: the (k+1)-th lowest bona fide score, with k = floor(target × #bona fide) bona fide
presentations allowed below it. The score maths reuse `models.calibration.rates` with bona fide
scores as "genuine" and attack scores as "impostor" (BPCER = FNMR, APCER = FMR per species).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from models.calibration.datasets import CalibrationInputError
from models.calibration.rates import ScoreSet, false_matches, false_non_matches
from models.detector import FaceDetector
from models.errors import FacePipelineError
from models.imaging import ImageLimits, decode_image
from models.liveness import PassiveLiveness, face_crop

LIVE, ATTACK = "live", "attack"
NO_FACE = "no_face"
UNREADABLE = "unreadable_file"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PadSample:
    path: str  # relative to the folder
    label: str  # live / attack
    species: str  # the PAI species for attacks, "bona_fide" for live
    score: float


@dataclass(frozen=True)
class PadFailure:
    path: str
    code: str
    message: str


@dataclass(frozen=True)
class PadRates:
    threshold: float
    apcer: float | None  # the worst species'
    apcer_by_species: dict[str, float]
    bpcer: float | None


@dataclass(frozen=True)
class PadReport:
    model_id: str
    threshold: float  # the one the rates are given at (the model's default unless told)
    target_bpcer: float
    samples: list[PadSample]
    failures: list[PadFailure]
    at_threshold: PadRates
    for_target: PadRates | None  # at the threshold for `target_bpcer`; None without bona fide
    definitions: dict[str, str] = field(
        default_factory=lambda: {
            "APCER": "share of attack presentations (per PAI species; the worst species "
            "reported) classified bona fide: live score >= threshold",
            "BPCER": "share of bona fide presentations classified as attacks: live score "
            "< threshold",
            "standard": "ISO/IEC 30107-3",
        }
    )

    @property
    def live_scores(self) -> list[float]:
        return [s.score for s in self.samples if s.label == LIVE]

    @property
    def attack_scores(self) -> list[float]:
        return [s.score for s in self.samples if s.label == ATTACK]

    def score_set(self) -> ScoreSet:
        """Bona fide as "genuine", attacks as "impostor" (for `det_curve` and its plot)."""
        return ScoreSet.of(self.live_scores, self.attack_scores)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_pad_folder(root: Path) -> list[tuple[Path, str, str]]:
    """(path, label, species) of every image under ``root/live`` and ``root/attack``."""
    if not root.is_dir():
        raise CalibrationInputError(f"{root} is not a folder")
    found: list[tuple[Path, str, str]] = []
    for label in (LIVE, ATTACK):
        base = root / label
        if not base.is_dir():
            raise CalibrationInputError(f"{root} has no {label}/ folder (need live/ and attack/)")
        files = _files_below(base)
        if not files:
            raise CalibrationInputError(f"{base} holds no images")
        for path in files:
            relative = path.relative_to(base)
            if label == LIVE:
                species = "bona_fide"
            else:
                species = relative.parts[0] if len(relative.parts) > 1 else ATTACK
            found.append((path, label, species))
    return found


def _files_below(base: Path) -> list[Path]:
    paths: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        paths.extend(Path(dirpath) / n for n in sorted(filenames) if not n.startswith("."))
    return paths


def score_pad_folder(
    root: Path,
    detector: FaceDetector,
    model: PassiveLiveness,
    *,
    limits: ImageLimits | None = None,
    threshold: float | None = None,
    target_bpcer: float = 0.05,
    progress: Progress | None = None,
) -> PadReport:
    """Detect, crop and score every image of the folder; failures are collected, not raised.

    Raises `CalibrationInputError` for a bad folder, or when no image of a class had a face.
    """
    if not 0 <= target_bpcer < 1:
        raise CalibrationInputError("the target BPCER must be in [0, 1)")
    listed = list_pad_folder(root)
    limits = limits or ImageLimits()
    samples: list[PadSample] = []
    failures: list[PadFailure] = []
    for done, (path, label, species) in enumerate(listed, start=1):
        name = str(path.relative_to(root))
        try:
            score = _score_image(path, detector, model, limits)
        except OSError as error:
            failures.append(PadFailure(name, UNREADABLE, str(error.strerror or error)))
        except FacePipelineError as error:
            failures.append(PadFailure(name, error.code, str(error)))
        else:
            if score is None:
                failures.append(PadFailure(name, NO_FACE, "no face was detected"))
            else:
                samples.append(PadSample(name, label, species, round(score, 6)))
        if progress is not None:
            progress(done, len(listed))
    for label in (LIVE, ATTACK):
        if not any(s.label == label for s in samples):
            raise CalibrationInputError(
                f"no {label} image could be scored ({len(failures)} failed: "
                f"{', '.join(sorted({f.code for f in failures}))})"
            )
    return build_report(
        model.model_id, samples, failures, threshold or model.threshold, target_bpcer
    )


def _score_image(
    path: Path, detector: FaceDetector, model: PassiveLiveness, limits: ImageLimits
) -> float | None:
    with path.open("rb") as handle:
        data = handle.read(limits.max_bytes + 1)  # one past the limit: refused as too large
    image = decode_image(data, limits)
    faces = detector.detect(image)
    if not faces:
        return None
    largest = max(faces, key=lambda d: d.area)
    return model.score_crops([face_crop(image, largest.box)])[0]


def rates_at(samples: Sequence[PadSample], threshold: float) -> PadRates:
    """APCER (per species and the worst) and BPCER at `threshold`."""
    live = np.sort(np.array([s.score for s in samples if s.label == LIVE], np.float64))
    species = sorted({s.species for s in samples if s.label == ATTACK})
    by_species: dict[str, float] = {}
    for name in species:
        scores = np.sort(
            np.array([s.score for s in samples if s.species == name and s.label == ATTACK])
        )
        by_species[name] = false_matches(scores, threshold) / scores.size
    return PadRates(
        threshold=threshold,
        apcer=max(by_species.values()) if by_species else None,
        apcer_by_species=by_species,
        bpcer=false_non_matches(live, threshold) / live.size if live.size else None,
    )


def threshold_for_bpcer(live_scores: Sequence[float], target_bpcer: float) -> float | None:
    """The highest threshold whose empirical BPCER is at most `target_bpcer`."""
    live = np.sort(np.asarray(live_scores, np.float64))
    if live.size == 0:
        return None
    allowed = int(Decimal(repr(target_bpcer)) * live.size)  # < size: the target is < 1
    # At the (allowed+1)-th lowest score, the `allowed` scores below it are refused; any
    # higher threshold refuses one more.
    return float(live[allowed])


def build_report(
    model_id: str,
    samples: list[PadSample],
    failures: list[PadFailure],
    threshold: float,
    target_bpcer: float,
) -> PadReport:
    chosen = threshold_for_bpcer([s.score for s in samples if s.label == LIVE], target_bpcer)
    return PadReport(
        model_id=model_id,
        threshold=threshold,
        target_bpcer=target_bpcer,
        samples=samples,
        failures=failures,
        at_threshold=rates_at(samples, threshold),
        for_target=None if chosen is None else rates_at(samples, chosen),
    )
