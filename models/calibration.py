"""Accuracy calibration: genuine and impostor score distributions, FNMR at fixed FMRs, DET.

A deployer points `calibrate` at labelled face images of their own population, captured the
way their customers capture, and gets back how often the pack's recognizer confuses two
people (FMR, false match rate) and fails to recognise the same person (FNMR, false non-match
rate), and which cosine threshold to set for the FMR their risk policy allows.

Inputs (see `calibrate`):

* **A folder in the LFW layout**, ``<root>/<person>/<image>``: every regular, non-hidden file
  below a person folder is one capture of that person (files in nested folders count for the
  person folder they sit in; files directly under ``<root>`` are listed in
  ``ignored_files``). Genuine pairs are all pairs of two different captures of one person,
  impostor pairs all pairs of captures of two different persons.
* **A pairs file** (`parse_pairs`), with image paths relative to an image root:

  - LFW ``pairs.txt`` style, whitespace separated: ``name n1 n2`` is a genuine pair of
    ``name/name_<n1:04d>.jpg`` and ``name/name_<n2:04d>.jpg``; ``name1 n1 name2 n2`` an
    impostor pair. A first line of one or two integers (LFW's fold header) is skipped.
  - CSV, ``path_a,path_b,same`` with ``same`` 1 (genuine) or 0 (impostor); a first line
    whose third field is not 0/1 is a header and is skipped.

  Blank lines and lines starting with ``#`` are ignored in both.

Every distinct image is decoded, gated and embedded once, through the same `FacePipeline` the
service uses, so its quality gate applies: an image the service would refuse is not scored,
and it is counted under its error code (``no_face``, ``extreme_pose``, ``corrupt_image``,
...) in the report, never dropped silently. Pairs that lose an image are counted as skipped.

Scores are cosines of unit vectors. **Match rule: a comparison is a match when
``score >= threshold``** (OpenCV's rule for its documented SFace threshold 0.363); every
figure here, and the thresholds it recommends, follow it. Then

    FMR(t)  = #{impostor scores >= t} / #impostor comparisons
    FNMR(t) = #{genuine scores  <  t} / #genuine comparisons

and the threshold for a target FMR is the smallest threshold whose empirical FMR is at most
the target: just above (`numpy.nextafter`) the (k+1)-th highest impostor score, with
k = floor(target × #impostor comparisons) false matches allowed.

An empirical FMR of 1e-6 means nothing on 10,000 impostor comparisons. By the rule of three,
observing 0 false matches among N comparisons bounds the FMR by 3/N at 95% confidence, so a
target FMR is only *supported* with at least 3/target comparisons (3,000 for 1e-3, 3 million
for 1e-6); rows below that are flagged and carry the rule-of-three bound 3/N, the lowest FMR
this data can vouch for at all.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models.errors import FacePipelineError
from models.packs import write_atomic
from models.pipeline import FacePipeline

FloatArray = NDArray[np.float64]
Progress = Callable[[int, int], None]

DEFAULT_TARGET_FMRS: tuple[float, ...] = (1e-3, 1e-4, 1e-5, 1e-6)

# All-pairs impostor scores of a folder grow with the square of its size (LFW's 13,233 images
# give 87 million). Above this many, each impostor pair is kept with probability
# cap / total by a seeded generator (about 20M × 8 bytes = 160 MB), which still supports a
# target FMR down to about 3/20M = 1.5e-7; the report says so.
DEFAULT_MAX_IMPOSTOR_PAIRS = 20_000_000

# How confident "0 false matches among N" is: 95% ⇒ FMR ≤ -ln(0.05)/N ≈ 3/N.
RULE_OF_THREE = 3

HISTOGRAM_BINS = 40  # over [-1, 1]: 0.05 of cosine per bin

# Failure codes of our own, next to the pipeline's `FacePipelineError.code` values.
FILE_NOT_FOUND = "file_not_found"
UNREADABLE_FILE = "unreadable_file"


class CalibrationInputError(ValueError):
    """The folder or pairs file cannot be used (wrong layout, malformed line)."""

    code = "invalid_calibration_input"


# --- score maths ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreSet:
    """Genuine and impostor comparison scores, kept as float64 and sorted ascending."""

    genuine: FloatArray
    impostor: FloatArray

    @classmethod
    def of(cls, genuine: ArrayLike, impostor: ArrayLike) -> ScoreSet:
        return cls(_sorted_scores(genuine), _sorted_scores(impostor))


def _sorted_scores(values: ArrayLike) -> FloatArray:
    array = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if array.size and not np.isfinite(array).all():
        raise ValueError("scores must be finite")
    return array


def false_matches(impostor_sorted: FloatArray, threshold: float) -> int:
    """How many impostor scores would match (``score >= threshold``)."""
    return int(impostor_sorted.size - np.searchsorted(impostor_sorted, threshold, side="left"))


def false_non_matches(genuine_sorted: FloatArray, threshold: float) -> int:
    """How many genuine scores would not match (``score < threshold``)."""
    return int(np.searchsorted(genuine_sorted, threshold, side="left"))


def allowed_false_matches(target_fmr: float, comparisons: int) -> int:
    """floor(target × N), computed in decimal so 1e-5 × 300,000 is 3, not 2.99999…."""
    _check_target(target_fmr)
    return int(Decimal(repr(target_fmr)) * comparisons)


def required_comparisons(target_fmr: float) -> int:
    """Impostor comparisons needed before a target FMR is supported: ceil(3 / target)."""
    _check_target(target_fmr)
    return math.ceil(Decimal(RULE_OF_THREE) / Decimal(repr(target_fmr)))


def rule_of_three(comparisons: int) -> float:
    """95% upper bound on the FMR when 0 false matches are observed among `comparisons`."""
    if comparisons <= 0:
        raise ValueError("the rule of three needs at least one comparison")
    return RULE_OF_THREE / comparisons


def threshold_for_fmr(impostor_sorted: FloatArray, target_fmr: float) -> float | None:
    """The smallest threshold whose empirical FMR is ≤ `target_fmr`; None without impostors.

    With k = floor(target × N) false matches allowed, that is the first float above the
    (k+1)-th highest impostor score: any lower threshold lets k+1 impostors match.
    """
    n = impostor_sorted.size
    if n == 0:
        return None
    k = allowed_false_matches(target_fmr, n)
    return float(np.nextafter(impostor_sorted[n - 1 - k], np.inf))


def equal_error_rate(scores: ScoreSet) -> tuple[float, float] | None:
    """(EER, threshold): the observed score where FMR and FNMR are closest; their mean there.

    Candidates are every observed score and the first float above the highest one; the
    lowest candidate with the smallest |FMR − FNMR| wins. No interpolation: with few
    comparisons the EER is as coarse as the data. None when either side is empty.
    """
    genuine, impostor = scores.genuine, scores.impostor
    if genuine.size == 0 or impostor.size == 0:
        return None
    observed = np.unique(np.concatenate([genuine, impostor]))
    candidates = np.append(observed, np.nextafter(observed[-1], np.inf))
    fmr = (impostor.size - np.searchsorted(impostor, candidates, side="left")) / impostor.size
    fnmr = np.searchsorted(genuine, candidates, side="left") / genuine.size
    best = int(np.argmin(np.abs(fmr - fnmr)))
    return float((fmr[best] + fnmr[best]) / 2), float(candidates[best])


def _check_target(target_fmr: float) -> None:
    if not 0 < target_fmr < 1:
        raise ValueError(f"a target FMR must lie strictly between 0 and 1, not {target_fmr}")


@dataclass(frozen=True)
class ThresholdRates:
    """Error counts and rates at one threshold (match when ``score >= threshold``).

    ``rule_of_three_fmr`` is 3/N when no impostor matched: the FMR is then only known to be
    below that bound (95%), not to be 0.
    """

    threshold: float
    impostor_comparisons: int
    false_matches: int
    fmr: float | None
    genuine_comparisons: int
    false_non_matches: int
    fnmr: float | None
    rule_of_three_fmr: float | None

    @classmethod
    def at(cls, scores: ScoreSet, threshold: float) -> ThresholdRates:
        n_imp, n_gen = scores.impostor.size, scores.genuine.size
        fm = false_matches(scores.impostor, threshold)
        fnm = false_non_matches(scores.genuine, threshold)
        return cls(
            threshold=float(threshold),
            impostor_comparisons=n_imp,
            false_matches=fm,
            fmr=fm / n_imp if n_imp else None,
            genuine_comparisons=n_gen,
            false_non_matches=fnm,
            fnmr=fnm / n_gen if n_gen else None,
            rule_of_three_fmr=rule_of_three(n_imp) if n_imp and fm == 0 else None,
        )


@dataclass(frozen=True)
class OperatingPoint:
    """FNMR at a target FMR, with the threshold that achieves it and whether data backs it.

    ``supported`` is False when there are fewer than ``required_impostor_comparisons``
    (3 / target) impostor comparisons; then ``rule_of_three_fmr`` (3/N) is the lowest FMR the
    data can vouch for, and the threshold is an extrapolation, not a measurement.
    """

    target_fmr: float
    threshold: float | None
    impostor_comparisons: int
    false_matches: int
    fmr: float | None
    genuine_comparisons: int
    false_non_matches: int
    fnmr: float | None
    required_impostor_comparisons: int
    supported: bool
    rule_of_three_fmr: float | None

    @classmethod
    def for_target(cls, scores: ScoreSet, target_fmr: float) -> OperatingPoint:
        required = required_comparisons(target_fmr)
        n_imp = scores.impostor.size
        supported = n_imp >= required
        bound = None if supported or n_imp == 0 else rule_of_three(n_imp)
        threshold = threshold_for_fmr(scores.impostor, target_fmr)
        if threshold is None:
            return cls(
                target_fmr=target_fmr,
                threshold=None,
                impostor_comparisons=0,
                false_matches=0,
                fmr=None,
                genuine_comparisons=scores.genuine.size,
                false_non_matches=0,
                fnmr=None,
                required_impostor_comparisons=required,
                supported=False,
                rule_of_three_fmr=None,
            )
        rates = ThresholdRates.at(scores, threshold)
        return cls(
            target_fmr=target_fmr,
            threshold=threshold,
            impostor_comparisons=n_imp,
            false_matches=rates.false_matches,
            fmr=rates.fmr,
            genuine_comparisons=rates.genuine_comparisons,
            false_non_matches=rates.false_non_matches,
            fnmr=rates.fnmr,
            required_impostor_comparisons=required,
            supported=supported,
            rule_of_three_fmr=bound,
        )


@dataclass(frozen=True)
class ScoreSummary:
    count: int
    mean: float
    std: float
    min: float
    p01: float
    p05: float
    median: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, sorted_scores: FloatArray) -> ScoreSummary | None:
        if sorted_scores.size == 0:
            return None
        p01, p05, median, p95, p99 = np.percentile(sorted_scores, [1, 5, 50, 95, 99])
        return cls(
            count=int(sorted_scores.size),
            mean=float(sorted_scores.mean()),
            std=float(sorted_scores.std()),
            min=float(sorted_scores[0]),
            p01=float(p01),
            p05=float(p05),
            median=float(median),
            p95=float(p95),
            p99=float(p99),
            max=float(sorted_scores[-1]),
        )


@dataclass(frozen=True)
class ScoreHistogram:
    """Counts per cosine bin: ``edges`` has one more entry than each count list."""

    edges: list[float]
    genuine: list[int]
    impostor: list[int]

    @classmethod
    def of(cls, scores: ScoreSet, bins: int = HISTOGRAM_BINS) -> ScoreHistogram:
        edges = np.linspace(-1.0, 1.0, bins + 1)
        # Rounding can push a cosine a hair outside [-1, 1]; it belongs in the end bins.
        genuine, _ = np.histogram(np.clip(scores.genuine, -1, 1), edges)
        impostor, _ = np.histogram(np.clip(scores.impostor, -1, 1), edges)
        return cls(
            edges=[round(float(e), 6) for e in edges],
            genuine=[int(c) for c in genuine],
            impostor=[int(c) for c in impostor],
        )


# --- the dataset side -----------------------------------------------------------------------


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


# --- pairs files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSpec:
    """One listed comparison; paths are relative to the image root (or absolute)."""

    path_a: str
    path_b: str
    genuine: bool
    line: int


def read_pairs(path: Path) -> list[PairSpec]:
    return parse_pairs(path.read_text(encoding="utf-8-sig"), source=str(path))


def parse_pairs(text: str, source: str = "<pairs>") -> list[PairSpec]:
    """Parse an LFW ``pairs.txt``-style or ``path_a,path_b,same`` CSV pairs list.

    The format is decided by the first content line: a comma makes it CSV.
    """
    lines = [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise CalibrationInputError(f"{source}: no pairs")
    if "," in lines[0][1]:
        pairs = _parse_csv_pairs(lines, source)
    else:
        pairs = _parse_lfw_pairs(lines, source)
    if not pairs:
        raise CalibrationInputError(f"{source}: no pairs")
    return pairs


def _parse_csv_pairs(lines: list[tuple[int, str]], source: str) -> list[PairSpec]:
    pairs: list[PairSpec] = []
    for position, (number, line) in enumerate(lines):
        fields = [f.strip() for f in next(csv.reader([line]))]
        if len(fields) != 3:
            raise CalibrationInputError(
                f"{source}:{number}: expected path_a,path_b,same; got {len(fields)} fields"
            )
        path_a, path_b, same = fields
        if same not in ("0", "1"):
            if position == 0:
                continue  # a header row
            raise CalibrationInputError(f"{source}:{number}: 'same' must be 0 or 1, not {same!r}")
        if not path_a or not path_b:
            raise CalibrationInputError(f"{source}:{number}: empty image path")
        pairs.append(PairSpec(path_a, path_b, same == "1", number))
    return pairs


def _lfw_image(name: str, number: str, source: str, line: int) -> str:
    if not number.isdigit() or int(number) < 1:
        raise CalibrationInputError(f"{source}:{line}: image number {number!r} is not positive")
    return f"{name}/{name}_{int(number):04d}.jpg"


def _parse_lfw_pairs(lines: list[tuple[int, str]], source: str) -> list[PairSpec]:
    pairs: list[PairSpec] = []
    for position, (number, line) in enumerate(lines):
        tokens = line.split()
        if position == 0 and len(tokens) <= 2 and all(t.isdigit() for t in tokens):
            continue  # LFW's "<folds>\t<pairs per fold>" header
        if len(tokens) == 3:
            name, n1, n2 = tokens
            a = _lfw_image(name, n1, source, number)
            b = _lfw_image(name, n2, source, number)
            pairs.append(PairSpec(a, b, True, number))
        elif len(tokens) == 4:
            name1, n1, name2, n2 = tokens
            a = _lfw_image(name1, n1, source, number)
            b = _lfw_image(name2, n2, source, number)
            pairs.append(PairSpec(a, b, False, number))
        else:
            raise CalibrationInputError(
                f"{source}:{number}: expected 'name n1 n2' or 'name1 n1 name2 n2'; "
                f"got {len(tokens)} fields"
            )
    return pairs


# --- embedding ------------------------------------------------------------------------------


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


def _list_folder(root: Path) -> tuple[list[Path], list[str], list[str]]:
    """(image paths, person of each, ignored top-level files), in a stable sorted order."""
    paths: list[Path] = []
    persons: list[str] = []
    ignored: list[str] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for dirpath, dirnames, filenames in os.walk(entry):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not name.startswith("."):
                        paths.append(Path(dirpath) / name)
                        persons.append(entry.name)
        else:
            ignored.append(entry.name)
    return paths, persons, ignored


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
    paths, persons, ignored = _list_folder(source)
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


# --- presentation ---------------------------------------------------------------------------


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def format_report(report: CalibrationReport) -> str:
    """A plain-text summary for a terminal (the JSON form is `CalibrationReport.to_dict`)."""
    out = io.StringIO()
    out.write(f"model {report.model_id}, pack threshold {report.pack_threshold:.3f}")
    out.write(f" (match when {report.match_rule})\n")
    data = report.dataset
    if data is not None:
        out.write(f"images: {data.images} read, {data.embedded} embedded")
        if data.identities is not None:
            out.write(f", {data.identities_embedded} of {data.identities} persons")
        out.write("\n")
        for code, count in data.failures.items():
            out.write(f"  refused {count:>6}  {code}\n")
        if data.genuine_pairs_skipped or data.impostor_pairs_skipped:
            out.write(
                f"pairs skipped (an image was refused): {data.genuine_pairs_skipped} genuine, "
                f"{data.impostor_pairs_skipped} impostor\n"
            )
        if data.impostor_pairs_sampled:
            out.write(
                f"impostor pairs: a uniform sample of {report.scores.impostor.size} "
                f"of {data.impostor_pairs_total}\n"
            )
        if data.ignored_files:
            out.write(f"ignored (not in a person folder): {', '.join(data.ignored_files)}\n")
    for name, summary in (("genuine", report.genuine), ("impostor", report.impostor)):
        if summary is None:
            out.write(f"{name}: no comparisons\n")
        else:
            out.write(
                f"{name}: {summary.count} comparisons, mean {summary.mean:.3f}, "
                f"min {summary.min:.3f}, median {summary.median:.3f}, max {summary.max:.3f}\n"
            )
    at = report.at_pack_threshold
    out.write(f"at the pack threshold: FMR {_rate(at.fmr)}, FNMR {_rate(at.fnmr)}")
    if at.rule_of_three_fmr is not None:
        out.write(f" (0 false matches: FMR < {at.rule_of_three_fmr:.3g} at 95%)")
    out.write("\n")
    if report.eer is not None and report.eer_threshold is not None:
        out.write(f"EER {report.eer:.3g} at threshold {report.eer_threshold:.4f}\n")
    out.write("target FMR  threshold  FNMR       impostor comparisons\n")
    for p in report.operating_points:
        threshold = "n/a" if p.threshold is None else f"{p.threshold:.4f}"
        line = (
            f"{p.target_fmr:<10.0e}  {threshold:<9}  {_rate(p.fnmr):<9}  {p.impostor_comparisons}"
        )
        if not p.supported:
            line += f"  too few (need {p.required_impostor_comparisons})"
            if p.rule_of_three_fmr is not None:
                line += f"; the lowest FMR this data can show is {p.rule_of_three_fmr:.3g}"
        out.write(line + "\n")
    return out.getvalue()


def _det_curve(scores: ScoreSet, points: int = 400) -> tuple[FloatArray, FloatArray]:
    """(FMR, FNMR) at thresholds spread evenly over log FMR and over the genuine quantiles."""
    genuine, impostor = scores.genuine, scores.impostor
    ranks = np.unique(np.round(np.logspace(0, math.log10(impostor.size), points)).astype(int))
    thresholds = np.concatenate(
        [
            np.nextafter(impostor[impostor.size - ranks], np.inf),
            impostor[impostor.size - ranks],
            genuine[np.unique(np.linspace(0, genuine.size - 1, points).astype(int))],
        ]
    )
    thresholds = np.unique(thresholds)
    fmr = (impostor.size - np.searchsorted(impostor, thresholds, side="left")) / impostor.size
    fnmr = np.searchsorted(genuine, thresholds, side="left") / genuine.size
    return fmr, fnmr


def write_det_plot(
    source: CalibrationReport | ScoreSet,
    path: Path,
    *,
    threshold: float | None = None,
    title: str | None = None,
) -> Path:
    """Render a DET curve (FNMR against FMR, both log-scaled) as a PNG at `path`.

    Marks `threshold` (default: the report's pack threshold) and the report's target FMRs.
    On log axes a rate of 0 cannot be drawn: FMR = 0 points are left out and FNMR = 0 is
    drawn at 1 / (2 × genuine comparisons), as the axis label says.
    """
    # Imported here so that the service, which never plots, does not pay for matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(source, CalibrationReport):
        scores = source.scores
        threshold = source.pack_threshold if threshold is None else threshold
        title = title or f"DET: {source.model_id}"
        targets = [p.target_fmr for p in source.operating_points]
    else:
        scores, targets = source, []
    if scores.genuine.size == 0 or scores.impostor.size == 0:
        raise ValueError("a DET curve needs both genuine and impostor scores")
    fnmr_floor = 0.5 / scores.genuine.size

    figure = Figure(figsize=(7, 5.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    fmr, fnmr = _det_curve(scores)
    shown = fmr > 0
    axes.step(fmr[shown], np.maximum(fnmr[shown], fnmr_floor), where="post", label="DET")
    for target in targets:
        axes.axvline(target, color="0.6", linestyle=":", linewidth=1)
    lowest = min([0.5 / scores.impostor.size, *(t / 2 for t in targets)])
    bound = rule_of_three(scores.impostor.size)
    if lowest < bound:
        axes.axvspan(
            lowest, min(bound, 1.0), color="0.9", label="FMR < 3/N: beyond what N can show"
        )
    if threshold is not None:
        rates = ThresholdRates.at(scores, threshold)
        assert rates.fmr is not None and rates.fnmr is not None
        # With 0 false matches the point sits at the rule-of-three bound, which is all the
        # data can say about it.
        x = rates.fmr if rates.false_matches else rule_of_three(scores.impostor.size)
        axes.plot(
            [x],
            [max(rates.fnmr, fnmr_floor)],
            "o",
            color="C3",
            label=f"threshold {threshold:.3f}: FMR {'<' if not rates.false_matches else ''}"
            f"{x:.2g}, FNMR {rates.fnmr:.2g}",
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(lowest, 1)
    axes.set_ylim(fnmr_floor * 0.8, 1.05)
    axes.set_xlabel(f"FMR ({scores.impostor.size} impostor comparisons)")
    axes.set_ylabel(
        f"FNMR ({scores.genuine.size} genuine comparisons; 0 drawn at {fnmr_floor:.2g})"
    )
    axes.set_title(title or "DET")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path = Path(path)
    write_atomic(path, buffer.getvalue())
    return path
