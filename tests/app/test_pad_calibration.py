"""`wajah calibrate --pad` (issue 21, item 6) on a folder built from the insightface photos:
bona fide captures and SIMULATED attacks (tests/pad_renders.py). The tests check that APCER,
BPCER and the threshold for a target BPCER are computed correctly from the scores (against a
direct count), never that the model separates these images: it does not, much (see
docs/onboarding.md "Calibrating PAD")."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import cli
from models.calibration import CalibrationInputError
from models.calibration.pad import PadReport, rates_at, score_pad_folder, threshold_for_bpcer
from models.imaging import encode_jpeg
from models.liveness import DEFAULT_THRESHOLD, PAD_SHA256, PassiveLiveness, read_pad_model
from models.packs import ModelPack
from models.pipeline import FacePipeline
from tests.pad_renders import write_folder


@pytest.fixture(scope="module")
def pad_folder(
    tmp_path_factory: pytest.TempPathFactory,
    pipeline: FacePipeline,
    group_photo_path: Path,
    single_face_path: Path,
) -> Path:
    root = tmp_path_factory.mktemp("pad")
    assert write_folder(root, pipeline.detector, group_photo_path, single_face_path) == (9, 15)
    return root


@pytest.fixture(scope="module")
def report(pad_folder: Path, pipeline: FacePipeline, models_dir: Path) -> PadReport:
    return score_pad_folder(pad_folder, pipeline.detector, PassiveLiveness.load(models_dir))


def _direct(report: PadReport, threshold: float) -> tuple[float, dict[str, float], float]:
    """APCER (worst species), APCER per species and BPCER, counted one sample at a time."""
    live = [s.score for s in report.samples if s.label == "live"]
    species = {s.species for s in report.samples if s.label == "attack"}
    per_species = {}
    for name in species:
        scores = [s.score for s in report.samples if s.species == name]
        per_species[name] = sum(1 for v in scores if v >= threshold) / len(scores)
    bpcer = sum(1 for v in live if v < threshold) / len(live)
    return max(per_species.values()), per_species, bpcer


def test_every_image_is_scored_and_labelled(report: PadReport) -> None:
    assert report.failures == []
    assert len(report.live_scores) == 9 and len(report.attack_scores) == 15
    species = {s.path.split(os.sep)[1] if s.label == "attack" else "" for s in report.samples}
    assert species == {"", "print", "screen", "photo"}
    assert {s.species for s in report.samples} == {"bona_fide", "print", "screen", "photo"}
    assert report.threshold == DEFAULT_THRESHOLD and report.target_bpcer == 0.05


def test_rates_match_a_direct_count(report: PadReport) -> None:
    for threshold in (DEFAULT_THRESHOLD, 0.1, 0.15, *report.live_scores, *report.attack_scores):
        rates = rates_at(report.samples, threshold)
        apcer, per_species, bpcer = _direct(report, threshold)
        assert rates.apcer == pytest.approx(apcer)
        assert rates.apcer_by_species == pytest.approx(per_species)
        assert rates.bpcer == pytest.approx(bpcer)
    at = report.at_threshold
    assert (at.apcer, at.bpcer) == pytest.approx(_direct(report, DEFAULT_THRESHOLD)[::2])


@pytest.mark.parametrize("target", [0.0, 0.05, 0.12, 0.34, 0.5, 0.9])
def test_the_threshold_for_a_target_bpcer_is_the_highest_that_meets_it(
    report: PadReport, target: float
) -> None:
    live = sorted(report.live_scores)
    chosen = threshold_for_bpcer(live, target)
    assert chosen is not None and chosen in live
    assert _direct(report, chosen)[2] <= target
    higher = [v for v in live if v > chosen]
    if higher:  # the next bona fide score up refuses one presentation too many
        assert _direct(report, higher[0])[2] > target
    assert threshold_for_bpcer([], target) is None


def test_the_report_for_the_target_uses_that_threshold(report: PadReport) -> None:
    assert report.for_target is not None
    assert report.for_target.threshold == threshold_for_bpcer(report.live_scores, 0.05)
    assert report.for_target.bpcer == 0.0  # 9 bona fide: floor(0.05 × 9) = 0 allowed
    assert report.for_target.threshold == min(report.live_scores)


def test_bad_folders_are_refused_clearly(
    tmp_path: Path, pipeline: FacePipeline, models_dir: Path, pad_folder: Path
) -> None:
    model = PassiveLiveness.load(models_dir)
    with pytest.raises(CalibrationInputError, match="is not a folder"):
        score_pad_folder(tmp_path / "missing", pipeline.detector, model)
    (tmp_path / "live").mkdir()
    with pytest.raises(CalibrationInputError, match="holds no images"):
        score_pad_folder(tmp_path, pipeline.detector, model)
    (tmp_path / "live" / "a.jpg").write_bytes((pad_folder / "live" / "live_00.jpg").read_bytes())
    with pytest.raises(CalibrationInputError, match="no attack/ folder"):
        score_pad_folder(tmp_path, pipeline.detector, model)
    # Attacks that cannot be scored: a blank picture, a truncated JPEG, bytes of no image
    # type, a dangling link.
    attack = tmp_path / "attack"
    attack.mkdir()
    (attack / "blank.jpg").write_bytes(encode_jpeg(np.full((200, 200, 3), 128, np.uint8), 90))
    real = (pad_folder / "live" / "live_00.jpg").read_bytes()
    (attack / "truncated.jpg").write_bytes(real[:300])
    (attack / "garbage.jpg").write_bytes(b"not an image at all")
    (attack / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(CalibrationInputError, match="no attack image could be scored"):
        score_pad_folder(tmp_path, pipeline.detector, model)
    (attack / "print.jpg").write_bytes(
        (pad_folder / "attack" / "print" / "print_00.jpg").read_bytes()
    )
    partial = score_pad_folder(tmp_path, pipeline.detector, model)
    assert {(f.path, f.code) for f in partial.failures} == {
        ("attack/blank.jpg", "no_face"),
        ("attack/truncated.jpg", "corrupt_image"),
        ("attack/garbage.jpg", "unsupported_image_type"),
        ("attack/gone.jpg", "unreadable_file"),
    }
    with pytest.raises(CalibrationInputError, match="target BPCER"):
        score_pad_folder(tmp_path, pipeline.detector, model, target_bpcer=1.0)


def _first_two_of_each_class(pad_folder: Path, into: Path) -> int:
    """A smaller copy of the folder (two images per class and species): the command's
    output is what this test reads; the scoring itself is checked on the whole folder above,
    and each image costs the PAD network about two seconds of one core."""
    copied = 0
    for folder in sorted({f.parent for f in pad_folder.rglob("*.jpg")}):
        target = into / folder.relative_to(pad_folder)
        target.mkdir(parents=True)
        for image in sorted(folder.glob("*.jpg"))[:2]:
            shutil.copy(image, target / image.name)
            copied += 1
    return copied


def test_the_command_prints_the_rates_and_writes_json_and_a_det_plot(
    tmp_path: Path, pad_folder: Path, default_pack: ModelPack, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = tmp_path / "small"
    images = _first_two_of_each_class(pad_folder, small)
    pad_folder = small
    monkeypatch.setenv("WAJAH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WAJAH_MODEL_CACHE_DIR", str(default_pack.directory.parent))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["calibrate", "--pad", str(pad_folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "ISO/IEC 30107-3" in result.stdout
    assert "at the threshold 0.1826: APCER" in result.stdout
    assert "not validated on your population" in result.stdout
    written = json.loads((out / "pad_report.json").read_text())
    assert written["target_bpcer"] == 0.05 and len(written["samples"]) == images
    assert (out / "pad_det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    as_json = CliRunner().invoke(
        cli, ["calibrate", "--pad", str(pad_folder), "--json", "--target-bpcer", "0.2"]
    )
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    assert document["target_bpcer"] == 0.2
    assert document["for_target"]["threshold"] == threshold_for_bpcer(
        [s["score"] for s in document["samples"] if s["label"] == "live"], 0.2
    )

    missing = CliRunner().invoke(cli, ["calibrate", "--pad", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "is not a folder" in " ".join(missing.output.split())


def test_models_prepare_also_prepares_the_pad_model(
    tmp_path: Path, default_pack: ModelPack, monkeypatch: pytest.MonkeyPatch
) -> None:
    models_dir = default_pack.directory.parent
    monkeypatch.setenv("WAJAH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WAJAH_MODEL_CACHE_DIR", str(models_dir))
    result = CliRunner().invoke(cli, ["models", "prepare"])
    assert result.exit_code == 0, result.output
    assert f"fas-256s-v10.2 ready at {models_dir / 'fas-256s-v10.2'}" in result.stdout
    assert read_pad_model(models_dir).sha256 == PAD_SHA256
