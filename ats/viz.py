"""Image grids and plot helpers. Heavy plotting libraries are imported lazily, inside functions."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


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
