"""Reading one image file safely: any format PIL reads, as a float `(3, size, size)` RGB tensor.

This is the path every image from outside takes (an upload in the app, `ats attack --image`, a
class-folder dataset, the bundled sample photos), so it refuses what could hurt: empty files,
files over `MAX_IMAGE_BYTES`, and decompression bombs over `MAX_IMAGE_PIXELS`. Every refusal is a
`ValueError` naming the file. Images are centre-cropped to a square and resized to the 32×32 of
CIFAR, the size at which Gao et al. (CVPR 2021) attack and defend.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SIZE = 32  # CIFAR's side; every dataset is brought to it
MAX_IMAGE_PIXELS = 40_000_000  # decompression-bomb guard for load_image
MAX_IMAGE_BYTES = 25 * 2**20


def load_image(source: str | os.PathLike | bytes | BinaryIO, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Any image PIL reads (path, bytes or file) as float (3, size, size) in [0, 1].

    Grayscale, 16-bit, palette and transparent images become RGB (transparency over white); the
    image is centre-cropped to a square and resized with an antialiasing filter.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size {size!r} must be a positive int")
    label, data = _read_bytes(source)
    too_big = f"{label} has more pixels than the limit of {MAX_IMAGE_PIXELS // 1_000_000} megapixels"
    with warnings.catch_warnings():  # PIL's own bomb warning; our limit below is lower
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise ValueError(too_big) from error
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{label} is not an image PIL can read ({error})") from error
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{too_big} ({image.width}×{image.height})")
    try:
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"{label} is not an image PIL can read ({error})") from error
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0  # (3, size, size)


def _read_bytes(source: str | os.PathLike | bytes | BinaryIO) -> tuple[str, bytes]:
    """(a name for messages, the file's bytes), refusing empty and oversized files."""
    if isinstance(source, (bytes, bytearray)):
        label, data = "the given bytes", bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        label = str(path)
        if not path.is_file():
            raise ValueError(f"{label} is not a file")
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise ValueError(f"{label} is larger than the limit of {MAX_IMAGE_BYTES // 2**20} MB")
        data = path.read_bytes()
    elif hasattr(source, "read"):
        label = str(getattr(source, "name", "the uploaded file"))
        data = source.read(MAX_IMAGE_BYTES + 1)
    else:
        raise ValueError(f"cannot read an image from a {type(source).__name__}; give a path, bytes or a file")
    if not data:
        raise ValueError(f"{label} is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"{label} is larger than the limit of {MAX_IMAGE_BYTES // 2**20} MB")
    return label, data


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit and float grayscale rescaled (PIL would clip them), alpha over white."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        scale = 1.0 if image.mode == "F" else 65535.0
        gray = np.clip(np.asarray(image, dtype=np.float64) / scale, 0.0, 1.0)
        image = Image.fromarray((gray * 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")
