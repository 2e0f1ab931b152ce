"""DET smoke run: `models.calibration.calibrate` on augmented captures of the t1.jpg faces.

    python -m benchmarks.calibration [--quick]

**A smoke test, not a calibration.** Six people from one group photo, eight renderings of
each (`benchmarks.faces`): every genuine pair is one photograph twice, and a few hundred
impostor comparisons support no FMR below about 1e-2 (rule of three: 3 / N). It shows the
tool end to end (embedding through the service's pipeline and quality gate, failure counts,
the report, the DET PNG) and how long it takes; the figures say nothing about the pack's
accuracy. A deployer runs ``wajah calibrate faces/ --target-fmr 1e-4 --out calibration/`` on
consented, labelled captures of their own population in the LFW layout
(``faces/<person>/<image>.jpg``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from app.calibration_report import write_det_plot
from benchmarks.common import RESULTS_DIR, print_table, write_results
from benchmarks.faces import write_folder
from models.calibration import calibrate
from models.pipeline import FacePipeline
from models.prepare import prepare_default_pack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="same work (it is small)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wajah-bench-calibration-") as tmp:
        work = Path(tmp)
        pipeline = FacePipeline.load(prepare_default_pack(work / "models"), threads=1)
        folder = write_folder(pipeline, work / "faces")
        started = time.perf_counter()
        report = calibrate(pipeline, folder)
        seconds = time.perf_counter() - started
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    png = write_det_plot(
        report,
        RESULTS_DIR / f"{stamp}-det-smoke{'-quick' if args.quick else ''}.png",
        title=f"DET smoke test (augmented t1.jpg captures, NOT a calibration): {report.model_id}",
    )
    data = report.dataset
    assert data is not None
    at = report.at_pack_threshold
    print_table(
        "calibration smoke test (not a calibration)",
        ["measure", "value"],
        [
            ["images / embedded", f"{data.images} / {data.embedded}"],
            ["refused by the quality gate", dict(data.failures)],
            [
                "genuine / impostor comparisons",
                f"{report.scores.genuine.size} / {report.scores.impostor.size}",
            ],
            [
                "at pack threshold: false matches / non-matches",
                f"{at.false_matches} / {at.false_non_matches}",
            ],
            ["lowest FMR this data can support (3/N)", f"{3 / report.scores.impostor.size:.2g}"],
            ["seconds (embed + score)", round(seconds, 2)],
            ["DET", png.name],
        ],
    )
    write_results(
        "calibration" + ("-quick" if args.quick else ""),
        {
            "quick": args.quick,
            "smoke_test_not_a_calibration": True,
            "model_id": report.model_id,
            "seconds": round(seconds, 2),
            "det_png": png.name,
            "report": report.to_dict(),
        },
    )


if __name__ == "__main__":
    main()
