"""Compare mode (`ats.compare`): settings batched into one call match their own runs, frames and scores agree."""
from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from ats import attacks, compare, viz
from ats.data import load_samples
from ats.evaluation import evaluate_reconstruction
from ats.federated import client_update
from ats.models import build_model
from ats.runtime import make_generator

Setting = compare.Setting


@pytest.fixture(scope="module")
def target():
    """An untrained LeNet and one sample photo with its label."""
    x, y = load_samples().batch([0])
    return build_model("lenet", 100, seed=0).eval(), x[0], int(y[0])


def alone(model, x, y, setting: Setting, iterations: int):
    """One setting as `ats attack` runs it: a client step and an attack from one seeded generator."""
    generator = make_generator(0)
    shared, private = client_update(model, x[None], torch.tensor([y]), setting.policy, setting.defense,
                                    crop_flip=setting.crop_flip, generator=generator, per_example=True)
    recon = attacks.reconstruct(model, shared, setting.config(iterations), generator=generator,
                                policy=private.policy, crop_flip=private.crop_flip)
    return evaluate_reconstruction(recon, private, x[None])[0]


def test_settings_are_checked_and_spelled_canonically():
    assert Setting(" 3-1-7 ", "prune-70.0", "ig") == Setting("3-1-7", "prune-70", "ig")
    assert str(Setting("3-1-7+43-18-18")) == "3-1-7+43-18-18 · none · idlg"
    with pytest.raises(ValueError, match="empty index"):
        Setting("3--1")
    with pytest.raises(ValueError, match="attack 'fgsm' is not one of"):
        Setting(attack="fgsm")


def test_plan_batches_settings_that_share_an_attack_and_an_aware_policy():
    settings = [Setting("none"), Setting("3-1-7", "prune-70"), Setting("3-1-7", attack="aware"),
                Setting("43-18-18", attack="aware")]
    assert compare.plan(settings) == [(0, 1), (2,), (3,)]
    assert compare.plan(settings[:2] + [Setting("43-18-18", "gauss-1e-3")]) == [(0, 1, 2)]


def test_one_setting_is_exactly_its_own_run(target):
    model, x, y = target
    setting = Setting("3-1-7", "prune-70", "idlg")
    result = compare.compare(model, x, y, [setting], iterations=3).results[0]
    assert result.to_dict() == alone(model, x, y, setting, 3).to_dict()


def test_batched_settings_match_their_own_runs(target):
    """IG's Adam acts elementwise: a batched setting follows its own run to float rounding."""
    model, x, y = target
    settings = [Setting("none", attack="ig"), Setting("3-1-7", "gauss-1e-3", "ig"), Setting("43-18-18", attack="ig")]
    comparison = compare.compare(model, x, y, settings, iterations=6)
    assert comparison.calls == ((0, 1, 2),)
    for setting, result in zip(settings, comparison.results):
        assert result.psnr_x == pytest.approx(alone(model, x, y, setting, 6).psnr_x, abs=1e-3)
    assert len({r.psnr_x for r in comparison.results}) == 3  # three different attacks, not one thrice


def test_frames_come_first_at_once_then_every_few_iterations_and_end_with_scores(target):
    model, x, y = target
    settings = [Setting("none"), Setting("3-1-7", attack="aware")]
    frames = list(compare.iter_compare(model, x, y, settings, iterations=5, every=2))
    assert [(f.call, f.snapshot.iteration) for f in frames] == [(0, 1), (0, 2), (0, 4), (0, 5),
                                                                (1, 1), (1, 2), (1, 4), (1, 5)]
    assert [f.settings for f in frames[::4]] == [(0,), (1,)]
    assert [bool(f.results) for f in frames] == [False, False, False, True] * 2
    assert frames[0].transformed.shape == (2, 3, 32, 32)


def test_the_aware_curve_measures_what_its_result_does(target):
    """The live PSNR vs T(x) of the aware attacker is its own estimate of T(x), as the final score."""
    model, x, y = target
    comparison = compare.compare(model, x, y, [Setting("3-1-7", attack="aware")], iterations=4)
    last = [c for c in comparison.curves if c["iteration"] == 4][0]
    result = comparison.results[0]
    assert last["psnr_tx"] == pytest.approx(result.psnr_tx, abs=1e-4)
    assert last["psnr_x"] == pytest.approx(result.psnr_x, abs=1e-4)
    assert abs(result.psnr_tx - result.psnr_x) > 0.1  # the two really differ for this attacker


def test_comparison_rows_json_and_png_grid(target):
    model, x, y = target
    settings = [Setting("none"), Setting("3-1-7")]
    comparison = compare.compare(model, x, y, settings, iterations=2)
    rows = comparison.rows()
    assert [r["policy"] for r in rows] == ["none", "3-1-7"] and all(r["call"] == 0 for r in rows)
    assert all(r["baseline_mean_colour"] > 0 for r in rows)
    document = json.loads(json.dumps(comparison.to_dict()))
    assert document["seed"] == 0 and len(document["curves"]) == 2 * 2  # frames at iteration 1 and at the end, 2
    png = viz.grid_png(comparison.grid_rows(), scale=2)
    image = Image.open(io.BytesIO(png))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and image.size == (2 * 64 + 3 * 2, 3 * 64 + 4 * 2)


def test_readings_tell_hidden_moved_and_recovered_apart(target):
    model, x, y = target
    result = compare.compare(model, x, y, [Setting("none")], iterations=1).results[0]
    mean = result.baseline_mean_colour
    assert compare.reading(replace(result, psnr_x=mean + 5), 12.0) == "recovers x"
    assert compare.reading(replace(result, psnr_x=mean - 1, psnr_x_aligned=mean + 5), 12.0) == "moved"
    assert compare.reading(replace(result, psnr_x=mean - 1, psnr_x_aligned=mean, psnr_tx=20.0), 12.0) == \
        "recovers T(x)"
    assert compare.reading(replace(result, psnr_x=mean - 1, psnr_x_aligned=mean, psnr_tx=11.0), 12.0) == "hidden"


def test_estimate_times_each_call_and_scales_with_iterations(target):
    model, x, y = target
    estimate = compare.estimate(model, x, y, [Setting("none"), Setting("3-1-7", attack="aware")], iterations=50)
    assert len(estimate.per_iteration) == 2 and all(t > 0 for t in estimate.per_iteration)
    assert estimate.seconds(100) - estimate.seconds(50) == pytest.approx(50 * sum(estimate.per_iteration))


def test_too_many_settings_are_refused(target):
    model, x, y = target
    with pytest.raises(ValueError, match="compare 1 to 4 settings, got 5"):
        compare.compare(model, x, y, [Setting()] * 5, iterations=1)
