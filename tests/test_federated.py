"""Tests for ats.federated: the client's gradient, the gradient defenses, label inference."""
from __future__ import annotations

import math

import pytest
import torch

from ats.federated import (DEFENSES, ClientSecrets, Defense, SharedUpdate, client_update, infer_labels,
                           loss_gradients, parse_defense)
from ats.models import build_model
from ats.policy import Policy
from ats.runtime import make_generator


@pytest.fixture(scope="module")
def lenet():
    return build_model("lenet", 100, seed=0).eval()


def test_half_ce_is_half_of_ce(lenet, image_batch):
    x, y = image_batch[0][:2], image_batch[1][:2]
    half = loss_gradients(lenet, x, y, loss="half-ce")
    full = loss_gradients(lenet, x, y, loss="ce")
    assert len(half) == len(list(lenet.parameters()))
    for h, f in zip(half, full):
        assert torch.allclose(2 * h, f, atol=1e-7)
    assert any(f.abs().max() > 0 for f in full)


def test_joint_gradient_matches_autograd(lenet, image_batch):
    x, y = image_batch[0][:3], image_batch[1][:3]
    lenet.zero_grad()
    torch.nn.functional.cross_entropy(lenet(x), y).backward()
    for g, p in zip(loss_gradients(lenet, x, y, loss="ce"), lenet.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_training_mode_gradient_matches_autograd_and_updates_batchnorm(image_batch):
    x, y = image_batch[0][:4], image_batch[1][:4]
    ours, reference = build_model("resnet20", 100, seed=0), build_model("resnet20", 100, seed=0)
    gradients = loss_gradients(ours, x, y, loss="ce")
    torch.nn.functional.cross_entropy(reference(x), y).backward()
    for g, p in zip(gradients, reference.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)
    assert torch.allclose(ours.bn1.running_mean, reference.bn1.running_mean)
    assert ours.bn1.running_mean.abs().sum() > 0


def test_per_example_equals_separate_calls(image_batch):
    model = build_model("resnet20", 100, seed=0).eval()
    x, y = image_batch[0][:3], image_batch[1][:3]
    update = client_update(model, x, y, per_example=True).shared
    assert update.per_example and update.batch_size == 3
    for i in range(3):
        single = client_update(model, x[i:i + 1], y[i:i + 1]).shared
        for batched, one, (name, p) in zip(update.gradients, single.gradients, model.named_parameters()):
            assert batched.shape == (3, *p.shape)
            assert torch.allclose(batched[i], one, atol=1e-6, rtol=1e-4), name


def test_shared_update_contents(lenet, image_batch):
    x, y = image_batch[0][:2], image_batch[1][:2]
    update, private = client_update(lenet, x, y)
    assert isinstance(update, SharedUpdate) and isinstance(private, ClientSecrets)
    assert update.names == tuple(n for n, _ in lenet.named_parameters())
    assert private.policy == Policy.none() and update.defense == "none" and update.loss == "half-ce"
    assert torch.equal(private.transformed, x)  # no policy: not even crop/flip
    assert torch.equal(update.labels, y) and torch.equal(private.labels, y)
    assert update.image_shape == (3, 32, 32) and not private.crop_flip
    assert not any(g.requires_grad for g in update.gradients)
    moved = update.to("cpu")
    assert moved.gradients[0].device.type == "cpu" and moved.batch_size == 2


def test_labels_stay_private_unless_shared(lenet, image_batch):
    x, y = image_batch[0][:2], image_batch[1][:2]
    update, private = client_update(lenet, x, y, share_labels=False)
    assert update.labels is None and torch.equal(private.labels, y)
    assert update.to("cpu").labels is None
    assert torch.equal(infer_labels(update, lenet), infer_labels(client_update(lenet, x, y).shared, lenet))


def test_no_policy_is_spelled_policy_none(lenet, image_batch):
    x, y = image_batch[0][:1], image_batch[1][:1]
    with pytest.raises(ValueError, match=r"Policy\.none\(\)"):
        client_update(lenet, x, y, None)


def test_per_example_refuses_batchnorm_in_training_mode(image_batch):
    model = build_model("resnet20", 100, seed=0).train()
    with pytest.raises(ValueError, match="eval"):
        client_update(model, image_batch[0][:2], image_batch[1][:2], per_example=True)


@pytest.mark.parametrize(("x", "y", "message"), [
    (torch.rand(2, 3, 32, 32) + 1, torch.tensor([0, 1]), r"\[0, 1\]"),
    (torch.rand(3, 32, 32), torch.tensor([0]), "B, C, H, W"),
    (torch.rand(2, 3, 32, 32), torch.tensor([0]), "B, C, H, W"),
])
def test_client_rejects_bad_images(lenet, x, y, message):
    with pytest.raises(ValueError, match=message):
        client_update(lenet, x, y)


def test_unknown_loss(lenet):
    with pytest.raises(ValueError, match="half-ce"):
        loss_gradients(lenet, torch.rand(1, 3, 32, 32), torch.tensor([0]), loss="mse")


# --- defenses --------------------------------------------------------------------------------

@pytest.mark.parametrize("text", DEFENSES + ("prune-99.5", "lap-0.5", "gauss-2"))
def test_defense_strings_round_trip(text):
    defense = parse_defense(text)
    assert str(defense) == text
    assert parse_defense(str(defense)) == defense


@pytest.mark.parametrize(("text", "expected"), [
    ("gaussian-1e-3", Defense("gauss", 1e-3)), ("laplace-1e-2", Defense("lap", 1e-2)),
    ("Laplacian-0.001", Defense("lap", 1e-3)), (" prune-70 ", Defense("prune", 70.0)), (None, Defense()),
])
def test_defense_aliases(text, expected):
    assert parse_defense(text) == expected


@pytest.mark.parametrize("text", ["prune-100", "prune-0", "gauss-abc", "gauss--1", "foo-1", "gauss-nan", "lap-inf",
                                  "prune", ""])
def test_bad_defense_strings(text):
    with pytest.raises(ValueError, match="accepted: 'none', 'prune-P'"):
        parse_defense(text)


@pytest.mark.parametrize("p", [70, 95, 99])
def test_prune_zeroes_p_percent_of_each_tensor(p, device):
    generator = make_generator(0, device)
    gradients = (torch.randn(50, 40, generator=generator, device=device),
                 torch.randn(7, generator=generator, device=device))
    pruned = parse_defense(f"prune-{p}").apply(gradients, generator)
    for g, q in zip(gradients, pruned):
        k = math.floor(p * g.numel() / 100)
        assert int((q == 0).sum()) == k
        kept = q != 0
        assert torch.equal(q[kept], g[kept])  # survivors untouched
        if k < g.numel():
            assert g[~kept].abs().max() <= g[kept].abs().min()  # the smallest went


def test_prune_per_example_counts_each_example(device):
    g = torch.randn(4, 10, 10, device=device)
    g[0] *= 100  # a loud example must not protect its entries at the others' expense
    pruned = Defense("prune", 70).apply((g,), None, per_example=True)[0]
    assert ((pruned == 0).flatten(1).sum(1) == 70).all()


@pytest.mark.parametrize(("text", "std"), [("gauss-1e-2", 1e-2), ("lap-1e-2", math.sqrt(2) * 1e-2)])
def test_noise_has_the_declared_scale(text, std, device):
    gradients = (torch.zeros(200, 100, device=device), torch.zeros(50, device=device))
    noisy = parse_defense(text).apply(gradients, make_generator(1, device))
    noise = torch.cat([n.flatten() for n in noisy])
    assert noise.mean().abs() < 1e-3
    assert noise.std().item() == pytest.approx(std, rel=0.03)
    again = parse_defense(text).apply(gradients, make_generator(1, device))
    assert all(torch.equal(a, b) for a, b in zip(noisy, again))  # randomness only from the generator


def test_laplace_noise_is_heavier_tailed_than_gauss():
    zeros = (torch.zeros(100_000),)
    lap = Defense("lap", 1.0).apply(zeros, make_generator(0))[0]
    assert lap.abs().mean().item() == pytest.approx(1.0, rel=0.02)  # E|Laplace(0, 1)| = 1
    kurtosis = (lap ** 4).mean() / (lap ** 2).mean() ** 2
    assert kurtosis.item() == pytest.approx(6.0, rel=0.15)


def test_noise_needs_a_generator():
    with pytest.raises(ValueError, match="Generator"):
        Defense("gauss", 1e-3).apply((torch.zeros(3),), None)


def test_client_applies_the_defense(lenet, image_batch):
    x, y = image_batch[0][:1], image_batch[1][:1]
    clean = client_update(lenet, x, y).shared
    pruned = client_update(lenet, x, y, defense="prune-95").shared
    noisy = client_update(lenet, x, y, defense="gauss-1e-2", generator=make_generator(0)).shared
    assert pruned.defense == "prune-95" and noisy.defense == "gauss-1e-2"
    zeros = sum(int((g == 0).sum()) for g in pruned.gradients) / sum(g.numel() for g in pruned.gradients)
    assert zeros == pytest.approx(0.95, abs=0.01)
    difference = torch.cat([(n - c).flatten() for n, c in zip(noisy.gradients, clean.gradients)])
    assert difference.std().item() == pytest.approx(1e-2, rel=0.05)


# --- label inference -------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["lenet", "resnet20"])
def test_idlg_recovers_single_labels(arch, image_batch):
    model = build_model(arch, 100, seed=0).eval()
    x, y = image_batch
    for i in range(6):
        update = client_update(model, x[i:i + 1], y[i:i + 1]).shared
        assert infer_labels(update, model).tolist() == [int(y[i])]
    per_example = client_update(model, x[:6], y[:6], per_example=True).shared
    assert torch.equal(infer_labels(per_example, model), y[:6])


def test_idlg_without_a_bias_uses_the_weight_rows(image_batch):
    model = build_model("lenet", 100, seed=0).eval()
    model.fc.bias = None  # features after a sigmoid are positive: the weight-row rule applies
    x, y = image_batch
    update = client_update(model, x[:5], y[:5], per_example=True).shared
    assert torch.equal(infer_labels(update, model), y[:5])


def test_joint_update_recovers_distinct_labels(image_batch):
    model = build_model("resnet20", 100, seed=0).eval()
    x, y = image_batch
    keep = [i for i in range(len(y)) if int(y[i]) not in y[:i].tolist()][:4]  # distinct labels
    update = client_update(model, x[keep], y[keep]).shared
    inferred = infer_labels(update, model)
    assert inferred.shape == (4,)
    assert sorted(inferred.tolist()) == sorted(y[keep].tolist())


# --- policies --------------------------------------------------------------------------------

def test_client_transforms_with_the_policy(lenet, image_batch):
    from ats.policy import parse_policy

    x, y = image_batch[0][:3], image_batch[1][:3]
    update, private = client_update(lenet, x, y, "3-1-7", crop_flip=True, generator=make_generator(5))
    assert str(private.policy) == "3-1-7" and private.crop_flip
    expected = parse_policy("3-1-7").transform(x, make_generator(5), crop_flip=True)
    assert torch.equal(private.transformed, expected)
    assert not torch.equal(private.transformed, x)
    for g, e in zip(update.gradients, loss_gradients(lenet, expected, y)):
        assert torch.allclose(g, e, atol=1e-7)
    again = client_update(lenet, x, y, parse_policy("3-1-7"), crop_flip=True, generator=make_generator(5)).shared
    assert all(torch.equal(a, b) for a, b in zip(update.gradients, again.gradients))


def test_crop_flip_modes(lenet, image_batch):
    x, y = image_batch[0][:4], image_batch[1][:4]
    plain = client_update(lenet, x, y, "none", generator=make_generator(0), crop_flip=False).private
    assert torch.equal(plain.transformed, x)
    cropped = client_update(lenet, x, y, Policy.none(), generator=make_generator(0), crop_flip=True).private
    assert cropped.policy == Policy.none() and not torch.equal(cropped.transformed, x)


def test_policy_needs_a_generator(lenet, image_batch):
    with pytest.raises(ValueError, match="Generator"):
        client_update(lenet, image_batch[0][:1], image_batch[1][:1], "3-1-7")
