"""`ats.train` with `TrainRecipe.defense`: every step's gradient goes through the federated defense
(Gao et al., CVPR 2021, Table 3's defended models), deterministically and resumably."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ats import checkpoints, data
from ats.recipes import TrainRecipe
from ats.train import TrainProgress, state_path, train, training_subset


@pytest.fixture(scope="module")
def small_train(data_dir) -> data.ImageSet:
    """One training image a class (100), as a set of its own (so `data_fraction` is 1)."""
    train_set = data.load_dataset("cifar100", "train", root=data_dir)
    return training_subset(replace(TrainRecipe.smoke(), data_fraction=0.002), train_set, seed=0)


def _fast(**changes) -> TrainRecipe:
    """The smoke recipe on an already-small set: full fraction, batches of 25, evaluation at the end."""
    return replace(TrainRecipe.smoke(), data_fraction=1.0, batch_size=25, eval_every=0, **changes)


def _weights(path) -> dict[str, torch.Tensor]:
    return checkpoints.load_checkpoint(path)[0].state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(x, b[name]) for name, x in a.items())


def _gradients_at_step(recipe: TrainRecipe, small_train, out) -> list[list[torch.Tensor]]:
    """Every parameter's .grad as the optimizer step sees it, for each step of a run of `recipe`."""
    seen: list[list[torch.Tensor]] = []

    def record(optimizer, args, kwargs):
        seen.append([p.grad.detach().clone() for group in optimizer.param_groups for p in group["params"]
                     if p.grad is not None])

    handle = register_optimizer_step_pre_hook(record)
    try:
        train(recipe, data=small_train, out=out, seed=0, device="cpu")
    finally:
        handle.remove()
    return seen


def test_pruning_reaches_the_optimizer_step(small_train, tmp_path):
    pruned = _gradients_at_step(_fast(epochs=1, defense="prune-90"), small_train, tmp_path / "p.pt")
    plain = _gradients_at_step(_fast(epochs=1), small_train, tmp_path / "n.pt")
    assert len(pruned) == len(plain) == 4 and len(pruned[0]) == len(plain[0]) > 20
    for step in pruned:
        for g in step:  # ⌊90 %·numel⌋ of each tensor zeroed, or more where entries were zero already
            assert int((g == 0).sum()) >= math.floor(0.9 * g.numel())
    assert sum(int((g == 0).sum()) for g in pruned[0]) / sum(g.numel() for g in pruned[0]) > 0.899
    for step in plain:  # undefended: the conv and linear weights' gradients are dense
        dense = [g for g in step if g.dim() > 1]
        assert dense and all((g == 0).float().mean() < 0.5 for g in dense)


def test_noisy_training_is_seeded_and_differs_from_undefended(small_train, tmp_path):
    recipe = _fast(epochs=1, defense="gauss-1e-2")
    first = train(recipe, data=small_train, out=tmp_path / "a.pt", seed=0, device="cpu")
    again = train(recipe, data=small_train, out=tmp_path / "b.pt", seed=0, device="cpu")
    plain = train(_fast(epochs=1), data=small_train, out=tmp_path / "c.pt", seed=0, device="cpu")
    assert first.epoch_losses == again.epoch_losses
    assert _same(_weights(first.checkpoint), _weights(again.checkpoint))
    assert not _same(_weights(first.checkpoint), _weights(plain.checkpoint))


