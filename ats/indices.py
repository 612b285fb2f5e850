"""The paper's fixed sets of test-image indices, and the helpers that cut them.

Gao et al. (CVPR 2021) score privacy (S_pri, §4.2) and accuracy (S_acc, §4.3) on fixed CIFAR-100
test images, and the original code picks them so: it attacks test images 0–99 (`ATTACK_SET`),
scores S_pri on test images 200, 205, …, 695 (`PRIVACY_SET`) and S_acc on ten windows of 100 test
images from 200 on, each cut to one image per label (`accuracy_windows`, `dedupe_by_label`); see
`docs/method.md`. The later code's S_pri set (`per_class_indices`), the tiny-data training
subset (`class_balanced_subset`) and the command line's `0-4,9` (`parse_indices`) are index
lists too. Everything here indexes a dataset's order, so the sets are the same on every machine.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

ATTACK_SET = tuple(range(100))  # test images attacked in the benchmark
PRIVACY_SET = tuple(200 + 5 * i for i in range(100))  # S_pri images, as in the CVPR code


def accuracy_windows(runs: int = 10, size: int = 100) -> tuple[tuple[int, ...], ...]:
    """The S_acc batches of the CVPR code: window r holds test indices 200+size·r … 199+size·(r+1)."""
    if runs < 1 or size < 1:
        raise ValueError(f"runs={runs} and size={size} must both be at least 1")
    return tuple(tuple(range(200 + size * r, 200 + size * (r + 1))) for r in range(runs))


def dedupe_by_label(indices: Sequence[int], labels: Sequence[int] | torch.Tensor) -> tuple[int, ...]:
    """Of `indices`, keep the first image of each distinct label (`labels` indexed by dataset index)."""
    label_list = torch.as_tensor(labels).tolist()
    seen: set[int] = set()
    kept = []
    for i in indices:
        if not 0 <= i < len(label_list):
            raise ValueError(f"index {i} is out of range 0–{len(label_list) - 1}")
        if label_list[i] not in seen:
            seen.add(label_list[i])
            kept.append(int(i))
    return tuple(kept)


def per_class_indices(labels: Sequence[int] | torch.Tensor, k: int,
                      num_classes: int | None = None) -> tuple[int, ...]:
    """The first `k` images of each class in dataset order, class by class (HEAD-code S_pri set)."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    num_classes = num_classes or int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=num_classes)  # (C,)
    if k < 1 or int(counts.min()) < k:
        raise ValueError(f"k={k} must lie in 1–{int(counts.min())}, the size of the smallest class")
    order = torch.argsort(labels, stable=True)  # grouped by class, dataset order within
    starts = torch.cumsum(counts, 0) - counts  # (C,)
    return tuple(order[(starts[:, None] + torch.arange(k)).reshape(-1)].tolist())


def class_balanced_subset(labels: Sequence[int] | torch.Tensor, fraction: float,
                          generator: torch.Generator) -> tuple[int, ...]:
    """A seeded random `fraction` of each class (at least one image each), as sorted indices."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction {fraction} must lie in (0, 1]")
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    perm = torch.randperm(len(labels), generator=generator, device=generator.device).cpu()
    grouped = perm[torch.argsort(labels[perm], stable=True)]  # by class, random within
    counts = torch.bincount(labels)  # (C,)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(labels)) - starts[labels[grouped]]  # position within its class
    keep = (counts * fraction).round().long().clamp(min=1)  # (C,)
    return tuple(sorted(grouped[rank < keep[labels[grouped]]].tolist()))


MAX_INDICES = 100_000  # more than any split here holds (CIFAR train: 50,000)


def parse_indices(text: str, *, limit: int = MAX_INDICES) -> tuple[int, ...]:
    """"0-4" -> (0, 1, 2, 3, 4); "0,3,7"; "0-4,9". Ranges are inclusive; no repeats; ASCII digits.

    At most `limit` indices (say, the images a split holds), refused before any list is built,
    and checked in linear time."""
    text = str(text)
    shown = repr(text) if len(text) <= 40 else f"{text[:30]!r}… ({len(text):,} characters)"
    indices: list[int] = []
    for part in text.replace(" ", "").split(","):
        match = re.fullmatch(r"([0-9]{1,9})(?:-([0-9]{1,9}))?", part)
        if match is None:
            raise ValueError(f"indices {shown}: {part[:20]!r} is not a number or a range like 0-4")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise ValueError(f"indices {shown}: range {part!r} runs backwards")
        if len(indices) + last - first + 1 > limit:
            raise ValueError(f"indices {shown} name more than {limit:,} images")
        indices += range(first, last + 1)
    seen: set[int] = set()
    for i in indices:
        if i in seen:
            raise ValueError(f"indices {shown} name {i} more than once")
        seen.add(i)
    return tuple(indices)
