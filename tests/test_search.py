"""Search: seeded unique candidates, selection, resumable scoring, and the `ats score`/`ats search` commands."""
from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from ats import search
from ats.policy import Policy
from ats.racing import Racing, surely_beaten
from ats.selection import pareto_front, select
from ats.store import ScoreRow, Store
from killing import kill_after_rows


def row(policy: str, privacy: float, accuracy: float, per_image: tuple[float, ...] = (0.0,)) -> ScoreRow:
    return ScoreRow(policy, "def", "ck", 0, privacy, accuracy, accuracy / 60, per_image, len(per_image), 0.1)


# --- candidates --------------------------------------------------------------------------------

def test_candidates_are_seeded_unique_in_range_and_short():
    drawn = search.candidates(1500, seed=3)
    assert len(drawn) == 1500 and len({str(p) for p in drawn}) == 1500
    assert all(isinstance(p, Policy) and 1 <= len(p.indices) <= 3 for p in drawn)
    assert all(0 <= i <= 49 for p in drawn for i in p.indices)
    assert {len(p.indices) for p in drawn} == {1, 2, 3}  # empty slots make shorter policies, as the original
    assert search.candidates(1500, seed=3) == drawn
    assert search.candidates(40, seed=3) == drawn[:40]  # a shorter search is a prefix: resumable, comparable
    assert search.candidates(40, seed=4) != drawn[:40]


def test_candidates_reject_bad_counts_and_singles_cover_the_pool():
    for bad in (0, -1, 127_551, 2.5, True):
        with pytest.raises(ValueError, match="1–127,550"):
            search.candidates(bad)
    assert [str(p) for p in search.single_ops()] == [str(i) for i in range(50)]
    assert [str(p) for p in search.parse_policies("3-1-7, 43-18-18,3-1-7")] == ["3-1-7", "43-18-18"]
    with pytest.raises(ValueError, match="50"):
        search.parse_policies("3-50")


# --- selection ---------------------------------------------------------------------------------

ROWS = [
    row("1-2", 0.10, -90.0),  # most private, but rejected by the accuracy threshold
    row("3-1-7", 0.20, -80.0),
    row("7-9", 0.25, -84.0),  # shares op 7 with 3-1-7: not in the hybrid
    row("43-18-18", 0.30, -70.0),
    row("5", 0.40, -60.0),
    row("6", 0.45, -65.0),  # dominated by 5
    row("8", math.nan, -50.0),  # a failed score is never selected
]


def test_select_filters_ranks_and_builds_a_disjoint_hybrid():
    selection = select(ROWS, threshold=-85.0, top=2)
    assert [r.policy for r in selection.ranked] == ["3-1-7", "7-9", "43-18-18", "5", "6"]
    assert [r.policy for r in selection.top] == ["3-1-7", "7-9"]
    assert str(selection.hybrid) == "3-1-7+43-18-18" and selection.hybrid.is_disjoint()
    assert selection.candidates == 7 and selection.rejected == 2 and selection.ok and not selection.note
    three = select(ROWS, threshold=-85.0, top=3)
    assert str(three.hybrid) == "3-1-7+43-18-18+5"
    loose = select(ROWS, threshold=-95.0, top=1)
    assert [r.policy for r in loose.top] == ["1-2"] and str(loose.hybrid) == "1-2+7-9"  # 3-1-7 shares op 1


def test_pareto_front_keeps_only_undominated_rows():
    front = pareto_front(ROWS)
    assert [r.policy for r in front] == ["1-2", "3-1-7", "43-18-18", "5"]
    assert select(ROWS).pareto == front
    tie = [row("1", 0.2, -80.0), row("2", 0.2, -80.0), row("3", 0.2, -81.0)]
    assert [r.policy for r in pareto_front(tie)] == ["1", "2"]


def test_nothing_passing_is_reported_not_raised():
    selection = select(ROWS, threshold=-10.0)
    assert not selection.ok and selection.top == () and selection.hybrid is None
    assert "no policy passes the accuracy threshold -10" in selection.note and "for 5" in selection.note
    assert len(selection.pareto) == 4  # the front is still there to look at
    assert "no scored policies" in select([]).note


