"""Accuracy calibration: genuine and impostor score distributions, FNMR at fixed FMRs, DET.

`calibrate` embeds a deployer's labelled captures through the service's pipeline and returns a
`CalibrationReport`: how often the pack's recognizer confuses two people (FMR) and fails to
recognise the same person (FNMR), and which threshold to set for a target FMR.

- `models.calibration.rates`: the score maths (match rule, FMR/FNMR, thresholds for a target
  FMR, the rule-of-three support bound, EER, DET points), on scores alone.
- `models.calibration.datasets`: the inputs, a folder in the LFW layout or a pairs file.
- `models.calibration.run`: the run itself, from images to a report.

Text and plots of a report are the caller's (`app.calibration_report`): this package draws
nothing and does not import matplotlib.
"""

from models.calibration.datasets import (
    CalibrationInputError,
    LabelledFolder,
    PairSpec,
    list_folder,
    parse_pairs,
    read_pairs,
)
from models.calibration.rates import (
    DEFAULT_TARGET_FMRS,
    HISTOGRAM_BINS,
    RULE_OF_THREE,
    FloatArray,
    OperatingPoint,
    ScoreHistogram,
    ScoreSet,
    ScoreSummary,
    ThresholdRates,
    allowed_false_matches,
    det_curve,
    equal_error_rate,
    false_matches,
    false_non_matches,
    required_comparisons,
    rule_of_three,
    threshold_for_fmr,
)
from models.calibration.run import (
    DEFAULT_MAX_IMPOSTOR_PAIRS,
    FILE_NOT_FOUND,
    UNREADABLE_FILE,
    CalibrationReport,
    DatasetSummary,
    FailedImage,
    Progress,
    calibrate,
)

__all__ = [
    "DEFAULT_MAX_IMPOSTOR_PAIRS",
    "DEFAULT_TARGET_FMRS",
    "FILE_NOT_FOUND",
    "HISTOGRAM_BINS",
    "RULE_OF_THREE",
    "UNREADABLE_FILE",
    "CalibrationInputError",
    "CalibrationReport",
    "DatasetSummary",
    "FailedImage",
    "FloatArray",
    "LabelledFolder",
    "OperatingPoint",
    "PairSpec",
    "Progress",
    "ScoreHistogram",
    "ScoreSet",
    "ScoreSummary",
    "ThresholdRates",
    "allowed_false_matches",
    "calibrate",
    "det_curve",
    "equal_error_rate",
    "false_matches",
    "false_non_matches",
    "list_folder",
    "parse_pairs",
    "read_pairs",
    "required_comparisons",
    "rule_of_three",
    "threshold_for_fmr",
]
