"""The calibration run: embed a labelled image set once, score its pairs, report error rates.

A deployer points `calibrate` at labelled face images of their own population, captured the
way their customers capture, and gets back how often the pack's recognizer confuses two
people (FMR, false match rate) and fails to recognise the same person (FNMR, false non-match
rate), and which cosine threshold to set for the FMR their risk policy allows.

Every distinct image is decoded, gated and embedded once, through the same `FacePipeline` the
service uses, so its quality gate applies: an image the service would refuse is not scored,
and it is counted under its error code (``no_face``, ``extreme_pose``, ``corrupt_image``,
...) in the report, never dropped silently. Pairs that lose an image are counted as skipped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from models.calibration.datasets import CalibrationInputError, list_folder, read_pairs
from models.calibration.rates import (
    DEFAULT_TARGET_FMRS,
    FloatArray,
    OperatingPoint,
    ScoreHistogram,
    ScoreSet,
    ScoreSummary,
    ThresholdRates,
    equal_error_rate,
)
from models.errors import FacePipelineError
from models.pipeline import FacePipeline

Progress = Callable[[int, int], None]

# All-pairs impostor scores of a folder grow with the square of its size (LFW's 13,233 images
# give 87 million). Above this many, each impostor pair is kept with probability
# cap / total by a seeded generator (about 20M × 8 bytes = 160 MB), which still supports a
# target FMR down to about 3/20M = 1.5e-7; the report says so.
DEFAULT_MAX_IMPOSTOR_PAIRS = 20_000_000

# Failure codes of our own, next to the pipeline's `FacePipelineError.code` values.
FILE_NOT_FOUND = "file_not_found"
UNREADABLE_FILE = "unreadable_file"


# --- the report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FailedImage:
    path: str
    code: str
    message: str


@dataclass(frozen=True)
class DatasetSummary:
    """What was read, what was refused and why, and how the pairs were formed.

    ``impostor_pairs_total`` counts every impostor pair the embedded images allow;
    ``impostor_pairs_sampled`` is True when only a seeded uniform sample of them was scored
    (the report's impostor count says how many).
    """

    source: str
    layout: Literal["folder", "pairs"]
    pairs_file: str | None
    images: int
    embedded: int
    failures: dict[str, int]
    failed_images: list[FailedImage]
    identities: int | None
    identities_embedded: int | None
    genuine_pairs_skipped: int
    impostor_pairs_skipped: int
    impostor_pairs_total: int
    impostor_pairs_sampled: bool
    ignored_files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CalibrationReport:
    """Everything `calibrate` measured. ``scores`` holds the raw scores (not in `to_dict`)."""

    model_id: str
    pack_threshold: float
    scores: ScoreSet
    genuine: ScoreSummary | None
    impostor: ScoreSummary | None
    histogram: ScoreHistogram
    operating_points: list[OperatingPoint]
    at_pack_threshold: ThresholdRates
    at_zero_false_matches: ThresholdRates | None
    eer: float | None
    eer_threshold: float | None
    dataset: DatasetSummary | None = None
    match_rule: str = "score >= threshold"

    @classmethod
    def from_scores(
        cls,
        scores: ScoreSet,
        *,
        model_id: str,
        pack_threshold: float,
        target_fmrs: Iterable[float] = DEFAULT_TARGET_FMRS,
        dataset: DatasetSummary | None = None,
    ) -> CalibrationReport:
        eer = equal_error_rate(scores)
        zero_fm = (
            ThresholdRates.at(scores, float(np.nextafter(scores.impostor[-1], np.inf)))
            if scores.impostor.size
            else None
        )
        return cls(
            model_id=model_id,
            pack_threshold=float(pack_threshold),
            scores=scores,
            genuine=ScoreSummary.of(scores.genuine),
            impostor=ScoreSummary.of(scores.impostor),
            histogram=ScoreHistogram.of(scores),
            operating_points=[
                OperatingPoint.for_target(scores, t) for t in sorted(set(target_fmrs), reverse=True)
            ],
            at_pack_threshold=ThresholdRates.at(scores, pack_threshold),
            at_zero_false_matches=zero_fm,
            eer=None if eer is None else eer[0],
            eer_threshold=None if eer is None else eer[1],
            dataset=dataset,
        )

    def operating_point(self, target_fmr: float) -> OperatingPoint:
        """The operating point for any target FMR (e.g. the CLI's ``--target-fmr``)."""
        for point in self.operating_points:
            if point.target_fmr == target_fmr:
                return point
        return OperatingPoint.for_target(self.scores, target_fmr)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form: plain dicts, lists, str, int, float, bool and None."""
        return {
            "model_id": self.model_id,
            "pack_threshold": self.pack_threshold,
            "match_rule": self.match_rule,
            "dataset": None if self.dataset is None else asdict(self.dataset),
            "genuine": None if self.genuine is None else asdict(self.genuine),
            "impostor": None if self.impostor is None else asdict(self.impostor),
            "histogram": asdict(self.histogram),
            "operating_points": [asdict(p) for p in self.operating_points],
            "at_pack_threshold": asdict(self.at_pack_threshold),
            "at_zero_false_matches": (
                None if self.at_zero_false_matches is None else asdict(self.at_zero_false_matches)
            ),
            "eer": self.eer,
            "eer_threshold": self.eer_threshold,
        }


# --- embedding and scoring ------------------------------------------------------------------


def _read_capped(path: Path, limit: int) -> bytes:
    # One byte past the limit is enough for the pipeline to refuse it as too large, without
    # reading a stray multi-gigabyte file into memory.
    with path.open("rb") as handle:
        return handle.read(limit + 1)


def _embed_images(
    pipeline: FacePipeline,
    paths: Sequence[Path],
    labels: Sequence[str],
    progress: Progress | None,
    batch_size: int,
) -> tuple[dict[int, NDArray[np.float32]], list[FailedImage]]:
    """Embed each path once; failures are collected with their code, never raised."""
    vectors: dict[int, NDArray[np.float32]] = {}
    failed: list[FailedImage] = []
    total = len(paths)
    if progress is not None:
        progress(0, total)
    for start in range(0, total, batch_size):
        chunk = range(start, min(start + batch_size, total))
        frames: list[bytes] = []
        positions: list[int] = []
        for i in chunk:
            try:
                frames.append(_read_capped(paths[i], pipeline.limits.max_bytes))
            except FileNotFoundError as error:
                failed.append(FailedImage(labels[i], FILE_NOT_FOUND, str(error.strerror)))
                continue
            except OSError as error:
                failed.append(FailedImage(labels[i], UNREADABLE_FILE, str(error.strerror)))
                continue
            positions.append(i)
        for i, outcome in zip(positions, pipeline.capture_bundle(frames), strict=True):
            if outcome.capture is not None:
                vectors[i] = outcome.capture.embedding
            else:
                refusal = outcome.error
                assert isinstance(refusal, FacePipelineError)
                failed.append(FailedImage(labels[i], refusal.code, str(refusal)))
        if progress is not None:
            progress(chunk.stop, total)
    failed.sort(key=lambda f: f.path)
    return vectors, failed


def _unit_rows(vectors: Sequence[NDArray[np.float32]], dimension: int) -> FloatArray:
    if not vectors:
        return np.zeros((0, dimension), np.float64)
    matrix = np.stack(vectors).astype(np.float64)
    # The pipeline already L2-normalises; doing it again in float64 makes the dot product a
    # cosine to the last bit whatever recognizer produced the vectors.
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def _folder_scores(
    embeddings: FloatArray,
    identities: NDArray[np.int64],
    max_impostor_pairs: int,
    seed: int,
    block_rows: int = 1024,
) -> tuple[FloatArray, FloatArray, int, bool]:
    """All genuine and (possibly sampled) impostor scores over the upper triangle."""
    n = embeddings.shape[0]
    sizes = np.bincount(identities) if n else np.zeros(0, np.int64)
    genuine_total = int((sizes * (sizes - 1) // 2).sum())
    impostor_total = n * (n - 1) // 2 - genuine_total
    sampled = impostor_total > max_impostor_pairs
    keep = max_impostor_pairs / impostor_total if sampled else 1.0
    rng = np.random.default_rng(seed)
    genuine: list[FloatArray] = []
    impostor: list[FloatArray] = []
    columns = np.arange(n)
    for start in range(0, n, block_rows):
        rows = np.arange(start, min(start + block_rows, n))
        # Inner product equals cosine on unit vectors; one matrix product per block of rows.
        block = embeddings[rows] @ embeddings.T
        upper = columns[None, :] > rows[:, None]
        same = identities[rows][:, None] == identities[None, :]
        genuine.append(block[upper & same])
        cross = block[upper & ~same]
        if sampled:
            cross = cross[rng.random(cross.size) < keep]
        impostor.append(cross)
    empty = np.zeros(0, np.float64)
    return (
        np.concatenate(genuine) if genuine else empty,
        np.concatenate(impostor) if impostor else empty,
        impostor_total,
        sampled,
    )


def _failure_counts(failed: list[FailedImage]) -> dict[str, int]:
    return dict(sorted(Counter(f.code for f in failed).items()))


def calibrate(
    pipeline: FacePipeline,
    source: Path,
    *,
    pairs: Path | None = None,
    target_fmrs: Iterable[float] = DEFAULT_TARGET_FMRS,
    progress: Progress | None = None,
    max_impostor_pairs: int = DEFAULT_MAX_IMPOSTOR_PAIRS,
    batch_size: int = 16,
    seed: int = 0,
) -> CalibrationReport:
    """Embed a labelled image set once and measure the pipeline's error rates on it.

    `source` is a folder ``<person>/<image>`` (all pairs), or the image root that the paths of
    the `pairs` file are relative to, or a pairs file itself (paths relative to its folder).
    `progress(done, total)` is called as images are embedded. Impostor pairs of a folder
    beyond `max_impostor_pairs` are sampled uniformly with `seed`. Raises
    `CalibrationInputError` for an unusable layout or pairs file; images that fail decoding
    or the quality gate are counted in ``report.dataset``, never raised.
    """
    source = Path(source)
    if pairs is None and source.is_file():
        pairs, source = source, source.parent
    if not source.is_dir():
        raise CalibrationInputError(f"{source} is not a folder")
    if pairs is not None:
        return _calibrate_pairs(pipeline, source, Path(pairs), target_fmrs, progress, batch_size)
    return _calibrate_folder(
        pipeline, source, target_fmrs, progress, max_impostor_pairs, batch_size, seed
    )


def _calibrate_folder(
    pipeline: FacePipeline,
    source: Path,
    target_fmrs: Iterable[float],
    progress: Progress | None,
    max_impostor_pairs: int,
    batch_size: int,
    seed: int,
) -> CalibrationReport:
    folder = list_folder(source)
    paths, persons, ignored = folder.paths, folder.persons, folder.ignored
    if not paths:
        raise CalibrationInputError(
            f"{source} has no <person>/<image> files (expected the LFW folder layout)"
        )
    labels = [p.relative_to(source).as_posix() for p in paths]
    vectors, failed = _embed_images(pipeline, paths, labels, progress, batch_size)
    order = sorted(vectors)
    names = sorted(set(persons))
    person_index = {name: i for i, name in enumerate(names)}
    identities = np.array([person_index[persons[i]] for i in order], np.int64)
    embeddings = _unit_rows([vectors[i] for i in order], pipeline.dimension)
    genuine, impostor, impostor_total, sampled = _folder_scores(
        embeddings, identities, max_impostor_pairs, seed
    )
    dataset = DatasetSummary(
        source=str(source),
        layout="folder",
        pairs_file=None,
        images=len(paths),
        embedded=len(order),
        failures=_failure_counts(failed),
        failed_images=failed,
        identities=len(names),
        identities_embedded=len(set(identities.tolist())),
        genuine_pairs_skipped=0,
        impostor_pairs_skipped=0,
        impostor_pairs_total=impostor_total,
        impostor_pairs_sampled=sampled,
        ignored_files=ignored,
    )
    return CalibrationReport.from_scores(
        ScoreSet.of(genuine, impostor),
        model_id=pipeline.model_id,
        pack_threshold=pipeline.threshold,
        target_fmrs=target_fmrs,
        dataset=dataset,
    )


def _calibrate_pairs(
    pipeline: FacePipeline,
    root: Path,
    pairs_file: Path,
    target_fmrs: Iterable[float],
    progress: Progress | None,
    batch_size: int,
) -> CalibrationReport:
    specs = read_pairs(pairs_file)
    labels: list[str] = list(dict.fromkeys(p for s in specs for p in (s.path_a, s.path_b)))
    index = {label: i for i, label in enumerate(labels)}
    vectors, failed = _embed_images(
        pipeline, [root / label for label in labels], labels, progress, batch_size
    )
    genuine: list[float] = []
    impostor: list[float] = []
    skipped = Counter[bool]()
    unit = {i: _unit_rows([v], pipeline.dimension)[0] for i, v in vectors.items()}
    for spec in specs:
        a, b = unit.get(index[spec.path_a]), unit.get(index[spec.path_b])
        if a is None or b is None:
            skipped[spec.genuine] += 1
            continue
        (genuine if spec.genuine else impostor).append(float(a @ b))
    dataset = DatasetSummary(
        source=str(root),
        layout="pairs",
        pairs_file=str(pairs_file),
        images=len(labels),
        embedded=len(vectors),
        failures=_failure_counts(failed),
        failed_images=failed,
        identities=None,
        identities_embedded=None,
        genuine_pairs_skipped=skipped[True],
        impostor_pairs_skipped=skipped[False],
        impostor_pairs_total=len(impostor),
        impostor_pairs_sampled=False,
    )
    return CalibrationReport.from_scores(
        ScoreSet.of(genuine, impostor),
        model_id=pipeline.model_id,
        pack_threshold=pipeline.threshold,
        target_fmrs=target_fmrs,
        dataset=dataset,
    )
