"""The curated public API: `import ats` gives the names a user needs, and the README's quick start runs."""
from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import pytest

import ats


def test_every_public_name_resolves_to_its_home_module():
    for name in ats.__all__:
        value = getattr(ats, name)
        assert getattr(value, "__module__", "").startswith("ats."), name
    assert set(ats.__all__) <= set(dir(ats))
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        ats.nonsense  # noqa: B018


def test_the_readme_quick_start_runs_as_written(monkeypatch):
    """The README's `import ats` block, executed with the attack cut to 5 iterations."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"```python\n(import ats\n.*?)```", readme, re.S).group(1)
    preset = ats.AttackConfig.preset
    monkeypatch.setattr(ats.AttackConfig, "preset", classmethod(lambda cls, name: replace(preset(name), iterations=5)))
    printed = []
    exec(compile(block, "README.md", "exec"), {"print": printed.append})
    summary = printed[0]
    assert summary["images"] == 1 and math.isfinite(summary["psnr_x_mean"]) and math.isfinite(summary["psnr_tx_mean"])
