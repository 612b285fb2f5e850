"""The 50-entry transformation pool of Automatic Transformation Search, as batched kernels.

Gao et al., "Privacy-preserving Collaborative Learning with Automatic Transformation Search"
(CVPR 2021), search policies built from the 50 single-operation entries of the original code's
`policy.py`: AutoAugment's CIFAR10Policy (Cubuk et al., CVPR 2019, as coded by DeepVoltaire)
flattened to one op per entry, with ATS's magnitude tables. Every kernel here reproduces what
that code computes with PIL on 8-bit images, but on float `(B, 3, H, W)` batches in [0, 1], on
the input's device, with one random sign per image (`kernel(x, magnitude, sign) -> x`).

Where the original and AutoAugment differ, the original wins: probabilities are never read
("ats" semantics; "autoaugment" honours them), enhance magnitudes go to 0.5, shear and
translate fill black, rotate always turns +m degrees counter-clockwise and fills gray 128.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as nnf
from torchvision.transforms.v2 import functional as tvf

from ats.pool import op_spec

SEMANTICS = ("ats", "autoaugment")


# ---- geometry: PIL's inverse-mapped affine resampling, batched --------------------------------

def _cubic_weights(d: torch.Tensor) -> torch.Tensor:
    """PIL's bicubic tap weights (a = -1) for fractional offsets `d`: (...,) -> (..., 4)."""
    d2, d3 = d * d, d * d * d
    return torch.stack([-d + 2 * d2 - d3, 1 - 2 * d2 + d3, d + d2 - d3, d3 - d2], dim=-1)


def _affine(x: torch.Tensor, matrix: torch.Tensor, mode: str, fill: float) -> torch.Tensor:
    """PIL `Image.transform(AFFINE)`: output pixel centre (u, v) samples input at matrix @ (u, v, 1).

    `matrix` is (B, 6) = (a, b, c, d, e, f) per image, mapping output to input coordinates like
    PIL; "nearest" takes floor, "bicubic" is PIL's a = -1 kernel with edge-clamped taps; samples
    whose point falls outside the input get `fill`.
    """
    b, c, h, w = x.shape
    rows = torch.arange(h, device=x.device, dtype=matrix.dtype) + 0.5
    cols = torch.arange(w, device=x.device, dtype=matrix.dtype) + 0.5
    v, u = torch.meshgrid(rows, cols, indexing="ij")  # (H, W)
    m = matrix[:, :, None, None]  # (B, 6, 1, 1)
    xin = m[:, 0] * u + m[:, 1] * v + m[:, 2]  # (B, H, W)
    yin = m[:, 3] * u + m[:, 4] * v + m[:, 5]  # (B, H, W)
    flat = x.reshape(b, c, h * w)
    if mode == "nearest":
        xi, yi = xin.floor(), yin.floor()
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)  # (B, H, W)
        taps = yi.clamp(0, h - 1).long() * w + xi.clamp(0, w - 1).long()  # (B, H, W)
        out = flat.gather(2, taps.reshape(b, 1, h * w).expand(b, c, h * w)).reshape(b, c, h, w)
    else:
        inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)  # (B, H, W)
        x0, y0 = (xin - 0.5).floor(), (yin - 0.5).floor()
        offsets = torch.arange(-1, 3, device=x.device)
        xi = (x0.long()[..., None] + offsets).clamp(0, w - 1)  # (B, H, W, 4)
        yi = (y0.long()[..., None] + offsets).clamp(0, h - 1)  # (B, H, W, 4)
        taps = (yi[..., :, None] * w + xi[..., None, :]).reshape(b, 1, h * w * 16)
        weights = _cubic_weights(yin - 0.5 - y0)[..., :, None] * _cubic_weights(xin - 0.5 - x0)[..., None, :]
        weights = weights.to(x.dtype)  # (B, H, W, 4, 4)
        values = flat.gather(2, taps.expand(b, c, h * w * 16)).reshape(b, c, h, w, 16)
        out = (values * weights.reshape(b, 1, h, w, 16)).sum(-1).clamp(0, 1)  # (B, C, H, W)
    return torch.where(inside[:, None], out, torch.full_like(out, fill))


def _coord_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.device.type == "mps" else torch.float64


