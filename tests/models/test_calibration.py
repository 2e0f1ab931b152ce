"""Accuracy calibration: the score maths on constructed scores, pairs files, and a smoke test.

The end-to-end tests below are a **smoke test, not a calibration**. They build a folder of
augmented captures of the six people in insightface's t1.jpg (one group photo, re-encoded,
rescaled and brightened), so every genuine pair is two copies of one photograph and there are
90 impostor comparisons. That proves the plumbing (embedding, failure counting, pair
forming, report, DET plot) and says nothing about the pack's accuracy: the figures need
thousands of people captured the way customers capture, and a target FMR is only supported
by at least 3 / FMR impostor comparisons (30,000 for 1e-4; 3 million for 1e-6, which all pairs
of about 2,500 images of different people give).

How a deployer calibrates on their own data: put consented, labelled captures of their own
population in the LFW layout, one folder per person (``faces/<person>/<image>.jpg``, at least
two images for most people), then run::

    wajah calibrate faces/ --target-fmr 1e-4 --out calibration/

or, from Python, ``calibrate(FacePipeline.load(pack), Path("faces"))`` and read
``report.to_dict()`` (or `app.calibration_report`'s `format_report` and `write_det_plot`,
tested in ``tests/app/test_calibration_report.py``). A pairs file (LFW ``pairs.txt``
or ``path_a,path_b,same`` CSV) passed with ``--pairs`` limits the comparisons to the listed
pairs. Images the quality gate refuses are listed by error code; a threshold from a row
flagged "too few" is an extrapolation, not a measurement.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.calibration import (
    CalibrationInputError,
    CalibrationReport,
    OperatingPoint,
    PairSpec,
    ScoreSet,
    ThresholdRates,
    allowed_false_matches,
    calibrate,
    equal_error_rate,
    parse_pairs,
    required_comparisons,
    rule_of_three,
    threshold_for_fmr,
)
from models.imaging import decode_image, encode_jpeg
from models.pipeline import FacePipeline
from models.quality import QualityPolicy


def above(value: float) -> float:
    """The first float above `value`: where a "smallest threshold" lands."""
    return float(np.nextafter(value, np.inf))


# --- score maths on constructed scores ------------------------------------------------------


@pytest.fixture(scope="module")
def grid_scores() -> ScoreSet:
    """10,000 impostor scores 0.0000…0.9999 and 50 genuine scores 0.9950…0.9999, shuffled.

    The shuffle is seeded and must not matter; every expected value below is counted by hand
    from the grid.
    """
    rng = np.random.default_rng(20240611)
    impostor = rng.permutation(np.arange(10_000)) / 10_000
    genuine = rng.permutation(np.arange(9_950, 10_000)) / 10_000
    return ScoreSet.of(genuine, impostor)


@pytest.mark.parametrize(
    ("target", "allowed", "cut", "false_non_matches"),
    [
        # k = target × 10,000 impostors may match; the threshold sits just above the
        # (k+1)-th highest impostor score; genuine scores at or below it are missed.
        (1e-2, 100, 0.9899, 0),
        (5e-3, 50, 0.9949, 0),
        (2e-3, 20, 0.9979, 30),  # genuine 0.9950…0.9979
        (1e-3, 10, 0.9989, 40),  # genuine 0.9950…0.9989
        (1e-4, 1, 0.9998, 49),  # genuine 0.9950…0.9998
    ],
)
def test_fnmr_at_target_fmr_on_the_grid(
    grid_scores: ScoreSet, target: float, allowed: int, cut: float, false_non_matches: int
) -> None:
    point = OperatingPoint.for_target(grid_scores, target)
    assert point.threshold == above(cut)
    assert point.false_matches == allowed
    assert point.fmr == allowed / 10_000
    assert point.false_non_matches == false_non_matches
    assert point.fnmr == false_non_matches / 50
    assert point.impostor_comparisons == 10_000
    assert point.genuine_comparisons == 50


def test_threshold_is_the_smallest_whose_fmr_meets_the_target(grid_scores: ScoreSet) -> None:
    threshold = threshold_for_fmr(grid_scores.impostor, 1e-3)
    assert threshold == above(0.9989)
    # At the (k+1)-th highest impostor score itself, k+1 = 11 impostors would match.
    assert ThresholdRates.at(grid_scores, 0.9989).false_matches == 11
    assert ThresholdRates.at(grid_scores, threshold).false_matches == 10


def test_threshold_for_fmr_agrees_with_brute_force() -> None:
    rng = np.random.default_rng(7)
    impostor = np.sort(rng.normal(0.1, 0.1, 2_000))
    # Every threshold worth trying is an observed score or the first float above one.
    candidates = np.unique(np.concatenate([impostor, np.nextafter(impostor, np.inf)]))
    fmr = (impostor[None, :] >= candidates[:, None]).mean(axis=1)
    for target in (0.3, 0.05, 1e-2, 2.5e-3, 1e-3, 1e-4):
        expected = candidates[np.flatnonzero(fmr <= target)[0]]
        assert threshold_for_fmr(impostor, target) == expected


def test_allowed_false_matches_is_exact_in_decimal() -> None:
    assert 0.29 * 100 < 29  # what a float floor would get wrong
    assert allowed_false_matches(0.29, 100) == 29
    assert allowed_false_matches(1e-5, 300_000) == 3
    assert allowed_false_matches(1e-3, 999) == 0
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        allowed_false_matches(1.0, 10)


def test_rule_of_three() -> None:
    assert rule_of_three(1_000) == 0.003
    assert rule_of_three(90) == 3 / 90
    # It is a 95% bound: an FMR of 3/N would show 0 false matches in N trials < 5% of the time.
    for n in (10, 100, 10_000, 3_000_000):
        assert (1 - rule_of_three(n)) ** n < 0.05
    with pytest.raises(ValueError, match="at least one comparison"):
        rule_of_three(0)


def test_required_comparisons_per_target() -> None:
    assert [required_comparisons(t) for t in (1e-3, 1e-4, 1e-5, 1e-6)] == [
        3_000,
        30_000,
        300_000,
        3_000_000,
    ]


def test_too_few_impostors_are_flagged_with_the_rule_of_three_bound() -> None:
    genuine = np.arange(60, 90) / 100
    enough = OperatingPoint.for_target(ScoreSet.of(genuine, np.arange(3_000) / 10_000), 1e-3)
    assert (enough.supported, enough.rule_of_three_fmr) == (True, None)
    assert (enough.false_matches, enough.threshold) == (3, above(0.2996))
    # floor(1e-3 × 2,999) = 2 false matches allowed: an FMR ≤ 1e-3 is observed, but 2,999
    # comparisons cannot show an FMR below 3/2,999.
    short = OperatingPoint.for_target(ScoreSet.of(genuine, np.arange(2_999) / 10_000), 1e-3)
    assert (short.supported, short.required_impostor_comparisons) == (False, 3_000)
    assert short.rule_of_three_fmr == 3 / 2_999
    assert (short.false_matches, short.threshold) == (2, above(0.2996))
    # floor(1e-3 × 999) = 0: the threshold clears every impostor.
    tiny = OperatingPoint.for_target(ScoreSet.of(genuine, np.arange(999) / 10_000), 1e-3)
    assert (tiny.supported, tiny.rule_of_three_fmr) == (False, 3 / 999)
    assert (tiny.false_matches, tiny.threshold) == (0, above(0.0998))
    assert tiny.false_non_matches == 0


def test_the_match_rule_is_score_at_least_threshold() -> None:
    scores = ScoreSet.of([0.363, 0.5], [0.2, 0.363])
    rates = ThresholdRates.at(scores, 0.363)
    assert (rates.false_matches, rates.false_non_matches) == (1, 0)
    assert (rates.fmr, rates.fnmr) == (0.5, 0.0)
    assert rates.rule_of_three_fmr is None
    clear = ThresholdRates.at(scores, 0.4)
    assert (clear.false_matches, clear.false_non_matches, clear.rule_of_three_fmr) == (0, 1, 1.5)


def test_equal_error_rate_on_a_constructed_case() -> None:
    # At 0.65: one impostor of four matches (0.65) and one genuine of four is missed (0.6).
    crossing = ScoreSet.of([0.6, 0.7, 0.8, 0.9], [0.1, 0.2, 0.3, 0.65])
    assert equal_error_rate(crossing) == (0.25, 0.65)
    # Separated: 0 errors from just above the highest impostor up to the lowest genuine.
    separated = ScoreSet.of([0.6, 0.7], [0.1, 0.2])
    assert equal_error_rate(separated) == (0.0, 0.6)
    assert equal_error_rate(ScoreSet.of([], [0.1])) is None


def test_report_from_scores_is_json_able(grid_scores: ScoreSet) -> None:
    report = CalibrationReport.from_scores(grid_scores, model_id="grid", pack_threshold=0.99)
    data = json.loads(json.dumps(report.to_dict()))
    assert [p["target_fmr"] for p in data["operating_points"]] == [1e-3, 1e-4, 1e-5, 1e-6]
    assert [p["supported"] for p in data["operating_points"]] == [True, False, False, False]
    assert data["at_pack_threshold"]["false_matches"] == 100
    assert data["genuine"]["count"] == 50
    assert data["impostor"]["min"] == 0.0
    assert data["impostor"]["max"] == 0.9999
    assert sum(data["histogram"]["impostor"]) == 10_000
    assert data["histogram"]["genuine"][-1] == 50
    assert report.operating_point(2e-3).false_non_matches == 30


# --- pairs files ----------------------------------------------------------------------------


def test_lfw_pairs_file() -> None:
    text = "10\t300\nAbel_Pacheco\t1\t4\n\n# a comment\nAbdel_Madi_Shabneh\t1\tDean_Barker\t12\n"
    assert parse_pairs(text) == [
        PairSpec(
            "Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg", True, 2
        ),
        PairSpec(
            "Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001.jpg",
            "Dean_Barker/Dean_Barker_0012.jpg",
            False,
            5,
        ),
    ]


def test_csv_pairs_file_with_header() -> None:
    text = 'path_a,path_b,same\na/1.jpg,a/2.jpg,1\n# skip\n"b, jr/1.jpg",a/1.jpg,0\n'
    assert parse_pairs(text) == [
        PairSpec("a/1.jpg", "a/2.jpg", True, 2),
        PairSpec("b, jr/1.jpg", "a/1.jpg", False, 4),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\t1\t2\t3\t4\n", r"pairs.txt:1: expected 'name n1 n2'"),
        ("a\t0\t2\n", r"pairs.txt:1: image number '0' is not positive"),
        ("a/1.jpg,a/2.jpg,1\na/1.jpg,b/1.jpg,yes\n", r"pairs.txt:2: 'same' must be 0 or 1"),
        ("a/1.jpg,a/2.jpg\n", r"pairs.txt:1: expected path_a,path_b,same"),
        ("# nothing\n\n", r"pairs.txt: no pairs"),
    ],
)
def test_malformed_pairs_files_name_the_line(text: str, message: str) -> None:
    with pytest.raises(CalibrationInputError, match=message):
        parse_pairs(text, source="pairs.txt")


# --- smoke test on augmented captures of t1.jpg ---------------------------------------------


def _augmented_captures(face: np.ndarray) -> list[bytes]:
    """Three deterministic second captures of one face: JPEG q60, 0.8× rescale, brighter."""
    smaller = cv2.resize(face, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA)
    brighter = cv2.convertScaleAbs(face, alpha=1.0, beta=30)
    return [encode_jpeg(face, quality=60), encode_jpeg(smaller), encode_jpeg(brighter)]


def spelled_out_gate(pipeline: FacePipeline) -> FacePipeline:
    """The pipeline with its quality gate spelled out, so retuning defaults cannot move counts."""
    policy = QualityPolicy(
        min_interocular_px=24.0,
        min_detector_score=0.75,
        min_blur_variance=40.0,
        max_yaw_degrees=45.0,
        max_pitch_degrees=40.0,
        multiple_faces="reject",
    )
    return FacePipeline(pipeline.pack, pipeline.detector, pipeline.embedder, policy)


def write_faces_folder(gate: FacePipeline, group_photo_path: Path, root: Path) -> Path:
    """``root/person_<i>/<k>.jpg``: the six faces of t1.jpg (left to right), two bad files.

    Each face is cropped with a 40% margin and scaled to 320 px high, so the smallest face
    still clears the size gate at 0.8×. person_4 turns her head far to the side: the gate
    refuses all three of her captures as ``extreme_pose`` (estimated yaw beyond 45°).
    """
    image = decode_image(group_photo_path.read_bytes())
    detections = sorted(gate.detector.detect(image), key=lambda d: float(d.box[0]))
    assert len(detections) == 6
    height, width = image.shape[:2]
    for person, detection in enumerate(detections):
        x1, y1, x2, y2 = detection.box
        mx, my = 0.4 * (x2 - x1), 0.4 * (y2 - y1)
        face = image[
            int(max(0, y1 - my)) : int(min(height, y2 + my)),
            int(max(0, x1 - mx)) : int(min(width, x2 + mx)),
        ]
        face = cv2.resize(
            face, (round(face.shape[1] * 320 / face.shape[0]), 320), interpolation=cv2.INTER_CUBIC
        )
        folder = root / f"person_{person}"
        folder.mkdir()
        for k, data in enumerate(_augmented_captures(face)):
            (folder / f"{k}.jpg").write_bytes(data)
    (root / "person_0" / "garbage.jpg").write_bytes(b"this is not an image\n" * 8)
    (root / "person_1" / "no_face.jpg").write_bytes(
        encode_jpeg(np.full((240, 240, 3), 128, np.uint8))
    )
    (root / "README.txt").write_text("not in a person folder\n")
    return root


@pytest.fixture(scope="module")
def gate(pipeline: FacePipeline) -> FacePipeline:
    return spelled_out_gate(pipeline)


@pytest.fixture(scope="module")
def faces_folder(
    gate: FacePipeline, group_photo_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return write_faces_folder(gate, group_photo_path, tmp_path_factory.mktemp("faces"))


def test_smoke_calibration_on_a_folder(gate: FacePipeline, faces_folder: Path) -> None:
    calls: list[tuple[int, int]] = []
    report = calibrate(gate, faces_folder, progress=lambda done, total: calls.append((done, total)))

    assert calls == [(0, 20), (16, 20), (20, 20)]
    data = report.dataset
    assert data is not None
    assert (data.layout, data.images, data.embedded) == ("folder", 20, 15)
    assert data.failures == {"extreme_pose": 3, "no_face": 1, "unsupported_image_type": 1}
    assert [(f.path, f.code) for f in data.failed_images] == [
        ("person_0/garbage.jpg", "unsupported_image_type"),
        ("person_1/no_face.jpg", "no_face"),
        ("person_4/0.jpg", "extreme_pose"),
        ("person_4/1.jpg", "extreme_pose"),
        ("person_4/2.jpg", "extreme_pose"),
    ]
    assert (data.identities, data.identities_embedded) == (6, 5)
    assert data.ignored_files == ["README.txt"]
    # Five people with three accepted captures each: 5 × C(3,2) genuine pairs and
    # C(15,2) − 15 impostor pairs.
    assert report.scores.genuine.size == 15
    assert report.scores.impostor.size == 90
    assert (data.impostor_pairs_total, data.impostor_pairs_sampled) == (90, False)

    assert report.model_id == "yunet-sface-2021dec"
    assert report.pack_threshold == 0.363
    at = report.at_pack_threshold
    assert (at.false_matches, at.false_non_matches) == (0, 0)
    assert at.rule_of_three_fmr == 3 / 90
    assert report.eer == 0.0
    assert [p.required_impostor_comparisons for p in report.operating_points] == [
        3_000,
        30_000,
        300_000,
        3_000_000,
    ]
    for point in report.operating_points:
        assert point.supported is False
        assert point.rule_of_three_fmr == 3 / 90
        assert point.threshold == above(report.scores.impostor[-1])
        assert point.false_non_matches == 0

    assert json.loads(json.dumps(report.to_dict()))["dataset"]["failures"] == data.failures


def test_impostor_pairs_beyond_the_cap_are_sampled(gate: FacePipeline, faces_folder: Path) -> None:
    report = calibrate(gate, faces_folder, max_impostor_pairs=45)
    assert report.dataset is not None
    assert (report.dataset.impostor_pairs_total, report.dataset.impostor_pairs_sampled) == (
        90,
        True,
    )
    assert report.scores.genuine.size == 15
    full = calibrate(gate, faces_folder).scores.impostor
    sample = report.scores.impostor
    # Each impostor pair is kept with probability 45/90 by a generator seeded with 0.
    assert sample.size == 42
    assert np.isin(sample, full).all()
    again = calibrate(gate, faces_folder, max_impostor_pairs=45).scores.impostor
    np.testing.assert_array_equal(again, sample)  # seeded


def test_smoke_calibration_on_a_pairs_file(
    gate: FacePipeline, faces_folder: Path, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "path_a,path_b,same\n"
        "person_0/0.jpg,person_0/1.jpg,1\n"
        "person_2/1.jpg,person_2/2.jpg,1\n"
        "person_0/0.jpg,person_1/0.jpg,0\n"
        "person_0/0.jpg,person_4/0.jpg,0\n"  # person_4 is refused: skipped
        "person_3/0.jpg,person_3/9.jpg,1\n"  # no such file: skipped
    )
    report = calibrate(gate, faces_folder, pairs=pairs)
    data = report.dataset
    assert data is not None
    assert (data.layout, data.pairs_file, data.images, data.embedded) == ("pairs", str(pairs), 8, 6)
    assert data.failures == {"extreme_pose": 1, "file_not_found": 1}
    assert (data.genuine_pairs_skipped, data.impostor_pairs_skipped) == (1, 1)
    assert (report.scores.genuine.size, report.scores.impostor.size) == (2, 1)
    assert (report.at_pack_threshold.false_matches, report.at_pack_threshold.false_non_matches) == (
        0,
        0,
    )


def test_a_pairs_file_alone_resolves_paths_beside_it(
    gate: FacePipeline, faces_folder: Path, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.csv"
    a, b = faces_folder / "person_5" / "0.jpg", faces_folder / "person_5" / "2.jpg"
    pairs.write_text(f"{a},{b},1\n{a},missing.jpg,0\n")
    report = calibrate(gate, pairs)
    assert report.dataset is not None
    assert report.dataset.source == str(tmp_path)
    assert [(f.path, f.code) for f in report.dataset.failed_images] == [
        ("missing.jpg", "file_not_found")
    ]
    assert report.scores.genuine.size == 1


def test_a_folder_without_person_folders_is_refused(gate: FacePipeline, tmp_path: Path) -> None:
    (tmp_path / "loose.jpg").write_bytes(b"x")
    with pytest.raises(CalibrationInputError, match="LFW folder layout"):
        calibrate(gate, tmp_path)
