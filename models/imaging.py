"""Decoding untrusted capture frames into BGR pixel arrays.

Order matters for safety: the byte limit and the magic-byte sniff run before any parser, and
the pixel limit is checked from the header before a single pixel is decompressed, so a
20000×20000 PNG "bomb" of a few hundred kilobytes costs microseconds and no memory.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFile, ImageOps

from models.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageDimensionsError,
    ImageTooLargeError,
    UnsupportedImageTypeError,
)

ImageType = Literal["jpeg", "png", "webp"]

# A truncated file must be an error, never a half-grey face.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 40_000_000


def sniff_image_type(data: bytes) -> ImageType:
    """Identify JPEG, PNG or WebP by magic bytes; anything else is unsupported."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"GIF8",):
        raise UnsupportedImageTypeError("GIF frames are not accepted; send JPEG, PNG or WebP")
    raise UnsupportedImageTypeError("not a JPEG, PNG or WebP image")


def decode_image(data: bytes, limits: ImageLimits | None = None) -> NDArray[np.uint8]:
    """Decode `data` into an H×W×3 uint8 BGR array with EXIF orientation applied.

    Raises a distinct `ImageError` subclass for empty, oversized, unsupported, too many
    pixels, or corrupt/truncated input.
    """
    return open_image(data, limits).decode()


class OpenedImage:
    """An image whose header has been read and passed the limits; no pixel decoded yet.

    `pixels` is what decoding will cost, so a caller can wait for room in a `PixelBudget`
    before calling `decode()`.
    """

    def __init__(self, data: bytes, kind: ImageType, image: Image.Image) -> None:
        self.data = data
        self.kind = kind
        self._image = image
        self.size: tuple[int, int] = image.size  # (width, height)
        self.pixels = image.size[0] * image.size[1]

    def decode(self) -> NDArray[np.uint8]:
        kind, image = self.kind, self._image
        try:
            if kind == "jpeg" and image.mode in ("RGB", "L"):
                return _decode_jpeg(self.data)
            image.load()
            # In place: otherwise an upright image (most are) comes back as a copy.
            ImageOps.exif_transpose(image, in_place=True)
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            # One pass from Pillow's buffer to BGR bytes: half the cost of an RGB array
            # followed by a channel-reversing copy. The array is read-only (it views the bytes).
            bgr = rgb.tobytes("raw", "BGR")
            height, width = rgb.height, rgb.width
        except CorruptImageError:
            raise
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptImageError(f"the {kind.upper()} data does not decode: {exc}") from exc
        finally:
            # Pillow's own buffer (4 bytes a pixel) must not outlive the decode: the caller
            # keeps this object while it detects, and a 40 MP frame's buffer is 160 MB.
            image.close()
        return np.frombuffer(bgr, dtype=np.uint8).reshape(height, width, 3)  # once only


def open_image(data: bytes, limits: ImageLimits | None = None) -> OpenedImage:
    """Check the bytes and read the header: byte limit, sniffed type, pixel limit."""
    limits = limits or ImageLimits()
    if not data:
        raise EmptyImageError("the image is empty")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"the image is {len(data)} bytes; the limit is {limits.max_bytes} bytes"
        )
    kind = sniff_image_type(data)
    try:
        with warnings.catch_warnings():
            # Pillow warns (and later raises) on large images; our own limit is stricter.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind.upper()])
    except Image.DecompressionBombError as exc:  # Pillow's own header check fired first
        # Pillow's message names its own limit and calls the image a DOS attack: say ours.
        raise ImageDimensionsError(
            f"the image has too many pixels; the limit is {limits.max_pixels}"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(f"the {kind.upper()} data does not decode: {exc}") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise CorruptImageError("the image has no pixels")
    if width * height > limits.max_pixels:
        raise ImageDimensionsError(
            f"the image is {width}×{height} pixels; the limit is {limits.max_pixels}"
        )
    return OpenedImage(data, kind, image)


class PixelBudget:
    """How many pixels may be decoded and analysed at once in a process, over all threads.

    A frame holds its pixels from decoding until its face is cropped (the decoded image,
    Pillow's buffer and the detector's resized copy: about 8 bytes a pixel), so a budget
    of N pixels bounds that memory at about 8·N bytes however many requests arrive at once.
    A frame waits for room; one frame is never larger than the budget (the pixel limit is
    at most the budget).
    """

    def __init__(self, pixels: int) -> None:
        if pixels <= 0:
            raise ValueError("a pixel budget is positive")
        self.total = pixels
        self._free = pixels
        self._room = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.total)
        with self._room:
            self._room.wait_for(lambda: self._free >= pixels)
            self._free -= pixels
        try:
            yield
        finally:
            with self._room:
                self._free += pixels
                self._room.notify_all()

    @property
    def in_use(self) -> int:
        return self.total - self._free


def _decode_jpeg(data: bytes) -> NDArray[np.uint8]:
    """A colour or grey JPEG, once Pillow has read its header and the limits passed.

    OpenCV decodes straight into BGR with the same libjpeg-turbo settings as Pillow (the
    pixels are identical) and applies the EXIF orientation too, in half the time: Pillow
    unpacks into its own 4-byte pixels and copies out again (2.5 ms against 1.3 for
    640×480). A truncated file fails to decode (None), as it does in Pillow. CMYK and other
    rare modes stay with Pillow, which knows Adobe's inverted CMYK.
    """
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise CorruptImageError("the JPEG data does not decode (truncated or damaged)")
    return np.asarray(decoded, np.uint8)


def encode_jpeg(image_bgr: NDArray[np.uint8], quality: int = 90) -> bytes:
    """Encode a BGR array as JPEG (used by tests and benchmarks to make captures)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1])).save(
        buffer, format="JPEG", quality=quality
    )
    return buffer.getvalue()
