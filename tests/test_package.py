"""The built wheel: it ships `ats.cli` and the assets, and works installed, away from the checkout."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = "ats/assets/models/tiny-cifar100-resnet20.pt"
SAMPLES = ("astronaut", "camera", "chelsea", "coffee", "motorcycle", "rocket")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built offline from a copy of the checkout (so no build/ lands in the tree)."""
    source = tmp_path_factory.mktemp("source") / "ats"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", ".pytest_cache", "*.db"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(out), str(source)], check=True, capture_output=True, text=True)
    (built,) = out.glob("ats-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a bare folder, to be put on PYTHONPATH."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                    "--target", str(target), str(wheel)], check=True, capture_output=True, text=True)
    return target


def run_installed(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python *args` with only the installed copy of ats importable, from folder `cwd`."""
    env = {**os.environ, "PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_wheel_ships_the_cli_and_the_assets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"ats/__main__.py", "ats/cli/__init__.py", "ats/cli/__main__.py", CHECKPOINT} <= names
    assert {"ats/assets/samples/labels.json", "ats/assets/samples/ATTRIBUTION.md"} <= names
    for name in SAMPLES:
        assert f"ats/assets/samples/{name}.png" in names
        assert f"ats/assets/samples/preview/{name}.png" in names


def test_installed_package_runs_from_another_folder(installed, tmp_path):
    done = run_installed(installed, tmp_path, "-m", "ats", "--help")
    assert done.returncode == 0, done.stderr
    assert "score" in done.stdout
    code = ("import ats, ats.scores as s, ats.data as d; "
            "print(ats.__file__); print(s.default_score_checkpoint()); print(len(d.load_samples()))")
    done = run_installed(installed, tmp_path, "-c", code)
    assert done.returncode == 0, done.stderr
    package, checkpoint, samples = done.stdout.split()
    assert Path(package).resolve().is_relative_to(installed.resolve())
    assert Path(checkpoint).resolve() == (installed / CHECKPOINT).resolve() and Path(checkpoint).is_file()
    assert int(samples) == len(SAMPLES)


def test_installed_score_uses_the_shipped_checkpoint(installed, tmp_path, data_dir):
    done = run_installed(installed, tmp_path, "-m", "ats", "score", "none", "--preset", "smoke",
                         "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["policy"] == "none" and math.isfinite(row["privacy"])
