"""A calibration report for people: the terminal summary and the DET plot.

The numbers are `models.calibration`'s (tests/models/test_calibration.py); these tests check
how they are shown, on the same constructed grid of scores and the same smoke-test folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.calibration_report import format_report, write_det_plot
from models.calibration import CalibrationReport, ScoreSet, calibrate
from models.pipeline import FacePipeline
from tests.models.test_calibration import spelled_out_gate, write_faces_folder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def grid_scores() -> ScoreSet:
    """10,000 impostor scores 0.0000…0.9999 and 50 genuine scores 0.9950…0.9999, shuffled
    (the grid of tests/models/test_calibration.py)."""
    rng = np.random.default_rng(20240611)
    impostor = rng.permutation(np.arange(10_000)) / 10_000
    genuine = rng.permutation(np.arange(9_950, 10_000)) / 10_000
    return ScoreSet.of(genuine, impostor)


@pytest.fixture(scope="module")
def smoke_report(
    pipeline: FacePipeline, group_photo_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> CalibrationReport:
    """`calibrate` on the smoke-test folder: 15 genuine and 90 impostor comparisons."""
    gate = spelled_out_gate(pipeline)
    folder = write_faces_folder(gate, group_photo_path, tmp_path_factory.mktemp("faces"))
    return calibrate(gate, folder)


def test_the_summary_of_the_grid(grid_scores: ScoreSet) -> None:
    report = CalibrationReport.from_scores(grid_scores, model_id="grid", pack_threshold=0.99)
    # The FNMR column is the models test's hand count: 40, 49, 50 and 50 of 50 genuine scores
    # fall below the threshold for 1e-3, 1e-4, 1e-5 and 1e-6.
    assert format_report(report) == (
        "model grid, pack threshold 0.990 (match when score >= threshold)\n"
        "genuine: 50 comparisons, mean 0.997, min 0.995, median 0.997, max 1.000\n"
        "impostor: 10000 comparisons, mean 0.500, min 0.000, median 0.500, max 1.000\n"
        "at the pack threshold: FMR 0.01, FNMR 0\n"
        "EER 0.0025 at threshold 0.9950\n"
        "target FMR  threshold  FNMR       impostor comparisons\n"
        "1e-03       0.9989     0.8        10000\n"
        "1e-04       0.9998     0.98       10000  too few (need 30000); "
        "the lowest FMR this data can show is 0.0003\n"
        "1e-05       0.9999     1          10000  too few (need 300000); "
        "the lowest FMR this data can show is 0.0003\n"
        "1e-06       0.9999     1          10000  too few (need 3000000); "
        "the lowest FMR this data can show is 0.0003\n"
    )


def test_det_plot_of_scores_alone(grid_scores: ScoreSet, tmp_path: Path) -> None:
    assert write_det_plot(grid_scores, tmp_path / "det.png").read_bytes()[:8] == PNG_MAGIC


def test_smoke_report_summary_and_det_plot(smoke_report: CalibrationReport, tmp_path: Path) -> None:
    assert "too few (need 3000)" in format_report(smoke_report)
    png = write_det_plot(smoke_report, tmp_path / "det.png")
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_a_det_plot_needs_both_sides(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both genuine and impostor"):
        write_det_plot(ScoreSet.of([], [0.1, 0.2]), tmp_path / "det.png")
    assert not (tmp_path / "det.png").exists()
