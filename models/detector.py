"""Face detectors: boxes, scores and five landmarks in the input image's coordinates.

Landmark order everywhere: right eye, left eye, nose tip, right mouth corner, left mouth corner
(as seen in the image: the first point is the subject's right eye, on the image's left).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import onnx
from numpy.typing import NDArray

from models.packs import DetectorSpec
from models.session import ModelSession, create_session, session_options

FloatArray = NDArray[np.float32]


@dataclass(frozen=True)
class Detection:
    box: FloatArray  # x1, y1, x2, y2
    score: float
    landmarks: FloatArray  # 5×2

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


class FaceDetector(Protocol):
    def detect(self, image_bgr: NDArray[np.uint8]) -> list[Detection]: ...


@dataclass(frozen=True)
class Letterbox:
    """How an image was scaled into the detector's fixed input (top-left anchored)."""

    scale: float

    @classmethod
    def fit(cls, width: int, height: int, target_w: int, target_h: int) -> Letterbox:
        return cls(scale=min(target_w / width, target_h / height))

    def blob(
        self,
        image: NDArray[np.uint8],
        target_w: int,
        target_h: int,
        channels: tuple[int, int, int],
        mean: float,
        std: float,
    ) -> FloatArray:
        """The 1×3×H×W float32 graph input: `image` scaled, top-left on a black canvas, its
        `channels` (indices into the image's BGR) as the three planes, then normalised.

        Each plane is written straight from the image: drawing an HWC canvas first, then
        converting, normalising and transposing it made four more passes over a 640×480
        frame's 3.7 MB (1.5-2 ms of its detection).
        """
        height, width = image.shape[:2]
        new_w = max(1, min(target_w, round(width * self.scale)))
        new_h = max(1, min(target_h, round(height * self.scale)))
        source: NDArray[Any] = image
        if (new_w, new_h) != (width, height):
            interpolation = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
            source = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        blob = np.empty((1, 3, target_h, target_w), np.float32)
        blob[0, :, new_h:, :] = 0
        blob[0, :, :new_h, new_w:] = 0
        for plane, channel in zip(blob[0], channels, strict=True):
            plane[:new_h, :new_w] = source[:, :, channel]
        if mean != 0 or std != 1:
            blob -= mean
            blob /= std
        return blob


