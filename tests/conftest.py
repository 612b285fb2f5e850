"""Shared fixtures: devices, the CIFAR-100 folder or its stand-in, and a batch of 16 test images.

Tests run anywhere: without `$ATS_DATA_DIR`, `data_dir` is a folder holding a deterministic
CIFAR-100 stand-in (`standin.py`: the bundled sample photos, CIFAR-100's sizes and labels), and is
exported as `ATS_DATA_DIR` for the rest of the session so `ats` commands and notebooks find it too.
Only tests about the CIFAR files themselves ask for `cifar_dir` (or `cifar_batch`), which skips
without the real data. With `ATS_REQUIRE_DATA=1` (CI) nothing falls back or skips: both fail.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
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


_ATS_DATA_DIR = os.environ.get("ATS_DATA_DIR")  # as the session began, before `data_dir` may set it


def _real_data_dir() -> Path | None:
    """`$ATS_DATA_DIR` if it is a folder; None (or a failure, when `ATS_REQUIRE_DATA=1`) otherwise."""
    value = _ATS_DATA_DIR
    if value and Path(value).is_dir():
        return Path(value)
    if os.environ.get("ATS_REQUIRE_DATA") == "1":
        pytest.fail(f"ATS_DATA_DIR={value!r} is not a folder, and ATS_REQUIRE_DATA=1")
    return None


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The real CIFAR folder `$ATS_DATA_DIR`, for tests about its files; skips without it."""
    real = _real_data_dir()
    if real is None:
        pytest.skip("set ATS_DATA_DIR to a folder with the CIFAR .npz files (see docs/design.md)")
    return real


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Iterator[Path]:
    """`$ATS_DATA_DIR`, else a folder with the CIFAR-100 stand-in, set as `ATS_DATA_DIR` meanwhile."""
    real = _real_data_dir()
    if real is not None:
        yield real
        return
    from standin import write_standin

    folder = write_standin(tmp_path_factory.mktemp("cifar100-standin"))
    patch = pytest.MonkeyPatch()
    patch.setenv("ATS_DATA_DIR", str(folder))
    yield folder
    patch.undo()


def _first_test_images(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(folder / "cifar100_test.npz") as npz:
        x = torch.from_numpy(npz["x"][:16]).permute(0, 3, 1, 2).float() / 255.0
        y = torch.from_numpy(npz["y"][:16]).long()
    return x, y


@pytest.fixture(scope="session")
def cifar_batch(cifar_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 16 real CIFAR-100 test images as float (16, 3, 32, 32) in [0, 1], and their labels."""
    return _first_test_images(cifar_dir)


@pytest.fixture(scope="session")
def image_batch(data_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 16 test images of `data_dir` (CIFAR-100 or its stand-in), as `cifar_batch`."""
    return _first_test_images(data_dir)
