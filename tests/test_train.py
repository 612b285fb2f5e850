"""`ats.train` and `ats train`: recipes, batched augmentation, checkpoints, exact resume, the CLI."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from ats import checkpoints, data, models
from ats.cli import main
from ats.recipes import TrainRecipe
from ats.train import TrainProgress, evaluate, state_path, train, training_subset


@pytest.fixture(scope="module")
def train_set(data_dir) -> data.ImageSet:
    return data.load_dataset("cifar100", "train", root=data_dir)


@pytest.fixture(scope="module")
def small_train(train_set) -> data.ImageSet:
    """One training image a class (100), as a set of its own (so `data_fraction` is 1)."""
    return training_subset(replace(TrainRecipe.smoke(), data_fraction=0.002), train_set, seed=0)


@pytest.fixture(scope="module")
def small_test(data_dir) -> data.ImageSet:
    return data.load_dataset("cifar100", "test", root=data_dir).subset(range(100))


def _fast(**changes) -> TrainRecipe:
    """The smoke recipe on an already-small set: full fraction, batches of 25, evaluation at the end."""
    return replace(TrainRecipe.smoke(), data_fraction=1.0, batch_size=25, eval_every=0, **changes)


def test_paper_recipe_matches_the_original_schedule():
    recipe = TrainRecipe.paper()
    assert recipe.milestone_epochs() == [74, 124, 175]
    assert (recipe.arch, recipe.lr, recipe.momentum, recipe.nesterov, recipe.weight_decay, recipe.batch_size,
            recipe.loss, recipe.epochs) == ("resnet20-4", 0.1, 0.9, True, 5e-4, 128, "half-ce", 200)
    assert TrainRecipe.tiny().data_fraction == 0.1 and TrainRecipe.tiny().epochs == 50
    assert TrainRecipe.tiny_paper().arch == "resnet20-4"


@pytest.mark.parametrize("changes, fragment", [
    ({"loss": "mse"}, "mse"), ({"epochs": 0}, "epochs=0"), ({"data_fraction": 1.5}, "1.5"),
    ({"semantics": "fancy"}, "fancy"),
])
def test_bad_recipe_raises(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        replace(TrainRecipe.smoke(), **changes)
    with pytest.raises(ValueError, match="huge"):
        TrainRecipe.preset("huge")


def test_tiny_subset_is_class_balanced_and_seeded(train_set):
    subset = training_subset(TrainRecipe.tiny(), train_set, seed=0)
    assert len(subset) == 5000
    assert torch.bincount(subset.labels, minlength=100).tolist() == [50] * 100
    again = training_subset(TrainRecipe.tiny(), train_set, seed=0)
    other = training_subset(TrainRecipe.tiny(), train_set, seed=1)
    assert torch.equal(subset.images, again.images)
    assert not torch.equal(subset.images, other.images)


def test_smoke_trains_loss_falls_and_checkpoint_loads(small_train, small_test, tmp_path):
    steps: list[TrainProgress] = []
    recipe = _fast(epochs=4, lr=0.05)
    result = train(recipe, data=small_train, test=small_test, out=tmp_path / "m.pt", seed=0, device="cpu",
                   callback=steps.append)
    assert len(steps) == 4 * 4 and steps[-1].epoch == 4 and steps[-1].batch == steps[-1].batches == 4
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert not state_path(tmp_path / "m.pt").exists()  # removed once the run is done
    model, meta = checkpoints.load_checkpoint(result.checkpoint)
    assert (meta.arch, meta.dataset, meta.num_classes, meta.policy) == ("resnet20", "cifar100", 100, "none")
    assert (meta.epochs, meta.recipe, meta.seed) == (4, "smoke", 0)
    assert meta.extra["train_images"] == 100 and meta.extra["recipe"]["lr"] == 0.05
    assert meta.accuracy == result.accuracy == steps[-1].accuracy
    assert evaluate(model, small_test) == pytest.approx(meta.accuracy)


def test_resume_after_interruption_matches_an_uninterrupted_run(small_train, tmp_path):
    recipe = _fast(epochs=2)
    whole = train(recipe, policy="13", data=small_train, out=tmp_path / "whole.pt", seed=3, device="cpu")

    def interrupt(step: TrainProgress) -> None:
        if step.epoch == 1 and step.batch == step.batches:
            raise KeyboardInterrupt

    out = tmp_path / "part.pt"
    with pytest.raises(KeyboardInterrupt):
        train(recipe, policy="13", data=small_train, out=out, seed=3, device="cpu", callback=interrupt)
    assert state_path(out).exists() and not out.exists()
    state = torch.load(state_path(out), weights_only=True)
    assert state["epoch"] == 1
    with pytest.raises(ValueError, match="different training run"):
        train(recipe, policy="14", data=small_train, out=out, seed=3, device="cpu", resume=True)
    resumed = train(recipe, policy="13", data=small_train, out=out, seed=3, device="cpu", resume=True)
    assert resumed.resumed_from == 1 and whole.resumed_from == 0
    assert resumed.epoch_losses == pytest.approx(whole.epoch_losses, rel=1e-6)
    a, _ = checkpoints.load_checkpoint(whole.checkpoint)
    b, _ = checkpoints.load_checkpoint(resumed.checkpoint)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=name)


def test_policy_is_applied_to_the_training_batches(small_train, tmp_path):
    seen: list[torch.Tensor] = []

    def record(module, inputs):
        if isinstance(module, models.Normalize):
            seen.append(inputs[0].detach() * 255)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:  # 11 = posterize to 6 bits: every pixel the model sees is a multiple of 4/255
        train(_fast(epochs=1), policy="11", data=small_train, out=tmp_path / "p.pt", seed=0, device="cpu")
    finally:
        handle.remove()
    assert len(seen) == 4  # one batch of 25 at a time
    levels = torch.cat([x.flatten() for x in seen])
    assert (levels - levels.round()).abs().max() < 1e-3 and (levels.round() % 4 == 0).all()
    assert (small_train.images % 4 != 0).float().mean() > 0.5  # the raw pixels are not
    assert checkpoints.load_checkpoint(tmp_path / "p.pt")[1].policy == "11"


def test_cli_train_smoke_json(capsys, tmp_path, data_dir):
    out = tmp_path / "smoke.pt"
    code = main(["train", "--recipe", "smoke", "--out", str(out), "--json", "--device", "cpu", "--seed", "1"])
    stdout, _ = capsys.readouterr()
    assert code == 0
    doc = json.loads(stdout)
    assert set(doc) == {"checkpoint", "accuracy", "epochs", "seconds", "device"}
    assert doc["checkpoint"] == str(out) and doc["epochs"] == 2 and doc["device"] == "cpu"
    assert 0.0 <= doc["accuracy"] <= 1.0 and doc["seconds"] > 0
    meta = checkpoints.load_checkpoint(out)[1]
    assert (meta.recipe, meta.seed, meta.accuracy) == ("smoke", 1, doc["accuracy"])


@pytest.mark.parametrize("argv, fragment", [
    (["--recipe", "huge"], "huge"),
    (["--policy", "3-50"], "50"),
    (["--epochs", "0"], "epochs=0"),
    (["--data", "imagenet"], "imagenet"),
])
def test_cli_bad_input_exits_2(capsys, tmp_path, argv, fragment):
    code = main(["train", "--out", str(tmp_path / "x.pt"), *argv])
    _, err = capsys.readouterr()
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("ats train: error:") and fragment in line
