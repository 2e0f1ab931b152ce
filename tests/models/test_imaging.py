"""Decoding untrusted bytes: each kind of bad input is its own error, fast and bounded."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from models.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageDimensionsError,
    ImageTooLargeError,
    UnsupportedImageTypeError,
)
from models.imaging import ImageLimits, decode_image, sniff_image_type


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid grayscale PNG of width×height black pixels, compressed to ~400 KB."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_decodes_jpeg_to_bgr(group_photo_path: Path) -> None:
    image = decode_image(group_photo_path.read_bytes())
    assert image.shape == (886, 1280, 3)
    assert image.dtype == np.uint8


def test_pixels_are_pillows_rgb_reversed(group_photo_path: Path) -> None:
    data = group_photo_path.read_bytes()
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[:, :, ::-1]
    decoded = decode_image(data)
    assert decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, expected)


def test_channel_order_is_bgr() -> None:
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    image = decode_image(_encode(red, "PNG"))
    assert image[0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_decodes_png_and_webp(fmt: str) -> None:
    source = Image.new("RGB", (40, 30), (10, 20, 30))
    image = decode_image(
        _encode(source, fmt, lossless=True) if fmt == "WEBP" else _encode(source, fmt)
    )
    assert image.shape == (30, 40, 3)
    assert image[5, 5].tolist() == [30, 20, 10]


def test_grayscale_and_alpha_become_three_channels() -> None:
    assert decode_image(_encode(Image.new("L", (9, 7), 128), "PNG")).shape == (7, 9, 3)
    assert decode_image(_encode(Image.new("RGBA", (9, 7)), "PNG")).shape == (7, 9, 3)


def test_exif_orientation_is_applied() -> None:
    source = Image.new("RGB", (60, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image = decode_image(_encode(source, "JPEG", exif=exif.tobytes()))
    assert image.shape == (60, 20, 3)


def _pillows_bgr(data: bytes) -> np.ndarray:
    """What Pillow alone makes of a frame: EXIF orientation applied, RGB, channels reversed."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    return np.asarray(image)[:, :, ::-1]


def _textured(mode: str, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[:, : size[0] // 2] //= 3  # a left half darker: flips and turns are told apart
    return Image.fromarray(pixels).convert(mode)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_pixels_and_every_orientation_match_pillow(orientation: int) -> None:
    # JPEGs decode through OpenCV (faster); the pixels must be the ones Pillow gives.
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(_textured("RGB"), "JPEG", quality=90, exif=exif.tobytes())
    np.testing.assert_array_equal(decode_image(data), _pillows_bgr(data))


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_jpegs_match_pillow(mode: str) -> None:
    data = _encode(_textured(mode), "JPEG", quality=90)
    decoded = decode_image(data)
    assert decoded.shape == (48, 64, 3)
    np.testing.assert_array_equal(decoded, _pillows_bgr(data))


def test_a_jpeg_cut_anywhere_is_corrupt(group_photo_path: Path) -> None:
    data = group_photo_path.read_bytes()
    for fraction in (0.05, 0.3, 0.9, 0.999):
        with pytest.raises(CorruptImageError):
            decode_image(data[: int(len(data) * fraction)])


def test_empty_file() -> None:
    with pytest.raises(EmptyImageError):
        decode_image(b"")


def test_garbage_bytes() -> None:
    rng = np.random.default_rng(7)
    with pytest.raises(UnsupportedImageTypeError):
        decode_image(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())


def test_gif_is_refused() -> None:
    gif = _encode(Image.new("P", (10, 10)), "GIF")
    assert gif[:4] == b"GIF8"
    with pytest.raises(UnsupportedImageTypeError, match="GIF"):
        decode_image(gif)


def test_truncated_jpeg(group_photo_path: Path) -> None:
    data = group_photo_path.read_bytes()
    with pytest.raises(CorruptImageError):
        decode_image(data[: len(data) // 2])


def test_jpeg_magic_with_garbage_body() -> None:
    with pytest.raises(CorruptImageError):
        decode_image(b"\xff\xd8\xff\xe0" + b"\x00" * 100)


def test_byte_limit_is_checked_before_parsing(group_photo_path: Path) -> None:
    data = group_photo_path.read_bytes()
    with pytest.raises(ImageTooLargeError):
        decode_image(data, ImageLimits(max_bytes=len(data) - 1, max_pixels=10**8))


def test_png_bomb_is_refused_fast_with_bounded_memory() -> None:
    bomb = png_bomb()
    assert len(bomb) < 1_000_000
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ImageDimensionsError, match="too many pixels|20000×20000"):
        decode_image(bomb)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Decoding would need 400 MB (1.2 GB as RGB); refusing from the header needs almost nothing.
    assert peak < 10 * 1024 * 1024
    assert elapsed < 2.0  # generous: it is microseconds; this guards against a full decode


def test_pixel_limit_applies_to_each_type() -> None:
    limits = ImageLimits(max_bytes=10**7, max_pixels=100 * 100)
    for fmt in ("PNG", "JPEG", "WEBP"):
        with pytest.raises(ImageDimensionsError):
            decode_image(_encode(Image.new("RGB", (101, 100)), fmt), limits)


def test_sniffing() -> None:
    assert sniff_image_type(b"\xff\xd8\xff\xdb") == "jpeg"
    assert sniff_image_type(b"\x89PNG\r\n\x1a\n") == "png"
    assert sniff_image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    with pytest.raises(UnsupportedImageTypeError):
        sniff_image_type(b"%PDF-1.7")