def nms(boxes: FloatArray, scores: FloatArray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression by IoU; returns kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        x1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = (x2 - x1).clip(0) * (y2 - y1).clip(0)
        iou = inter / (areas[best] + areas[rest] - inter + 1e-9)
        order = rest[iou <= threshold]
    return keep


def any_input_size(model: bytes) -> bytes:
    """The graph with its input's height and width (and so its outputs' anchor counts) left
    free. YuNet is fully convolutional: its reshapes use -1 and its upsampling a scale of 2,
    so any size that is a multiple of 32 runs; only the declared shapes pin it to 640×640."""
    graph = onnx.load_model_from_string(model)
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in graph.graph.output:
        anchors = output.type.tensor_type.shape.dim[1]
        anchors.dim_param = f"anchors_{output.name}"
    return bytes(graph.SerializeToString())


class YuNetDetector:
    """OpenCV Zoo's YuNet (2023mar) run through onnxruntime.

    The graph takes a BGR float input (no normalisation) and returns, per stride 8/16/32,
    sigmoid class and objectness scores, box offsets and landmark offsets on an anchor grid;
    decoding follows OpenCV's `FaceDetectorYN`. The image is scaled so that it fits the pack's
    input size (640×640) and padded only up to the next multiple of 32, as `FaceDetectorYN`
    runs at the size it is given: a 640×480 frame costs three quarters of a 640×640 one.
    """

    STRIDES = (8, 16, 32)

    def __init__(self, session: ModelSession, spec: DetectorSpec) -> None:
        self._session = session
        self._spec = spec
        self._input_name = session.get_inputs()[0].name
        self._output_names = [o.name for o in session.get_outputs()]
        # A graph whose input size is fixed (declared as numbers) gets exactly that size.
        shape = session.get_inputs()[0].shape
        self._fixed_size = all(isinstance(d, int) for d in shape[2:])

    @classmethod
    def from_file(cls, path: Path, spec: DetectorSpec, threads: int = 1) -> YuNetDetector:
        return cls(create_session(any_input_size(path.read_bytes()), threads), spec)

    def with_score_threshold(self, threshold: float) -> YuNetDetector:
        """The same session, keeping candidates down to ``threshold`` (an ID document's
        small printed face scores lower than a selfie: `models.documents`)."""
        return YuNetDetector(self._session, replace(self._spec, score_threshold=threshold))

    @staticmethod
    @lru_cache(maxsize=32)
    def _grid(cols: int, rows: int) -> FloatArray:
        ys, xs = np.mgrid[0:rows, 0:cols]
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
        grid.setflags(write=False)  # shared between calls
        return grid

    def input_size(self, width: int, height: int) -> tuple[Letterbox, int, int]:
        """How an image of this size is scaled, and the graph input it is padded to."""
        limit_w, limit_h = self._spec.input_size
        box = Letterbox.fit(width, height, limit_w, limit_h)
        if self._fixed_size:
            return box, limit_w, limit_h
        stride = self.STRIDES[-1]
        target_w = min(limit_w, -(-max(1, round(width * box.scale)) // stride) * stride)
        target_h = min(limit_h, -(-max(1, round(height * box.scale)) // stride) * stride)
        return box, target_w, target_h

    def detect(self, image_bgr: NDArray[np.uint8]) -> list[Detection]:
        height, width = image_bgr.shape[:2]
        box, target_w, target_h = self.input_size(width, height)
        channels = (2, 1, 0) if self._spec.color_order == "RGB" else (0, 1, 2)
        blob = box.blob(image_bgr, target_w, target_h, channels, self._spec.mean, self._spec.std)
        outputs = dict(
            zip(
                self._output_names,
                self._session.run(self._output_names, {self._input_name: blob}),
                strict=True,
            )
        )
        boxes, scores, landmarks = [], [], []
        for stride in self.STRIDES:
            cls = outputs[f"cls_{stride}"][0, :, 0].clip(0, 1)
            obj = outputs[f"obj_{stride}"][0, :, 0].clip(0, 1)
            score = np.sqrt(cls * obj)
            hit = score >= self._spec.score_threshold
            if not hit.any():
                continue
            grid = self._grid(target_w // stride, target_h // stride)[hit]
            bbox = outputs[f"bbox_{stride}"][0][hit]
            kps = outputs[f"kps_{stride}"][0][hit].reshape(-1, 5, 2)
            centre = (grid + bbox[:, :2]) * stride
            size = np.exp(bbox[:, 2:4]) * stride
            boxes.append(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
            landmarks.append((kps + grid[:, None, :]) * stride)
            scores.append(score[hit])
        if not boxes:
            return []
        all_boxes = np.concatenate(boxes).astype(np.float32) / box.scale
        all_scores = np.concatenate(scores).astype(np.float32)
        all_landmarks = np.concatenate(landmarks).astype(np.float32) / box.scale
        keep = nms(all_boxes, all_scores, self._spec.nms_threshold)
        return [
            Detection(box=all_boxes[i], score=float(all_scores[i]), landmarks=all_landmarks[i])
            for i in keep
        ]


class ScrfdDetector:
    """insightface's SCRFD (ArcFace packs), loaded through insightface's `model_zoo`."""

    def __init__(self, path: Path, spec: DetectorSpec, threads: int = 1) -> None:
        from insightface.model_zoo import model_zoo

        self._spec = spec
        self._model: Any = model_zoo.get_model(
            str(path), providers=["CPUExecutionProvider"], sess_options=session_options(threads)
        )
        self._model.prepare(-1, input_size=tuple(spec.input_size))

    def with_score_threshold(self, threshold: float) -> ScrfdDetector:
        """The same model, keeping detections down to ``threshold`` (see YuNet's)."""
        derived = copy.copy(self)
        derived._spec = replace(self._spec, score_threshold=threshold)
        return derived

    def detect(self, image_bgr: NDArray[np.uint8]) -> list[Detection]:
        dets, kpss = self._model.detect(
            image_bgr,
            input_size=tuple(self._spec.input_size),
            det_thresh=self._spec.score_threshold,
        )
        if kpss is None:
            return []
        return [
            Detection(
                box=np.asarray(d[:4], np.float32),
                score=float(d[4]),
                landmarks=np.asarray(k, np.float32),
            )
            for d, k in zip(dets, kpss, strict=True)
        ]
