"""Small helpers behind the app's pages (`app_pages/`): galleries, reference policies, file checks.

Nothing here draws on a screen: the helpers return tensors, arrays, paths and library objects,
and raise `ValueError` naming the bad input, which the pages show inline. The reference policies
are the paper's (Gao et al., CVPR 2021, Table 1: 3-1-7, 43-18-18 and their hybrid).
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ats.data import ASSETS_DIR
from ats.models import ModelMeta, load_checkpoint
from ats.ops import POOL, apply_op, describe
from ats.runtime import make_generator

PAPER_POLICIES = ("none", "3-1-7", "43-18-18", "3-1-7+43-18-18")
BENCHMARK_COLUMNS = ("policy", "defense", "psnr_mean", "psnr_std", "psnr_original_mean", "ssim_mean", "accuracy")


def op_label(index: int) -> str:
    """"3 · translateX ±14.5 px": an op's index and what it does."""
    return f"{index} · {describe(index)}"


def op_gallery(image: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Every pool op applied to one image (3, H, W) in [0, 1]: (50, 3, H, W), one call per op."""
    batch = image.detach().float().cpu().reshape(1, *image.shape[-3:])  # (1, 3, H, W)
    return torch.cat([apply_op(batch, i, make_generator(seed)) for i in range(len(POOL))])


def to_display(images: torch.Tensor, scale: int = 4) -> list[np.ndarray]:
    """(B, 3, H, W) in [0, 1] -> B uint8 (H·scale, W·scale, 3) arrays, pixels kept sharp (nearest)."""
    images = images.detach().float().cpu().nan_to_num(0.5).clamp(0, 1)
    if scale > 1:
        images = images.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    return [(img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for img in images]


def reference_policies(random: int = 3, seed: int = 0) -> tuple[str, ...]:
    """The paper's policies and "none", then `random` seeded random candidates of the search."""
    from ats.search import candidates

    drawn = [str(p) for p in candidates(random, seed)] if random > 0 else []
    return PAPER_POLICIES + tuple(p for p in drawn if p not in PAPER_POLICIES)


def shipped_checkpoints() -> tuple[Path, ...]:
    """The model checkpoints shipped in `assets/models/`, by name."""
    return tuple(sorted((ASSETS_DIR / "models").glob("*.pt")))


def load_checkpoint_bytes(data: bytes, *, device: torch.device | str = "cpu", expect_arch: str | None = None,
                          num_classes: int | None = None) -> tuple[nn.Module, ModelMeta]:
    """`load_checkpoint` on uploaded bytes; ValueError when it is not an ats checkpoint or does not fit."""
    if not data:
        raise ValueError("the uploaded checkpoint is empty")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload-{hashlib.sha256(data).hexdigest()[:12]}.pt"
        path.write_bytes(data)
        model, meta = load_checkpoint(path, device=device, expect_arch=expect_arch)
    check_classes(meta, num_classes)
    return model, meta


def check_classes(meta: ModelMeta, num_classes: int | None) -> None:
    """ValueError unless the checkpoint's model has `num_classes` outputs (None: anything goes)."""
    if num_classes is not None and meta.num_classes != num_classes:
        raise ValueError(f"the checkpoint's {meta.arch} model has {meta.num_classes} classes ({meta.dataset}); "
                         f"these images are labelled with {num_classes} classes")


def check_benchmark_columns(columns: Iterable[str]) -> None:
    """ValueError naming the columns a benchmark table lacks."""
    missing = [c for c in BENCHMARK_COLUMNS if c not in set(columns)]
    if missing:
        raise ValueError(f"the benchmark table lacks the columns {', '.join(missing)}; "
                         f"expected {', '.join(BENCHMARK_COLUMNS)}")


def existing_database(path: str | Path) -> Path:
    """`path` when it names an existing file (opening a missing one would create an empty database)."""
    path = Path(str(path).strip()).expanduser()
    if not str(path).strip() or str(path) == ".":
        raise ValueError("no database path given; write the path of a results .db file")
    if not path.is_file():
        raise ValueError(f"results database {path} does not exist; give the path of a file written by `ats search`")
    return path