def test_alpha_blends_min_max_normalised_mean_and_variance():
    rows = [row("1", 0.2, -80.0, (0.0, 0.4)), row("2", 0.3, -80.0, (0.3, 0.3)), row("3", 0.4, -80.0, (0.35, 0.45))]
    assert [r.policy for r in select(rows, alpha=1.0).ranked] == ["1", "2", "3"]
    assert [r.policy for r in select(rows, alpha=0.0).ranked] == ["2", "3", "1"]
    blended = select(rows, alpha=0.7)  # variances 0.04, 0, 0.0025
    assert blended.ranking == pytest.approx((0.3, 0.35, 0.7 + 0.3 * 0.0625))
    with pytest.raises(ValueError, match="alpha"):
        select(rows, alpha=1.5)


# --- resumable scoring with a stand-in scorer --------------------------------------------------

@dataclass(frozen=True)
class FakeConfig:
    name: str = "fake"
    privacy_images: int = 4

    def definition(self) -> str:
        return f"fake images={self.privacy_images}"


@dataclass(frozen=True)
class Value:
    value: float
    per_image: torch.Tensor = torch.zeros(1)
    normalized: float = 0.0


def fake_scorer(calls: list):
    def score(policy, *, privacy_model, accuracy_model, data, config, seed):
        calls.append(str(policy))
        base = sum(policy.indices) / 150
        per_image = torch.tensor([base + 0.01 * i for i in range(config.privacy_images)])
        return Value(float(per_image.mean()), per_image), Value(-70.0 - len(policy.indices) * 5.0, normalized=-1.0)
    return score


def test_run_search_skips_what_the_store_has(tmp_path):
    policies = search.candidates(12, seed=0)
    calls, events = [], []
    common = dict(privacy_model=None, accuracy_model=None, data=None, config=FakeConfig(), seed=0, checkpoint_hash="ck")
    with Store.open(tmp_path / "r.db") as store:
        first = search.run_search(policies[:5], store=store, scorer=fake_scorer(calls), **common)
        assert first.scored == 5 and first.skipped == 0
        second = search.run_search(policies, store=store, scorer=fake_scorer(calls), callback=events.append, **common)
    assert calls == [str(p) for p in policies]  # every policy scored exactly once
    assert second.scored == 7 and second.skipped == 5 and len(second.rows) == 12
    assert [r.policy for r in second.rows] == [str(p) for p in policies]
    assert [(e.done, e.total, e.skipped) for e in events] == [(i, 7, 5) for i in range(1, 8)]
    assert second.rows[0].per_image == pytest.approx(tuple(float(v) for v in fake_scorer([])(
        policies[0], privacy_model=None, accuracy_model=None, data=None, config=FakeConfig(), seed=0)[0].per_image))


# --- racing ------------------------------------------------------------------------------------

def test_surely_beaten_counts_clear_paired_wins_only():
    generator = torch.Generator().manual_seed(0)
    image_effect = torch.rand(1, 32, generator=generator)  # shared by all policies: pairing removes it
    values = image_effect + torch.tensor([[0.0], [0.01], [0.3], [0.3]]) + 0.001 * torch.randn(4, 32, generator=generator)
    beaten = surely_beaten(values, values, z=3.0)
    assert beaten.tolist() == [0, 1, 2, 2]
    assert surely_beaten(values[:, :1], values[:, :1], z=3.0).tolist() == [0, 0, 0, 0]  # one image: no call
    assert Racing(first=8).rounds(100) == [8, 16, 32, 64] and Racing().rounds(4) == []


@pytest.fixture(scope="module")
def lenet_setup(data_dir):
    from dataclasses import replace

    from ats import models, scores
    from ats.data import load_dataset

    config = replace(scores.ScoreConfig.smoke(), arch="lenet", privacy_images=8)
    privacy_model = models.build_model("lenet", 100, seed=1).eval()
    return dict(privacy_model=privacy_model, accuracy_model=scores.accuracy_model(config, 0),
                data=load_dataset("cifar100", "test"), config=config, seed=0, checkpoint_hash="lenet")


