"""ArcFace packs through insightface's model_zoo.

The real weights (buffalo_l, antelopev2) are not on any package registry, so the loader is
exercised with a generated graph that honours ArcFace's contract: 1×3×112×112 RGB input in
``(x - 127.5) / 127.5``, 512 outputs. The golden test runs only where ``WAJAH_ARCFACE_DIR``
points at a real buffalo_l directory.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.alignment import align_face
from models.errors import ModelIntegrityError
from models.imaging import decode_image, encode_jpeg
from models.packs import ModelPack, RecognizerSpec, load_pack, sha256_file, write_manifest
from models.pipeline import FacePipeline
from models.prepare import prepare_arcface_pack

POOL = 16  # 112 / 16 = 7: the graph sees a 3×7×7 thumbnail


def arcface_contract_graph(seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """AveragePool → Flatten → Gemm(147→512): tiny, deterministic, ArcFace-shaped."""
    weight = np.random.default_rng(seed).standard_normal((3 * 7 * 7, 512)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node(
                "AveragePool",
                ["input.1"],
                ["pooled"],
                kernel_shape=[POOL, POOL],
                strides=[POOL, POOL],
                name="pool",
            ),
            helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
            helper.make_node("Gemm", ["flat", "fc_weight"], ["embedding"], name="fc"),
        ],
        "arcface_contract",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["None", 512])],
        [numpy_helper.from_array(weight, "fc_weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, weight


def reference_embedding(crop_bgr: np.ndarray, weight: np.ndarray) -> np.ndarray:
    rgb = crop_bgr[:, :, ::-1].astype(np.float32)
    normalised = (rgb - 127.5) / 127.5
    pooled = normalised.reshape(7, POOL, 7, POOL, 3).mean(axis=(1, 3))  # 7×7×3
    vector = pooled.transpose(2, 0, 1).reshape(-1) @ weight
    return vector / np.linalg.norm(vector)


@pytest.fixture()
def contract_pack(default_pack: ModelPack, tmp_path: Path) -> tuple[ModelPack, np.ndarray]:
    """YuNet from the default pack + the generated ArcFace-contract recognizer."""
    directory = tmp_path / "arcface-contract"
    directory.mkdir()
    shutil.copy(default_pack.directory / default_pack.detector.file, directory / "detector.onnx")
    model, weight = arcface_contract_graph()
    onnx.save(model, str(directory / "w600k_contract.onnx"))
    pack = replace(
        default_pack,
        directory=directory,
        model_id="arcface-contract-test",
        recognizer=RecognizerSpec(
            file="w600k_contract.onnx",
            sha256=sha256_file(directory / "w600k_contract.onnx"),
            kind="arcface",
            embedding_dim=512,
            mean=127.5,
            std=127.5,
        ),
    )
    write_manifest(pack)
    return load_pack(directory), weight


def test_loader_honours_the_arcface_contract(
    contract_pack: tuple[ModelPack, np.ndarray], group_photo_path: Path
) -> None:
    pack, weight = contract_pack
    pipeline = FacePipeline.load(pack)
    assert type(pipeline.embedder).__name__ == "ArcFaceEmbedder"
    assert pipeline.dimension == 512
    image = decode_image(group_photo_path.read_bytes())
    faces = pipeline.embed_all_faces(image)
    assert len(faces) == 6
    for detection, vector in faces:
        assert vector.shape == (512,)
        expected = reference_embedding(align_face(image, detection.landmarks), weight)
        np.testing.assert_allclose(vector, expected, atol=1e-4)


def test_contract_pack_is_integrity_checked(
    contract_pack: tuple[ModelPack, np.ndarray],
) -> None:
    pack, _ = contract_pack
    onnx.save(arcface_contract_graph(seed=1)[0], str(pack.directory / pack.recognizer.file))
    with pytest.raises(ModelIntegrityError, match="w600k_contract.onnx"):
        FacePipeline.load(pack)


@pytest.mark.skipif(
    not os.environ.get("WAJAH_ARCFACE_DIR"), reason="WAJAH_ARCFACE_DIR (real buffalo_l) not set"
)
def test_real_buffalo_l_golden(group_photo_path: Path) -> None:
    pack = prepare_arcface_pack("buffalo_l", Path(os.environ["WAJAH_ARCFACE_DIR"]))
    pipeline = FacePipeline.load(pack)
    image = decode_image(group_photo_path.read_bytes())
    faces = sorted(pipeline.embed_all_faces(image), key=lambda f: float(f[0].box[0]))
    assert len(faces) == 6
    again = sorted(
        pipeline.embed_all_faces(decode_image(encode_jpeg(image, 60))),
        key=lambda f: float(f[0].box[0]),
    )
    vectors = np.stack([v for _, v in faces])
    genuine = np.einsum("ij,ij->i", vectors, np.stack([v for _, v in again]))
    assert (genuine > pack.thresholds.cosine).all()
    impostor = (vectors @ vectors.T)[~np.eye(6, dtype=bool)]
    assert impostor.max() < pack.thresholds.cosine
