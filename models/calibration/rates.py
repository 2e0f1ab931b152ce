"""Error rates from genuine and impostor scores: FMR, FNMR, thresholds for a target FMR, EER.

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

import math
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

DEFAULT_TARGET_FMRS: tuple[float, ...] = (1e-3, 1e-4, 1e-5, 1e-6)

# How confident "0 false matches among N" is: 95% ⇒ FMR ≤ -ln(0.05)/N ≈ 3/N.
RULE_OF_THREE = 3

HISTOGRAM_BINS = 40  # over [-1, 1]: 0.05 of cosine per bin


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


def det_curve(scores: ScoreSet, points: int = 400) -> tuple[FloatArray, FloatArray]:
    """(FMR, FNMR) at thresholds spread evenly over log FMR and over the genuine quantiles.

    Both sides must be non-empty (a DET curve of one side is not a curve).
    """
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
