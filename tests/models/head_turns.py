"""Synthetic head turns of real face photos, for the active liveness tests and benchmark.

`turn_head(image, landmarks, yaw=…, pitch=…)` treats the face as a relief: a half-ellipsoid
head (1.15 eye distances wide, 1.6 tall, 1.0 deep, centred between eyes and mouth) with a
Gaussian nose on it (0.30 deep, at the nose landmark), everything else flat. It rotates that
relief about the head's vertical (yaw) or horizontal (pitch) axis and projects it back
orthographically, row by row (or column by column): each pixel moves by `z · sin θ` and the
face's width by `cos θ`, so the nose tip slides further than the eyes and the mouth, the way
it does in a real turn. Where the relief folds over itself (the far cheek at large angles)
the nearer surface wins, which is occlusion only to first order.

How this differs from a real turn: the depth is a generic shape, not the person's; nothing
hidden is revealed (the far ear, the side of the nose), no lighting or shading changes, the
hair and background move with the head's flat surround, and the camera is orthographic.
The detector's landmarks on these renders move the way the estimator expects because the
relief has the estimator's generic proportions; a real head's nose depth varies between
people (about ±20 %), which shifts real angles by as much. Yaw > 0 turns the head to the
subject's left; pitch > 0 tilts it up (see `models.head_pose`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from numpy.typing import NDArray


def relief(shape: tuple[int, int], landmarks: NDArray[np.float32]) -> NDArray[np.float64]:
    """Depth (pixels, towards the camera) of the generic head at every pixel."""
    points = np.asarray(landmarks, np.float64).reshape(5, 2)
    eye_distance = float(np.linalg.norm(points[1] - points[0]))
    centre = (points[:2].mean(axis=0) + points[3:].mean(axis=0)) / 2
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    u = (xs - centre[0]) / (1.15 * eye_distance)
    v = (ys - centre[1]) / (1.6 * eye_distance)
    head = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, None)) * eye_distance
    nose = points[2]
    sigma = 0.22 * eye_distance
    bump = np.exp(-((xs - nose[0]) ** 2 + (ys - nose[1]) ** 2) / (2 * sigma * sigma))
    return head + 0.30 * eye_distance * bump


def _rotate_rows(
    image: NDArray[np.uint8], depth: NDArray[np.float64], centre: float, angle: float
) -> NDArray[np.uint8]:
    """Rotate about a vertical axis at x = `centre`: x' = c + (x - c)·cos θ + z·sin θ."""
    height, width = depth.shape
    xs = np.arange(width, dtype=np.float64)
    map_x = np.empty((height, width), np.float32)
    for row in range(height):
        moved = centre + (xs - centre) * math.cos(angle) + depth[row] * math.sin(angle)
        # Where the surface folds over, keep the nearer part: force the mapping monotonic.
        moved = (
            np.maximum.accumulate(moved) if angle >= 0 else np.minimum.accumulate(moved[::-1])[::-1]
        )
        map_x[row] = np.interp(xs, moved, xs)
    map_y = np.repeat(np.arange(height, dtype=np.float32)[:, None], width, axis=1)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def turn_head(
    image: NDArray[np.uint8], landmarks: NDArray[np.float32], yaw: float = 0.0, pitch: float = 0.0
) -> NDArray[np.uint8]:
    """`image` with its face (these five landmarks) turned by `yaw`, then tilted by `pitch`
    degrees. The subject's left is the image's right; a tilt up moves the nose up."""
    depth = relief(image.shape[:2], landmarks)
    points = np.asarray(landmarks, np.float64).reshape(5, 2)
    centre = (points[:2].mean(axis=0) + points[3:].mean(axis=0)) / 2
    out = image
    if yaw:
        out = _rotate_rows(out, depth, float(centre[0]), math.radians(yaw))
    if pitch:
        # A tilt up moves what stands out upwards: rotate the transposed image "leftwards".
        turned = _rotate_rows(
            np.ascontiguousarray(out.swapaxes(0, 1)),
            np.ascontiguousarray(depth.T),
            float(centre[1]),
            -math.radians(pitch),
        )
        out = np.ascontiguousarray(turned.swapaxes(0, 1))
    return out


YAW_OF_STEP = {"turn_left": 30.0, "turn_right": -30.0}


def face_crop(
    image: NDArray[np.uint8], box: NDArray[np.float32], margin: float = 0.8
) -> NDArray[np.uint8]:
    """One face of a group photo with `margin` of its box's size on every side."""
    x1, y1, x2, y2 = (float(v) for v in box)
    width, height = x2 - x1, y2 - y1
    left, top = int(max(0, x1 - margin * width)), int(max(0, y1 - margin * height))
    right = int(min(image.shape[1], x2 + margin * width))
    bottom = int(min(image.shape[0], y2 + margin * height))
    return np.ascontiguousarray(image[top:bottom, left:right])


def turned_frames(
    image: NDArray[np.uint8],
    landmarks: NDArray[np.float32],
    steps: list[str],
    start_yaw: float = 0.0,
) -> list[NDArray[np.uint8]]:
    """A capture bundle answering `steps` (yaw steps): the face as it is (or turned by
    `start_yaw` to face the camera), then turned for each step in turn."""
    start = image if not start_yaw else turn_head(image, landmarks, start_yaw)
    return [start, *(turn_head(image, landmarks, start_yaw + YAW_OF_STEP[s]) for s in steps)]
