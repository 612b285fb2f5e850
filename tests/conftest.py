"""Shared fixtures: devices, the offline CIFAR folder, a few real CIFAR-100 test images."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


@pytest.fixture(params=_devices())
def device(request) -> torch.device:
    """Every available device: cpu always, cuda when present (tests marked by id)."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """`$ATS_DATA_DIR`; tests that need it skip without it, or fail when `ATS_REQUIRE_DATA=1` (CI)."""
    value = os.environ.get("ATS_DATA_DIR")
    if not value or not Path(value).is_dir():
        if os.environ.get("ATS_REQUIRE_DATA") == "1":
            pytest.fail(f"ATS_DATA_DIR={value!r} is not a folder, and ATS_REQUIRE_DATA=1")
        pytest.skip("set ATS_DATA_DIR to the offline CIFAR folder (e.g. ../shared/data)")
    return Path(value)


@pytest.fixture(scope="session")
def cifar_batch(data_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 16 CIFAR-100 test images as float (16, 3, 32, 32) in [0, 1], and their labels."""
    with np.load(data_dir / "cifar100_test.npz") as npz:
        x = torch.from_numpy(npz["x"][:16]).permute(0, 3, 1, 2).float() / 255.0
        y = torch.from_numpy(npz["y"][:16]).long()
    return x, y