def test_racing_stores_full_scores_of_survivors_only(tmp_path, lenet_setup):
    policies = search.candidates(4, seed=1)
    race = Racing(keep=1, first=2, z=2.0, threshold=-1e9)
    with Store.open(tmp_path / "race.db") as store:
        raced = search.run_search(policies, store=store, racing=race, **lenet_setup)
    with Store.open(tmp_path / "full.db") as store:
        full = search.run_search(policies, store=store, **lenet_setup)
    assert raced.dropped + raced.scored == 4 and raced.scored >= 1 and full.image_scores == 4 * 8
    assert raced.image_scores >= 4 * 2 + raced.scored * 8  # every candidate raced on 2 images at least
    exhaustive = {r.policy: r for r in full.rows}
    for r in raced.rows:  # a raced row is the full definition's row, nothing partial
        assert r.images == 8 and r.privacy == pytest.approx(exhaustive[r.policy].privacy, abs=1e-6)
    best = [r.policy for r in select(full.rows, threshold=-1e9).top]
    assert best[0] in {r.policy for r in raced.rows}


# --- the commands ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lenet_checkpoint(tmp_path_factory):
    from ats import checkpoints, models

    path = tmp_path_factory.mktemp("models") / "tiny-lenet.pt"
    model = models.build_model("lenet", 100, seed=1)
    return checkpoints.save_checkpoint(path, model, checkpoints.ModelMeta("lenet", "cifar100", 100, "none", recipe="test"))


def test_score_json_contract(capsys, data_dir, lenet_checkpoint):
    from ats.cli import main

    code = main(["score", "3-1-7", "43-18-18", "--preset", "smoke", "--checkpoint", str(lenet_checkpoint),
                 "--json", "--device", "cpu"])
    out, _ = capsys.readouterr()
    assert code == 0
    document = json.loads(out)
    assert [d["policy"] for d in document] == ["3-1-7", "43-18-18"]
    for d in document:
        assert {"policy", "privacy", "accuracy", "accuracy_normalized", "passes"} <= set(d)
        assert 0.0 < d["privacy"] <= 1.0 and d["passes"] == (d["accuracy"] >= -85.0)


@pytest.mark.parametrize("argv, fragment", [
    (["score", "3-50"], "50"),
    (["score", "3--1"], "empty"),
    (["search", "--policies", "3-1-7,7-x"], "7-x"),
    (["search", "--candidates", "0"], "n=0"),
])
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, lenet_checkpoint, argv, fragment):
    from ats.cli import main

    code = main([*argv, "--checkpoint", str(lenet_checkpoint), "--preset", "smoke"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(f"ats {argv[0]}: error:") and fragment in err


def test_missing_default_checkpoint_names_the_file_and_the_command(capsys, monkeypatch, tmp_path):
    from ats import scores
    from ats.cli import main

    monkeypatch.setattr(scores, "default_score_checkpoint", lambda: tmp_path / "tiny-cifar100-resnet20.pt")
    assert main(["score", "3-1-7", "--preset", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "tiny-cifar100-resnet20.pt" in err and "ats train --recipe tiny" in err


def _search(db, checkpoint, *extra) -> list[str]:
    return [sys.executable, "-c", "import sys; from ats.cli import main; sys.exit(main())", "search", "--candidates", "8", "--preset", "smoke", "--db", str(db),
            "--checkpoint", str(checkpoint), "--device", "cpu", "--json", *extra]


def test_search_killed_halfway_resumes_without_losing_or_duplicating(tmp_path, data_dir, lenet_checkpoint):
    db = tmp_path / "results.db"
    environment = dict(os.environ, ATS_DATA_DIR=str(data_dir))
    count = kill_after_rows(_search(db, lenet_checkpoint), environment, db, table="scores", rows=2, seconds=120)
    assert 2 <= count < 8, "the search should be killed halfway"
    finished = subprocess.run(_search(db, lenet_checkpoint), env=environment, capture_output=True, text=True,
                              timeout=300)
    assert finished.returncode == 0, finished.stderr
    document = json.loads(finished.stdout)
    assert document["rows"] == 8 and document["skipped"] >= 2 and document["scored"] == 8 - document["skipped"]
    with contextlib.closing(sqlite3.connect(db)) as c:
        policies = [r[0] for r in c.execute("SELECT policy FROM scores")]
    assert sorted(policies) == sorted(str(p) for p in search.candidates(8, seed=0))
    selection = document["selection"]
    assert selection["candidates"] == 8 and len(selection["pareto"]) >= 1
    shown = subprocess.run(_search(db, lenet_checkpoint, "--show"), env=environment, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0 and json.loads(shown.stdout)["selection"] == selection