def _offset(magnitude: float, sign: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """magnitude · sign per image, in the coordinate precision: (B,)."""
    return sign.to(_coord_dtype(x)) * magnitude


def _matrix(x: torch.Tensor, **entries: torch.Tensor | float) -> torch.Tensor:
    """A (B, 6) batch of PIL affine matrices: the identity with the named entries replaced.

    Coordinates are computed in double precision like PIL (float32 on MPS, which lacks float64),
    so that samples landing exactly on the image edge fall on the same side as in PIL.
    """
    dtype = _coord_dtype(x)
    base = {"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0, "e": 1.0, "f": 0.0} | entries
    columns = [torch.as_tensor(base[k], dtype=dtype, device=x.device).expand(x.shape[0]) for k in "abcdef"]
    return torch.stack(columns, dim=1)  # (B, 6)


def shear_x(x: torch.Tensor, magnitude: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL affine (1, m·s, 0, 0, 1, 0), bicubic, black fill."""
    return _affine(x, _matrix(x, b=_offset(magnitude, sign, x)), "bicubic", 0.0)


def shear_y(x: torch.Tensor, magnitude: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL affine (1, 0, 0, m·s, 1, 0), bicubic, black fill."""
    return _affine(x, _matrix(x, d=_offset(magnitude, sign, x)), "bicubic", 0.0)


def translate_x(x: torch.Tensor, magnitude: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL affine (1, 0, m·W·s, 0, 1, 0), nearest (a whole-pixel shift), black fill."""
    return _affine(x, _matrix(x, c=_offset(magnitude * x.shape[-1], sign, x)), "nearest", 0.0)


def translate_y(x: torch.Tensor, magnitude: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL affine (1, 0, 0, 0, 1, m·H·s), nearest (a whole-pixel shift), black fill."""
    return _affine(x, _matrix(x, f=_offset(magnitude * x.shape[-2], sign, x)), "nearest", 0.0)


def rotate(x: torch.Tensor, magnitude: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL `rotate(m)` about the centre, counter-clockwise, nearest, corners gray 128 (no sign)."""
    h, w = x.shape[-2:]
    theta = -math.radians(magnitude)
    a, b = round(math.cos(theta), 15), round(math.sin(theta), 15)
    d, e = -b, a
    cx, cy = w / 2, h / 2
    matrix = _matrix(x, a=a, b=b, c=-a * cx - b * cy + cx, d=d, e=e, f=-d * cx - e * cy + cy)
    return _affine(x, matrix, "nearest", 128 / 255)


# ---- photometry: ImageEnhance blends and ImageOps lookups ---------------------------------------

def _factor(magnitude: float, sign: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (1 + magnitude * sign).to(x.dtype).reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL `Image.blend(degenerate, x, factor)`, clipped to [0, 1]."""
    return (factor * x + (1 - factor) * degenerate).clamp(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's "L" conversion (ITU-R 601-2 luma): (B, 3, H, W) -> (B, 1, H, W)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def color(x: torch.Tensor, magnitude: float, sign: torch.Tensor) -> torch.Tensor:
    """`ImageEnhance.Color(img).enhance(1 + m·s)`: blend with the grayscale image."""
    return _blend(_gray(x), x, _factor(magnitude, sign, x))


def contrast(x: torch.Tensor, magnitude: float, sign: torch.Tensor) -> torch.Tensor:
    """`ImageEnhance.Contrast(img).enhance(1 + m·s)`: blend with the grayscale mean (rounded to 8 bits, as PIL)."""
    mean = torch.round(_gray(x).mean(dim=(1, 2, 3), keepdim=True) * 255) / 255  # (B, 1, 1, 1)
    return _blend(mean, x, _factor(magnitude, sign, x))


def brightness(x: torch.Tensor, magnitude: float, sign: torch.Tensor) -> torch.Tensor:
    """`ImageEnhance.Brightness(img).enhance(1 + m·s)`: blend with black."""
    return (x * _factor(magnitude, sign, x)).clamp(0, 1)


def sharpness(x: torch.Tensor, magnitude: float, sign: torch.Tensor) -> torch.Tensor:
    """`ImageEnhance.Sharpness(img).enhance(1 + m·s)`: blend with PIL's SMOOTH filter; the border stays."""
    c = x.shape[1]
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], dtype=x.dtype, device=x.device) / 13
    smooth = nnf.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c)  # (B, C, H-2, W-2)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, _factor(magnitude, sign, x))


def posterize(x: torch.Tensor, magnitude: float, sign: torch.Tensor) -> torch.Tensor:
    """`ImageOps.posterize(img, bits)`: keep the top `magnitude` bits of each 8-bit value."""
    step = 2 ** (8 - int(magnitude))
    return torch.floor(torch.round(x * 255) / step) * step / 255


def solarize(x: torch.Tensor, magnitude: float, sign: torch.Tensor) -> torch.Tensor:
    """`ImageOps.solarize(img, threshold)`: invert 8-bit values >= threshold (0..255 scale)."""
    return torch.where(torch.round(x * 255) >= magnitude, 1 - x, x)


def autocontrast(x: torch.Tensor, magnitude: float | None, sign: torch.Tensor) -> torch.Tensor:
    """`ImageOps.autocontrast(img)`: stretch each channel to the full range."""
    return tvf.autocontrast(x)


def equalize(x: torch.Tensor, magnitude: float | None, sign: torch.Tensor) -> torch.Tensor:
    """`ImageOps.equalize(img)`: per-channel histogram equalization on the 8-bit grid."""
    return tvf.equalize(x)


def invert(x: torch.Tensor, magnitude: float | None, sign: torch.Tensor) -> torch.Tensor:
    """`ImageOps.invert(img)`."""
    return 1 - x


Kernel = Callable[[torch.Tensor, "float | None", torch.Tensor], torch.Tensor]
KERNELS: dict[str, Kernel] = {
    "shearX": shear_x, "shearY": shear_y, "translateX": translate_x, "translateY": translate_y,
    "rotate": rotate, "color": color, "contrast": contrast, "brightness": brightness,
    "sharpness": sharpness, "posterize": posterize, "solarize": solarize,
    "autocontrast": autocontrast, "equalize": equalize, "invert": invert,
}


# ---- the public entry points ---------------------------------------------------------------------

def check_images(x: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Raise ValueError unless `x` is a float (B, 3, H, W) batch and `generator` lives on its device."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        dtype = x.dtype if isinstance(x, torch.Tensor) else None
        raise ValueError(f"images must be a float tensor (B, 3, H, W) in [0, 1]; got {shape} of dtype {dtype}")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device} but the images are on {x.device}; "
                         "make it with ats.runtime.make_generator(seed, images.device)")


def check_semantics(semantics: str) -> None:
    """Raise ValueError unless `semantics` is "ats" or "autoaugment"."""
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics {semantics!r} is not one of {', '.join(SEMANTICS)}")


def random_signs(batch: int, generator: torch.Generator) -> torch.Tensor:
    """One ±1 per image, drawn from `generator` on its device: (B,)."""
    bits = torch.randint(0, 2, (batch,), generator=generator, device=generator.device)
    return bits.float() * 2 - 1


def apply_op(x: torch.Tensor, index: int, generator: torch.Generator, semantics: str = "ats") -> torch.Tensor:
    """Apply pool entry `index` to each image with its own random sign.

    "ats" (the original code) always applies the op; "autoaugment" applies it to each image with
    the entry's probability. x: (B, 3, H, W) in [0, 1] -> same shape.
    """
    spec = op_spec(index)
    check_semantics(semantics)
    check_images(x, generator)
    sign = random_signs(x.shape[0], generator).to(x.dtype)  # (B,)
    out = KERNELS[spec.name](x, spec.magnitude, sign)
    if semantics == "autoaugment":
        applied = torch.rand(x.shape[0], generator=generator, device=generator.device) < spec.probability
        out = torch.where(applied.reshape(-1, 1, 1, 1), out, x)
    return out


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """RandomCrop(size, padding, zero fill) then RandomHorizontalFlip(0.5), one draw per image.

    x: (B, 3, H, W) -> (B, 3, H, W); the crop offset is uniform in 0..2·padding on each axis.
    """
    check_images(x, generator)
    b, c, h, w = x.shape
    padded = nnf.pad(x, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=generator.device)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=generator.device)
    flip = torch.rand(b, generator=generator, device=generator.device) < 0.5
    rows = top[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = left[:, None] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(-1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


