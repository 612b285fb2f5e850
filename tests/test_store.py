"""The results database: idempotent upserts, refusing foreign files and foreign score definitions."""
from __future__ import annotations

import math
import sqlite3
import subprocess
import sys

import pytest

from ats.store import BenchmarkRow, ScoreRow, Store


def row(policy: str = "3-1-7", privacy: float = 0.3, definition: str = "def-A", **changes) -> ScoreRow:
    values = dict(policy=policy, definition=definition, checkpoint="ck", seed=0, privacy=privacy, accuracy=-80.0,
                  accuracy_normalized=-1.2, per_image=(0.25, 0.35), images=2, seconds=0.5)
    values.update(changes)
    return ScoreRow(**values)


def test_upsert_is_idempotent_and_newer_values_win(tmp_path):
    path = tmp_path / "results.db"
    with Store.open(path) as store:
        store.put_score(row())
        store.put_score(row())
        store.put_score(row("43-18-18"))
        assert len(store.get_scores("def-A", "ck", 0)) == 2
        store.put_score(row(privacy=0.1))
        assert store.has("3-1-7", "def-A", "ck", 0) and not store.has("3-1-7", "def-A", "ck", 1)
    with Store.open(path) as store:  # survives reopening
        rows = {r.policy: r for r in store.get_scores("def-A", "ck", 0)}
        assert set(rows) == {"3-1-7", "43-18-18"} and rows["3-1-7"].privacy == 0.1
        assert rows["3-1-7"].per_image == (0.25, 0.35) and rows["3-1-7"].created
        assert store.get_scores("def-A", "other-checkpoint", 0) == []


def test_nan_scores_round_trip(tmp_path):
    with Store.open(tmp_path / "r.db") as store:
        store.put_score(row(privacy=math.nan, per_image=(math.nan, 0.5)))
        (back,) = store.get_scores("def-A", "ck", 0)
    assert math.isnan(back.privacy) and math.isnan(back.per_image[0]) and back.per_image[1] == 0.5


def test_another_definition_is_refused_with_both_names(tmp_path):
    path = tmp_path / "results.db"
    with Store.open(path, definition="smoke-definition") as store:
        store.put_score(row(definition="smoke-definition"))
        with pytest.raises(ValueError, match="laptop-definition"):
            store.put_score(row(definition="laptop-definition"))
    with pytest.raises(ValueError) as error:
        Store.open(path, definition="laptop-definition")
    message = str(error.value)
    assert "smoke-definition" in message and "laptop-definition" in message
    assert "--db" in message and "--preset" in message
    with Store.open(path) as store:  # nothing was deleted or mixed in
        assert [r.definition for r in store.groups()] == ["smoke-definition"]
    Store.open(tmp_path / "fresh.db", definition="laptop-definition").close()  # an empty file is fine


@pytest.mark.parametrize("content", [b"this is not a database" * 50, b"\x00" * 4096])
def test_a_file_that_is_not_sqlite_is_refused(tmp_path, content):
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not .*results database"):
        Store.open(path)


def test_a_foreign_sqlite_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE songs (title TEXT)")
    with pytest.raises(ValueError, match="not an ats results database.*songs"):
        Store.open(path)
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["songs"]
    with pytest.raises(ValueError, match="folder"):
        Store.open(tmp_path)


_WRITER = """
import sys
from ats.store import ScoreRow, Store
with Store.open(sys.argv[1]) as store:
    for i in range(int(sys.argv[2]), int(sys.argv[3])):
        store.put_score(ScoreRow(str(i), "def-A", "ck", 0, 0.1, -80.0, -1.0, (0.1,), 1, 0.0))
"""


def test_concurrent_writers_and_reopen(tmp_path):
    path = tmp_path / "shared.db"
    with Store.open(path) as reader:  # a reader holds the file open while two processes write
        writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(a), str(b)])
                   for a, b in ((0, 30), (20, 50))]  # overlapping keys 20–29
        assert [w.wait(timeout=60) for w in writers] == [0, 0]
        assert len(reader.get_scores("def-A", "ck", 0)) == 50
    with Store.open(path) as store:
        assert sorted(int(r.policy) for r in store.get_scores("def-A", "ck", 0)) == list(range(50))
        assert store.groups()[0].rows == 50


def test_a_benchmark_row_of_an_older_version_reads_back_with_the_new_metric_names(tmp_path):
    legacy_summary = {"psnr_mean": 12.5, "psnr_std": 1.5, "psnr_original_mean": 10.0, "psnr_original_std": 2.0,
                      "ssim_mean": 0.4, "ssim_original_mean": 0.3, "label_accuracy": 1.0, "failed": 0,
                      "accuracy": 0.7}
    legacy_image = {"index": 0, "label": 3, "label_recovered": True, "psnr": 10.0, "psnr_transformed": 12.5,
                    "ssim": 0.3, "ssim_transformed": 0.4, "mse": 0.1, "iterations": 4, "status": "ok"}
    old = BenchmarkRow("table", "3-1-7", "none", "ig", "ck", 1, 4, 0, legacy_summary, (legacy_image,), 1.0)
    with Store.open(tmp_path / "old.db") as store:
        store.put_benchmark(old)  # stored as an older version wrote it
    with Store.open(tmp_path / "old.db") as store:
        (back,) = store.benchmark_rows()
        assert store.get_benchmark(old.key) == back
    assert back.summary == {"psnr_tx_mean": 12.5, "psnr_tx_std": 1.5, "psnr_x_mean": 10.0, "psnr_x_std": 2.0,
                            "ssim_tx_mean": 0.4, "ssim_x_mean": 0.3, "label_accuracy": 1.0, "failed": 0,
                            "accuracy": 0.7}
    assert back.per_image == ({"index": 0, "label": 3, "label_recovered": True, "psnr_x": 10.0, "psnr_tx": 12.5,
                               "ssim_x": 0.3, "ssim_tx": 0.4, "mse_x": 0.1, "iterations": 4, "status": "ok"},)
