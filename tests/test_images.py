"""Tests for ats.images: every kind of image file becomes RGB (3, size, size); bad files are refused."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from ats import images


def _png(width: int, height: int, bit_depth: int, color_type: int, raw: bytes | None) -> bytes:
    """A hand-built PNG; `raw` is the unfiltered scanline data (None: header only, no pixels)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(raw)) if raw is not None else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


# --- load_image ------------------------------------------------------------------------------

def test_load_image_rgba_composites_over_white():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 5:, 3] = 255  # left half transparent, right half opaque red
    x = images.load_image(_encode(Image.fromarray(rgba, "RGBA")), size=10)
    assert x.shape == (3, 10, 10)
    assert torch.allclose(x[:, 0, 0], torch.ones(3)) and torch.allclose(x[:, 0, -1], torch.tensor([1.0, 0, 0]))


def test_load_image_grayscale_and_palette_become_rgb(tmp_path):
    gray = Image.fromarray(np.full((8, 8), 128, np.uint8), "L")
    x = images.load_image(io.BytesIO(_encode(gray)), size=8)
    assert x.shape == (3, 8, 8) and torch.allclose(x, torch.full((3, 8, 8), 128 / 255))
    path = tmp_path / "palette.gif"
    Image.new("RGB", (8, 8), (0, 0, 255)).convert("P").save(path)
    assert torch.allclose(images.load_image(path, size=8)[:, 3, 3], torch.tensor([0.0, 0, 1]))


def test_load_image_crops_odd_sizes_to_a_centred_square():
    pixels = np.zeros((31, 45, 3), np.uint8)
    pixels[:, 7:38] = 255  # the centred 31×31 square is white, the margins black
    x = images.load_image(_encode(Image.fromarray(pixels)))
    assert x.shape == (3, 32, 32) and float(x.min()) > 0.99


def test_load_image_rescales_16_bit_instead_of_clipping():
    gray16 = Image.fromarray(np.full((6, 6), 32768, np.uint16))
    assert abs(float(images.load_image(_encode(gray16), size=6).mean()) - 0.5) < 0.01
    row = b"\x00" + struct.pack(">HHH", 65535, 0, 32768) * 4  # 16-bit RGB, filter byte 0
    x = images.load_image(_png(4, 4, 16, 2, row * 4), size=4)
    assert torch.allclose(x[:, 1, 1], torch.tensor([1.0, 0.0, 128 / 255]), atol=1 / 255)


def test_load_image_rejects_garbage_empty_and_huge(tmp_path):
    with pytest.raises(ValueError, match="not an image PIL can read"):
        images.load_image(b"definitely not a picture")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        images.load_image(empty)
    with pytest.raises(ValueError, match="40 megapixels"):
        images.load_image(_png(10_000, 10_000, 8, 2, None))  # declares 100 MP, holds nothing
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.truncate(images.MAX_IMAGE_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(ValueError, match="25 MB"):
        images.load_image(big)
    with pytest.raises(ValueError, match="positive"):
        images.load_image(b"x", size=0)
