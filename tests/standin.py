"""A CIFAR-100 stand-in for tests run without `$ATS_DATA_DIR`: same files, shapes, sizes and labels.

`write_standin(folder)` writes `cifar100_train.npz` (50,000 images) and `cifar100_test.npz`
(10,000) in the layout `ats.data.load_dataset` reads, so every code path (library, `ats` commands
in subprocesses, notebooks) runs on it unchanged. The labels are CIFAR-100's: every class equally
often (500 train, 100 test images), in a seeded random order. Each image is one of the bundled
sample photos (`ats.data.load_samples`), randomly cropped from a reflect-padded copy and flipped,
blended with a smooth gradient whose angle, frequency and colour belong to its class -- photo-like
pixels for the op-against-PIL sweep, and a label a model can learn for the training tests.
It is deterministic (seeded generators). It is not CIFAR: tests about the CIFAR files themselves
(`cifar_dir` in conftest.py) still need the real data.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ats.data import CIFAR100_CLASSES, load_samples

SIZES = {"train": 50_000, "test": 10_000}
SEEDS = {"train": 0, "test": 1}
PHOTO_WEIGHT = 0.55  # the rest is the class's gradient


def class_patterns(num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """One smooth colour gradient per class, float (C, 3, 32, 32) in [0, 1]."""
    u = torch.linspace(-1.0, 1.0, 32)
    c = torch.arange(num_classes, dtype=torch.float32)
    angle = c * 2.399963  # the golden angle: neighbouring classes point in different directions
    frequency = 1.0 + c % 3
    colour = torch.rand(num_classes, 3, generator=generator)
    along = angle.cos()[:, None, None] * u[None, None, :] + angle.sin()[:, None, None] * u[None, :, None]
    ramp = 0.5 + 0.5 * torch.cos(math.pi * frequency[:, None, None] * along)  # (C, 32, 32)
    return colour[:, :, None, None] * ramp[:, None]


def _crops(photos: torch.Tensor) -> torch.Tensor:
    """Every 32×32 crop of the reflect-padded (pad 4) photos, plain and flipped: (P·9·9·2, 3, 32, 32)."""
    padded = torch.nn.functional.pad(photos, (4, 4, 4, 4), mode="reflect")  # (P, 3, 40, 40)
    crops = [padded[:, :, top:top + 32, left:left + 32] for top in range(9) for left in range(9)]
    crops = torch.stack(crops, 1).flatten(0, 1)  # (P·81, 3, 32, 32)
    return torch.stack([crops, crops.flip(-1)], 1).flatten(0, 1)


def standin_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The stand-in `split` ("train" or "test"): uint8 images (N, 32, 32, 3) and int64 labels (N,)."""
    n, generator = SIZES[split], torch.Generator().manual_seed(SEEDS[split])
    num_classes = len(CIFAR100_CLASSES)
    labels = torch.arange(num_classes).repeat(n // num_classes)[torch.randperm(n, generator=generator)]
    patterns = class_patterns(num_classes, generator)
    crops = _crops(load_samples().images.float() / 255)  # (K, 3, 32, 32)
    which = torch.randint(len(crops), (n,), generator=generator)
    images = torch.empty(n, 32, 32, 3, dtype=torch.uint8)
    for start in range(0, n, 5000):  # in chunks: a float copy of all 50,000 would take 600 MB
        part = slice(start, start + 5000)
        blend = PHOTO_WEIGHT * crops[which[part]] + (1 - PHOTO_WEIGHT) * patterns[labels[part]]  # (B, 3, 32, 32)
        images[part] = (blend * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return images.numpy(), labels.numpy()


def write_standin(folder: Path) -> Path:
    """Write `cifar100_{train,test}.npz` of the stand-in into `folder`; returns `folder`."""
    for split in SIZES:
        x, y = standin_split(split)
        np.savez(folder / f"cifar100_{split}.npz", x=x, y=y, classes=np.array(CIFAR100_CLASSES))
    return folder
