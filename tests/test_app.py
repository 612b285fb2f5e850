"""The Streamlit app, headless through `streamlit.testing.v1.AppTest`."""
from __future__ import annotations

import pytest
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def playground() -> AppTest:
    return AppTest.from_file(str(ROOT / "app_pages" / "playground.py"), default_timeout=120)


def test_router_loads_the_playground(data_dir):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "Attack playground"
    assert "Device" in at.sidebar.markdown[0].value


def test_run_an_attack_at_smoke_budget(data_dir):
    at = playground().run()
    at.slider[0].set_value(10)
    at.button[0].click().run()
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert "PSNR vs original" in labels and "Label recovered" in labels
    assert at.metric[labels.index("Label recovered")].value == "yes"


def test_malformed_policy_is_an_inline_error(data_dir):
    at = playground().run()
    at.text_input[0].input("3--1")
    at.button[0].click().run()
    assert not at.exception
    assert "empty" in at.error[0].value
    assert not at.metric
