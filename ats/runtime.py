"""Runtime: device choice, seeding, explicit random generators, and where the shipped files are.

Nothing in `ats` touches global RNG state implicitly: functions that need randomness take a
`torch.Generator`, made here from a seed on the device where the tensors live.
"""
from __future__ import annotations

import operator
import os
import random
from importlib import resources
from pathlib import Path

import numpy as np
import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


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
