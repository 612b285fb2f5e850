"""Stated maxima: the largest jobs `ats` accepts, and the memory estimate that refuses one before it allocates.

A careless or hostile input must end in one clear line, never in an hour-long run, a memory
error or silent nonsense (issue 15). Each bound here is far above what the paper needs (Gao et
al., CVPR 2021: 3-op policies, hybrids of 2, 4,800 attack iterations, 16 restarts, 200 epochs,
1,500 candidates) and is checked before any work starts. Models are sized on PyTorch's "meta"
device, which allocates nothing, and an attack's memory is estimated from that size; the
estimate's factors were measured on LeNet, ResNet20 and ConvNet (peak resident memory per
restart of each image: about 10 copies of the parameters and 3 of the activations, in float32).
"""
from __future__ import annotations

import os

import torch

MAX_SEED = 2**32 - 1  # what NumPy's seeding accepts; torch takes more, derived seeds add to it
MAX_ITERATIONS = 100_000  # attack iterations (the paper: 4,800)
MAX_RESTARTS = 64  # attack restarts (the paper's LBFGS+cosine: 16)
MAX_ATTACK_IMAGES = 1_000  # images one `ats attack` reconstructs (the paper: 100)
MAX_EPOCHS = 1_000  # training epochs (the paper: 200)
MAX_CANDIDATES = 10_000  # random candidates of one search (the paper: 1,500)
MAX_PARAMETERS = 50_000_000  # a model's parameters (ResNet20-4: 4.4 M)
POLICY_OPS = 16  # ops in one policy (the paper's: 3)
HYBRID_POLICIES = 8  # policies in one hybrid (the paper's: 2)
POLICY_TEXT = 1_000  # characters of a policy string, checked before it is read
PRUNE_PERCENT = (0.1, 99.9)  # prune-P: the share of each gradient tensor zeroed
NOISE_SCALE = (1e-6, 10.0)  # gauss-S, lap-B: gradients are of order 1e-3–1
_BYTES_PER_PARAMETER, _BYTES_PER_ACTIVATION = 4 * 10, 4 * 3  # per attacked target, measured


def check_range(name: str, value: int | float, low: int | float, high: int | float) -> None:
    """ValueError "NAME must be LOW..HIGH, got VALUE" unless low ≤ value ≤ high."""
    if isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be {low:,}..{high:,}, got {_short(value)}")


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}… ({len(text)} digits)"


def _meta_model(arch: str, num_classes: int, dataset: str) -> torch.nn.Module:
    """`arch` built on the meta device: shapes without memory. ValueError for unknown or absurd sizes."""
    from ats.models import build_model

    try:
        with torch.device("meta"):
            return build_model(arch, num_classes, dataset=dataset)
    except (RuntimeError, OverflowError, MemoryError) as error:
        raise ValueError(f"model {arch!r} is too large to build ({str(error).splitlines()[0][:80]}); "
                         f"at most {MAX_PARAMETERS:,} parameters") from None


def parameter_count(arch: str, num_classes: int = 100, dataset: str = "cifar100") -> int:
    """How many parameters `arch` has, counted without allocating them."""
    return sum(p.numel() for p in _meta_model(arch, num_classes, dataset).parameters())


def check_model(arch: str, num_classes: int = 100, dataset: str = "cifar100") -> None:
    """ValueError when `arch` is unknown or has more than `MAX_PARAMETERS` parameters."""
    count = parameter_count(arch, num_classes, dataset)
    if count > MAX_PARAMETERS:
        raise ValueError(f"model {arch!r} has {count:,} parameters; at most {MAX_PARAMETERS:,} "
                         f"(resnet20-4 has 4,350,884)")


def activation_count(model: torch.nn.Module, shape: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Elements the leaf modules of `model` output for one image (one forward pass, no gradient)."""
    total = 0

    def count(module, inputs, output) -> None:
        nonlocal total
        total += output.numel() if isinstance(output, torch.Tensor) else 0

    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return total


def attack_bytes(model: torch.nn.Module, images: int, restarts: int, *, joint: bool = False) -> int:
    """Estimated peak memory of attacking `images` images with `restarts` restarts each."""
    parameters = sum(p.numel() for p in model.parameters())
    activations = activation_count(model)
    if joint:  # one candidate batch of all images per restart, one gradient each
        return restarts * (_BYTES_PER_PARAMETER * parameters + _BYTES_PER_ACTIVATION * activations * images)
    return images * restarts * (_BYTES_PER_PARAMETER * parameters + _BYTES_PER_ACTIVATION * activations)


def free_memory(device: torch.device) -> int | None:
    """Bytes free on `device` (CUDA: the driver's count; CPU: MemAvailable), or None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed: int, device: torch.device, what: str, hint: str) -> None:
    """ValueError when `needed` bytes exceed what `device` has free (no check when that is unknown)."""
    free = free_memory(device)
    if free is not None and needed > free:
        raise ValueError(f"{what} needs about {needed / 2**30:.1f} GiB, but {device.type} has "
                         f"{free / 2**30:.1f} GiB free; {hint}")
