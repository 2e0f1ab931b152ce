"""Bona fide captures and SIMULATED presentation attacks made offline from the real faces in
the insightface wheel (for `wajah calibrate --pad` and the liveness tests).

Bona fide ("live"): each face of t1.jpg with a margin, enlarged as a phone selfie, sometimes
brighter or re-encoded; Tom Hanks enlarged. Attacks are simulations of what a camera sees
when the same photo is presented to it — not real attacks, and no evidence of how the model
does on real ones:

* ``print`` — the face printed: colours reduced to a few levels per channel, an ordered
  (halftone-like) dither, paper-white tint and a slight blur, shown on a sheet with a white
  border over a background;
* ``screen`` — the face replayed on a phone: a moiré pattern (an interference of the
  display's pixel grid with the camera's), cool tint, a glare gradient and a black bezel;
* ``photo`` — the whole uncropped group photo held up, small, inside the camera's frame.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from models.detector import FaceDetector
from models.imaging import decode_image, encode_jpeg
from tests.document_renders import face_crops

Image = NDArray[np.uint8]

_BAYER = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]], np.float32) / 16.0


def _enlarge(crop: Image, width: int) -> Image:
    scale = width / crop.shape[1]
    return cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)


def _background(height: int, width: int, seed: int) -> Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 140, size=3).astype(np.float32)
    ramp = np.linspace(0.8, 1.2, width, dtype=np.float32)[None, :, None]
    return np.clip(np.ones((height, width, 3), np.float32) * base * ramp, 0, 255).astype(np.uint8)


def print_attack(face: Image, levels: int = 6, seed: int = 0) -> Image:
    """The face as a printed sheet held to the camera (see the module docstring)."""
    big = _enlarge(face, 320).astype(np.float32)
    h, w = big.shape[:2]
    threshold = np.tile(_BAYER, (h // 4 + 1, w // 4 + 1))[:h, :w, None]
    step = 255.0 / (levels - 1)
    dithered = np.floor(big / step + threshold) * step
    paper = dithered * 0.85 + np.array([225, 235, 240], np.float32) * 0.15
    sheet = cv2.GaussianBlur(np.clip(paper, 0, 255).astype(np.uint8), (3, 3), 0.8)
    sheet = cv2.copyMakeBorder(sheet, 24, 24, 24, 24, cv2.BORDER_CONSTANT, value=(235, 240, 242))
    scene = _background(sheet.shape[0] + 120, sheet.shape[1] + 120, seed)
    scene[60 : 60 + sheet.shape[0], 60 : 60 + sheet.shape[1]] = sheet
    return scene


def screen_attack(face: Image, seed: int = 0) -> Image:
    """The face replayed on a phone screen held to the camera (see the module docstring)."""
    big = _enlarge(face, 320).astype(np.float32)
    h, w = big.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    moire = 1.0 + 0.12 * np.sin(2 * np.pi * (xx * 0.31 + yy * 0.07)) * np.sin(
        2 * np.pi * (yy * 0.29 - xx * 0.05)
    )
    tinted = big * moire[:, :, None] * np.array([1.08, 1.0, 0.9], np.float32)  # BGR: cooler
    glare = 90.0 * np.exp(
        -(((xx - 0.75 * w) / (0.3 * w)) ** 2 + ((yy - 0.2 * h) / (0.25 * h)) ** 2)
    )
    screen = np.clip(tinted + glare[:, :, None], 0, 255).astype(np.uint8)
    phone = cv2.copyMakeBorder(screen, 30, 50, 14, 14, cv2.BORDER_CONSTANT, value=(12, 12, 12))
    scene = _background(phone.shape[0] + 100, phone.shape[1] + 100, seed + 1)
    scene[50 : 50 + phone.shape[0], 50 : 50 + phone.shape[1]] = phone
    return scene


def photo_attack(photo: Image, width: int = 900, seed: int = 0) -> Image:
    """The whole photo, uncropped, held up inside a larger camera frame."""
    held = cv2.copyMakeBorder(
        _enlarge(photo, width), 16, 16, 16, 16, cv2.BORDER_CONSTANT, value=(240, 240, 240)
    )
    scene = _background(held.shape[0] + 160, held.shape[1] + 160, seed + 2)
    scene[80 : 80 + held.shape[0], 80 : 80 + held.shape[1]] = held
    return scene


def live_captures(detector: FaceDetector, group_photo: Path, single_face: Path) -> list[Image]:
    """Bona fide captures: each face of t1.jpg as a selfie, one of them brighter and one
    re-encoded at JPEG q60, and Tom Hanks enlarged."""
    faces = face_crops(detector, group_photo)
    captures = [_enlarge(face, 480) for face in faces]
    captures.append(cv2.convertScaleAbs(captures[0], alpha=1.1, beta=15))
    captures.append(decode_image(encode_jpeg(captures[2], quality=60)))
    captures.append(_enlarge(decode_image(single_face.read_bytes()), 336))
    return captures


def attack_captures(
    detector: FaceDetector, group_photo: Path, single_face: Path
) -> dict[str, list[Image]]:
    """Simulated attacks by PAI species: a print and a screen replay of each face, and the
    group photo held up whole."""
    faces = face_crops(detector, group_photo)
    faces.append(decode_image(single_face.read_bytes()))
    return {
        "print": [print_attack(face, seed=n) for n, face in enumerate(faces)],
        "screen": [screen_attack(face, seed=n) for n, face in enumerate(faces)],
        "photo": [photo_attack(decode_image(group_photo.read_bytes()))],
    }


def write_folder(
    root: Path, detector: FaceDetector, group_photo: Path, single_face: Path
) -> tuple[int, int]:
    """A calibration folder: ``root/live/*.jpg`` and ``root/attack/<species>/*.jpg``; the
    counts of bona fide and attack images."""
    live = root / "live"
    live.mkdir(parents=True, exist_ok=True)
    lives = live_captures(detector, group_photo, single_face)
    for n, image in enumerate(lives):
        (live / f"live_{n:02d}.jpg").write_bytes(encode_jpeg(image, 92))
    attacks = 0
    for species, images in attack_captures(detector, group_photo, single_face).items():
        folder = root / "attack" / species
        folder.mkdir(parents=True, exist_ok=True)
        for n, image in enumerate(images):
            (folder / f"{species}_{n:02d}.jpg").write_bytes(encode_jpeg(image, 92))
        attacks += len(images)
    return len(lives), attacks
