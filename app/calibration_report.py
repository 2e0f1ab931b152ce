"""A calibration report for people: the terminal summary and the DET plot (PNG).

The numbers come from `models.calibration`; this module only presents them, so the model
library never imports matplotlib.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import crashsafe
from models.calibration import (
    CalibrationReport,
    ScoreSet,
    ThresholdRates,
    det_curve,
    rule_of_three,
)
from models.calibration.pad import PadReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes


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


def write_det_plot(
    source: CalibrationReport | ScoreSet,
    path: Path,
    *,
    threshold: float | None = None,
    title: str | None = None,
    rate_names: tuple[str, str] = ("FMR", "FNMR"),
) -> Path:
    """Render a DET curve (FNMR against FMR, both log-scaled) as a PNG at `path`.

    Marks `threshold` (default: the report's pack threshold) and the report's target FMRs.
    On log axes a rate of 0 cannot be drawn: FMR = 0 points are left out and FNMR = 0 is
    drawn at 1 / (2 × genuine comparisons), as the axis label says. `rate_names`: what the
    two rates are called (a PAD report plots APCER against BPCER).
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
    fmr, fnmr = det_curve(scores)
    shown = fmr > 0
    axes.step(fmr[shown], np.maximum(fnmr[shown], fnmr_floor), where="post", label="DET")
    for target in targets:
        axes.axvline(target, color="0.6", linestyle=":", linewidth=1)
    lowest = min([0.5 / scores.impostor.size, *(t / 2 for t in targets)])
    bound = rule_of_three(scores.impostor.size)
    if lowest < bound:
        axes.axvspan(
            lowest,
            min(bound, 1.0),
            color="0.9",
            label=f"{rate_names[0]} < 3/N: beyond what N can show",
        )
    if threshold is not None:
        _mark_threshold(axes, scores, threshold, fnmr_floor, rate_names)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(lowest, 1)
    axes.set_ylim(fnmr_floor * 0.8, 1.05)
    x_name, y_name = rate_names
    negatives, positives = (
        ("impostor comparisons", "genuine comparisons")
        if rate_names == ("FMR", "FNMR")
        else ("attack presentations", "bona fide presentations")
    )
    axes.set_xlabel(f"{x_name} ({scores.impostor.size} {negatives})")
    axes.set_ylabel(f"{y_name} ({scores.genuine.size} {positives}; 0 drawn at {fnmr_floor:.2g})")
    axes.set_title(title or "DET")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    crashsafe.write_bytes(path, buffer.getvalue())
    return path


def _mark_threshold(
    axes: Axes,
    scores: ScoreSet,
    threshold: float,
    fnmr_floor: float,
    rate_names: tuple[str, str] = ("FMR", "FNMR"),
) -> None:
    """One point on the DET plot where `threshold` operates, named with its rates."""
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
        label=f"threshold {threshold:.3f}: {rate_names[0]} "
        f"{'<' if not rates.false_matches else ''}{x:.2g}, {rate_names[1]} {rates.fnmr:.2g}",
    )


def format_pad_report(report: PadReport) -> str:
    """A plain-text summary of a PAD calibration (the JSON form is `PadReport.to_dict`)."""
    out = io.StringIO()
    out.write(f"PAD model {report.model_id}\n")
    live, attacks = report.live_scores, report.attack_scores
    out.write(f"scored: {len(live)} bona fide, {len(attacks)} attack presentations\n")
    for failure in report.failures:
        out.write(f"  not scored  {failure.path}: {failure.code} ({failure.message})\n")
    for name, values in (("bona fide", live), ("attack", attacks)):
        out.write(
            f"{name} scores: min {min(values):.4f}, median {float(np.median(values)):.4f}, "
            f"max {max(values):.4f}\n"
        )
    out.write(
        "APCER: share of attack presentations classified bona fide (live score >= threshold),\n"
        "       per PAI species; the worst species is reported (ISO/IEC 30107-3)\n"
        "BPCER: share of bona fide presentations classified as attacks (score < threshold)\n"
    )
    for title, rates in (
        ("at the threshold", report.at_threshold),
        (f"for BPCER <= {report.target_bpcer:g}", report.for_target),
    ):
        if rates is None:
            continue
        out.write(
            f"{title} {rates.threshold:.4f}: APCER {_rate(rates.apcer)}, "
            f"BPCER {_rate(rates.bpcer)}\n"
        )
        for species, apcer in rates.apcer_by_species.items():
            out.write(f"  APCER {species}: {apcer:.3g}\n")
    out.write(
        "The passive model is not validated on your population: these figures hold for this "
        "folder only. Calibrate on your own captures and attacks before the `reject` policy.\n"
    )
    return out.getvalue()
