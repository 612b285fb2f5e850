"""The teaching notebooks: each `.ipynb` matches its paired `py:percent` script, and each runs top to
bottom at the smoke preset (`ATS_PRESET=smoke`) without network."""
from __future__ import annotations

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SCRIPTS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
pytestmark = pytest.mark.slow


def test_seven_notebooks_each_paired_and_indexed():
    assert len(SCRIPTS) == 7
    index = (NOTEBOOKS / "README.md").read_text()
    for script in SCRIPTS:
        assert script.with_suffix(".ipynb").is_file(), f"{script.name} has no .ipynb"
        assert script.with_suffix(".ipynb").name in index, f"{script.stem} is missing from notebooks/README.md"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_ipynb_is_in_sync_with_its_script(script):
    text = jupytext.read(script)
    book = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
    pairs = list(zip(text.cells, book.cells))
    assert len(text.cells) == len(book.cells), f"{script.name}: cell count differs; run `jupytext --sync {script}`"
    for i, (a, b) in enumerate(pairs):
        assert (a.cell_type, a.source.strip()) == (b.cell_type, b.source.strip()), \
            f"{script.name}: cell {i} differs from the .ipynb; run `jupytext --sync {script}`"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_notebook_runs_at_the_smoke_preset(script, tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("ATS_PRESET", "smoke")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book = jupytext.read(script)
    client = nbclient.NotebookClient(book, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the failing cell and traceback, on any error
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
