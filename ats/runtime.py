"""Runtime: device choice, seeding, explicit random generators, and where the shipped files are.

Nothing in `ats` touches global RNG state implicitly: functions that need randomness take a
`torch.Generator`, made here from a seed on the device where the tensors live.
"""
from __future__ import annotations

import operator
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import numpy as np
import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("float32", "tf32")


def pick_device(name: str | None = None) -> torch.device:
    """The device to compute on: `name`, else `$ATS_DEVICE`, else cuda > mps > cpu."""
    name = (name or os.environ.get("ATS_DEVICE") or "auto").lower()
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ValueError(f"device {name!r} is not one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for but MPS is not available here")
    return torch.device(name)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh `torch.Generator` on `device`, seeded with `seed` (a whole number that fits 64 bits)."""
    try:
        value = operator.index(seed)
    except TypeError:
        value = None
    if value is None or not -2**63 <= value < 2**64:
        raise ValueError(f"seed {str(seed)[:24]} must be a whole number in -2**63..2**64-1 "
                         f"(the command line takes 0..2**32-1)")
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(value)
    return generator


@contextmanager
def precision(mode: str = "float32") -> Iterator[None]:
    """The arithmetic of the code inside, restored on exit: TF32 is an option, never the default.

    * "float32": plain float32 everywhere, CUDA's TF32 off for matrix products and cuDNN
      convolutions (torch itself leaves TF32 on for cuDNN convolutions by default);
    * "tf32": TF32 matrix products and convolutions on CUDA (Ampere and later, 10-bit mantissa);
      no effect on the CPU.

    Mixed precision (autocast) is not offered: bfloat16 autocast fails inside `torch.func.vmap`'s
    batch norm (torch 2.14), and gradient matching compares cosines to ~1e-3, near bfloat16's
    resolution. `bench/attack_speed.py --precision tf32` measures what TF32 does to time and PSNR.
    """
    if mode not in PRECISIONS:
        raise ValueError(f"precision {mode!r} is not one of {', '.join(PRECISIONS)}")
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's global RNGs (for model initialisation in scripts)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def describe_device(device: torch.device) -> str:
    """A human-readable name for `device` ("cpu (2 threads)", "cuda: NVIDIA H100")."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


PRESETS = ("smoke", "laptop", "paper")


def preset_name(default: str = "laptop") -> str:
    """The budget scale notebooks and scripts run at: `$ATS_PRESET` (smoke in CI), else `default`."""
    name = os.environ.get("ATS_PRESET", default).strip() or default
    if name not in PRESETS:
        raise ValueError(f"ATS_PRESET={name!r} is not one of {', '.join(PRESETS)}")
    return name


def asset_path(*parts: str) -> Path:
    """A file or folder shipped inside the package, `ats/assets/<parts>` ("models", "x.pt").

    Looked up with `importlib.resources`, so it is right for an editable checkout and an installed
    wheel alike; the package is installed as plain files, so the result is a real path.
    """
    found = resources.files("ats").joinpath("assets")
    for part in parts:
        found = found.joinpath(part)
    if not isinstance(found, Path):
        raise ValueError(f"ats is not installed as plain files ({found!r}); reinstall it from a wheel")
    return found
