"""Showing images: grids (tensors, PNG files and bytes, matplotlib), display arrays, the ATS ops' gallery.

The gallery shows each of the 50 transformations that Gao et al. (CVPR 2021) build policies from
(the pool is `ats.ops`) on one image. Only `show_grid` draws (with matplotlib, imported lazily,
inside the function); the rest returns tensors and arrays for a notebook or the app to show.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ats.ops import apply_op
from ats.pool import POOL, describe
from ats.runtime import make_generator


def image_grid(rows: list[Tensor], *, scale: int = 3, padding: int = 2) -> Tensor:
    """Stack rows of images (each (B, 3, H, W) in [0, 1]) into one (3, H', W') grid, upscaled `scale`×."""
    if not rows:
        raise ValueError("image_grid needs at least one row of images")
    from torchvision.utils import make_grid

    width = max(r.shape[0] for r in rows)
    padded = []
    for r in rows:
        r = r.detach().float().cpu().clamp(0, 1)
        if r.shape[0] < width:
            r = torch.cat([r, torch.ones(width - r.shape[0], *r.shape[1:])])
        padded.append(r)
    images = torch.cat(padded)
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    return make_grid(images, nrow=width, padding=padding, pad_value=1.0)


def save_grid(path: str | Path, rows: list[Tensor], *, scale: int = 3) -> Path:
    """Write `image_grid(rows)` as a PNG and return its path."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(rows, scale=scale), path)
    return path


def grid_png(rows: list[Tensor], *, scale: int = 3) -> bytes:
    """`image_grid(rows)` encoded as PNG bytes (a download, an upload), nothing written to disk."""
    import io

    from PIL import Image

    grid = image_grid(rows, scale=scale)  # (3, H, W) in [0, 1]
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def show_grid(rows: list[Tensor], *, labels: list[str] | None = None, title: str | None = None,
              scale: int = 3, ax=None):
    """Draw `image_grid(rows)` with matplotlib (in a notebook), one label per row on the left."""
    import matplotlib.pyplot as plt

    grid = image_grid(rows, scale=scale)
    if ax is None:
        width = grid.shape[2] / 100 + (1.2 if labels else 0)
        _, ax = plt.subplots(figsize=(max(3, width), max(1.5, grid.shape[1] / 100)), dpi=100)
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    if labels:
        step = grid.shape[1] / len(rows)
        ax.set_yticks([step * (i + 0.5) for i in range(len(rows))], labels)
        ax.tick_params(length=0)
    else:
        ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title)
    return ax


def to_display(images: Tensor, scale: int = 4) -> list[np.ndarray]:
    """(B, 3, H, W) in [0, 1] -> B uint8 (H·scale, W·scale, 3) arrays, pixels kept sharp (nearest)."""
    images = images.detach().float().cpu().nan_to_num(0.5).clamp(0, 1)
    if scale > 1:
        images = images.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    return [(img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for img in images]


def op_label(index: int) -> str:
    """"3 · translateX ±14.5 px": an op's index and what it does."""
    return f"{index} · {describe(index)}"


def op_gallery(image: Tensor, seed: int = 0) -> Tensor:
    """Every pool op applied to one image (3, H, W) in [0, 1]: (50, 3, H, W), one call per op."""
    batch = image.detach().float().cpu().reshape(1, *image.shape[-3:])  # (1, 3, H, W)
    return torch.cat([apply_op(batch, i, make_generator(seed)) for i in range(len(POOL))])