def test_resume_with_a_defense_matches_an_uninterrupted_run(small_train, tmp_path):
    recipe = _fast(epochs=2, defense="lap-1e-2")
    whole = train(recipe, data=small_train, out=tmp_path / "whole.pt", seed=3, device="cpu")

    def interrupt(step: TrainProgress) -> None:
        if step.epoch == 1 and step.batch == step.batches:
            raise KeyboardInterrupt

    out = tmp_path / "part.pt"
    with pytest.raises(KeyboardInterrupt):
        train(recipe, data=small_train, out=out, seed=3, device="cpu", callback=interrupt)
    assert "defense_generator" in torch.load(state_path(out), weights_only=True)
    with pytest.raises(ValueError, match="different training run"):  # the defense is part of the run
        train(replace(recipe, defense="lap-1e-3"), data=small_train, out=out, seed=3, device="cpu", resume=True)
    resumed = train(recipe, data=small_train, out=out, seed=3, device="cpu", resume=True)
    assert resumed.resumed_from == 1
    a, b = _weights(whole.checkpoint), _weights(resumed.checkpoint)
    for name, x in a.items():  # the epoch-2 noise continues the saved generator, not a fresh one
        torch.testing.assert_close(x, b[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("defense", ["prune-100", "gauss-0", "blur-3", "lap-", "noise"])
def test_bad_defense_in_the_recipe_raises(defense):
    with pytest.raises(ValueError, match="defense"):
        _fast(defense=defense)


def test_defense_is_canonical_and_recorded_in_the_checkpoint(small_train, tmp_path):
    recipe = _fast(epochs=1, defense="Gaussian-0.001")
    assert recipe.defense == "gauss-1e-3" and TrainRecipe.smoke().defense == "none"
    result = train(recipe, data=small_train, out=tmp_path / "g.pt", seed=0, device="cpu")
    meta = checkpoints.load_checkpoint(result.checkpoint)[1]
    assert meta.defense == result.meta.defense == "gauss-1e-3"
    assert meta.extra["recipe"]["defense"] == "gauss-1e-3"
    payload = torch.load(result.checkpoint, weights_only=True)  # a checkpoint from before the field
    del payload["meta"]["defense"]
    checkpoints.atomic_save(payload, tmp_path / "old.pt")
    assert checkpoints.load_checkpoint(tmp_path / "old.pt")[1].defense == "none"


# --- DP-SGD training (issue 14): per-example clipping and noise on every step ---------------------

def _flat(step: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in step])


def test_dp_sgd_without_clipping_or_noise_is_plain_sgd(small_train, tmp_path):
    """C far above every example's norm and σ = 0: the mean of per-example gradients is the batch gradient."""
    dp = _gradients_at_step(_fast(arch="lenet", epochs=1, defense="dp-1000-0"), small_train, tmp_path / "d.pt")
    plain = _gradients_at_step(_fast(arch="lenet", epochs=1), small_train, tmp_path / "n.pt")
    assert len(dp) == len(plain) == 4
    torch.testing.assert_close(_flat(dp[0]), _flat(plain[0]), rtol=1e-4, atol=1e-6)


def test_dp_sgd_clips_every_example_and_adds_sigma_c_noise(small_train, tmp_path):
    clipped = _gradients_at_step(_fast(arch="lenet", epochs=1, defense="dp-0.01-0"), small_train, tmp_path / "c.pt")
    plain = _gradients_at_step(_fast(arch="lenet", epochs=1), small_train, tmp_path / "n.pt")
    assert _flat(plain[0]).norm() > 0.05  # the plain batch gradient is far above C = 0.01 ...
    for step in clipped:  # ... and the mean of clipped gradients cannot exceed C
        assert _flat(step).norm() <= 0.01 * (1 + 1e-4)
    noisy = _gradients_at_step(_fast(arch="lenet", epochs=1, defense="dp-0.01-2"), small_train, tmp_path / "s.pt")
    noise = _flat(noisy[0]) - _flat(clipped[0])  # the first step: same weights, same batch
    expected = 2 * 0.01 / 25  # σ·C on the sum, divided by the batch of 25
    assert abs(float(noise.std()) / expected - 1) < 0.02 and abs(float(noise.mean())) < 3 * expected / noise.numel() ** 0.5


def test_dp_sgd_training_refuses_batchnorm_models(small_train, tmp_path):
    with pytest.raises(ValueError, match="BatchNorm"):
        train(_fast(epochs=1, defense="dp-1-1"), data=small_train, out=tmp_path / "r.pt", seed=0, device="cpu")


def test_dp_sgd_training_epsilon_matches_opacus_accountant():
    """ε of the recipe's steps: Opacus's RDPAccountant stepped by hand gives the same number."""
    from opacus.accountants import RDPAccountant

    from ats.privacy import training_epsilon, training_steps

    accountant = RDPAccountant()
    steps = training_steps(50_000, 64, 5)
    assert steps == 5 * 782
    accountant.history = [(1.1, 64 / 50_000, steps)]
    assert training_epsilon(1.1, 64, 50_000, 5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-6)
    assert training_epsilon(1.1, 64, 50_000, 0) == 0.0
