"""Per-example gradients by hand (`ats.persample`) against plain autograd, one example at a time,
and the attack's batched path built on them against `vmap`."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import pytest
import torch
from torch import nn

from ats.attacks import AttackConfig
from ats.federated import client_update
from ats.models import build_model
from ats.objective import Problem
import ats.objective
from ats.persample import ConvWeightPerExample, Unsupported, batch_size, per_example_gradients, unsupported


def _trained_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so batch norm's terms are tested."""
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(0.3 * torch.randn(c, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
            with torch.no_grad():
                module.weight.copy_(1 + 0.2 * torch.randn(c, generator=generator))
                module.bias.copy_(0.1 * torch.randn(c, generator=generator))
    return model.eval()


def _per_example_autograd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Each group of k images' mean-loss gradient, one group at a time: (groups, *shape) per parameter."""
    rows = []
    for start in range(0, len(x), k):
        loss = nn.functional.cross_entropy(model(x[start:start + k]), y[start:start + k])
        rows.append(torch.autograd.grad(loss, list(model.parameters())))
    return [torch.stack(g) for g in zip(*rows)]


@pytest.mark.parametrize(("arch", "k"), [("lenet", 1), ("lenet", 2), ("resnet20", 1), ("resnet20", 3), ("convnet-8", 1)])
def test_per_example_gradients_equal_autograd_one_group_at_a_time(arch, k):
    model = _trained_bn(build_model(arch, 10, seed=0))
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (6,), generator=generator)
    expected = _per_example_autograd(model, x, y, k)
    total = lambda out: nn.functional.cross_entropy(out, y, reduction="sum") / k  # noqa: E731
    got = per_example_gradients(model, x, total, groups=6 // k)
    assert len(got) == len(expected) == len(list(model.parameters()))
    for name, g, e in zip(dict(model.named_parameters()), got, expected):
        assert g.shape == e.shape, name
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-5 * float(e.abs().max())), name


def test_conv_weight_per_example_passes_gradcheck():
    """Its backward (two grouped convolutions) is the derivative of its forward: stride, padding,
    dilation and groups of two examples, in float64."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4, 2, 7, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=2, dilation=2).double()
    delta = torch.randn_like(conv(a)).requires_grad_(True)
    args = (2, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    assert torch.autograd.gradcheck(lambda d, x: ConvWeightPerExample.apply(d, x, *args), (delta, a))
    # and it is the weight gradient: ⟨G_group, W⟩ summed equals ∂/∂W of Σ ⟨δ, conv(a, W)⟩
    g = ConvWeightPerExample.apply(delta, a, *args).sum(0)
    (expected,) = torch.autograd.grad((delta * conv(a)).sum(), conv.weight)
    assert torch.allclose(g, expected)


def test_unsupported_names_the_layer_and_the_batched_path_falls_back_to_vmap():
    norm = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), norm=nn.GroupNorm(2, 4), flatten=nn.Flatten(),
                                     fc=nn.Linear(4 * 30 * 30, 10)))
    assert "norm is a GroupNorm" in unsupported(norm)
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    assert "grouped" in unsupported(grouped)
    training = build_model("resnet20", 10, seed=0).train()
    assert "batch statistics" in unsupported(training)
    assert unsupported(training.eval()) is None and unsupported(build_model("lenet", 10)) is None
    with pytest.raises(ValueError, match="GroupNorm"):
        per_example_gradients(norm, torch.rand(2, 3, 32, 32), lambda out: out.sum(), 2)


class _Twice(nn.Module):
    """A layer run twice in one forward pass: outside what the hooks can attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(torch.sigmoid(self.conv(x))).flatten(1))


def test_a_layer_run_twice_is_refused_and_the_attack_uses_vmap_instead():
    model = _Twice()
    with pytest.raises(Unsupported, match="exactly once"):
        per_example_gradients(model, torch.rand(2, 3, 32, 32), lambda out: out.sum(), 2)
    x, y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2])
    update = client_update(model, x, y, per_example=True).shared
    problem = Problem.build(model, update, replace(AttackConfig.ig(), restarts=2), joint=False)
    assert problem.by_hand  # nothing in its layer types says otherwise
    z = problem.initial(torch.Generator().manual_seed(1), None)
    costs, grads = problem.costs_and_grads(z)
    assert not problem.by_hand  # found out on the first evaluation, and `vmap` answered it
    for n in range(4):
        cost, g = problem.costs_and_grads(z, rows=torch.tensor([n]))
        assert torch.allclose(cost, costs[n:n + 1], rtol=1e-5)
        assert torch.allclose(g, grads[n:n + 1], rtol=1e-3, atol=1e-5 * float(grads[n].abs().max()))


@pytest.mark.parametrize(("arch", "preset", "changes", "joint"), [
    ("resnet20", "ig", {}, False),
    ("convnet-8", "ig", {"labels": "joint"}, False),
    ("lenet", "idlg", {}, False),
    ("lenet", "dlg", {}, True),
    ("lenet", "ig", {"cost": "l1"}, True),
])
def test_the_batched_path_agrees_with_vmap(arch, preset, changes, joint, image_batch):
    """Costs and their image gradients through `ats.persample` equal `vmap`'s: cosine, L2 and L1,
    known, inferred and joint labels, one image or a batch per candidate, any subset of rows."""
    model = _trained_bn(build_model(arch, 100, seed=0))
    x, y = image_batch[0][:3], image_batch[1][:3]
    update = client_update(model, x, y, per_example=not joint).shared
    config = replace(AttackConfig.preset(preset), restarts=3, **changes)
    by_hand = Problem.build(model, update, config, joint=joint)
    assert by_hand.by_hand
    with_vmap = replace(by_hand, by_hand=False)
    z = by_hand.initial(torch.Generator().manual_seed(2), None)
    for rows in (None, torch.tensor([2, 0])):
        costs, grads = by_hand.costs_and_grads(z, rows=rows)
        expected_costs, expected_grads = with_vmap.costs_and_grads(z, rows=rows)
        assert torch.allclose(costs, expected_costs, rtol=1e-5, atol=1e-6)
        assert torch.allclose(grads, expected_grads, rtol=1e-3, atol=1e-4 * float(expected_grads.abs().max()))


def test_the_aware_attack_goes_by_hand_and_agrees_with_vmap(image_batch):
    """Each candidate's own shift and flip hypothesis, warped in one batch (`ats.aware.warp`)."""
    model = build_model("lenet", 100, seed=0)
    x, y = image_batch[0][:2], image_batch[1][:2]
    update = client_update(model, x, y, "3-1-7", crop_flip=True, per_example=True,
                           generator=torch.Generator().manual_seed(0)).shared
    by_hand = Problem.build(model, update, replace(AttackConfig.aware_ig(), restarts=4), joint=False,
                            policy="3-1-7", crop_flip=True)
    assert by_hand.by_hand and by_hand.flips.any() and not by_hand.flips.all()
    z = by_hand.initial(torch.Generator().manual_seed(2), None)
    costs, grads = by_hand.costs_and_grads(z)
    expected_costs, expected_grads = replace(by_hand, by_hand=False).costs_and_grads(z)
    assert torch.allclose(costs, expected_costs, rtol=1e-5, atol=1e-6)
    assert torch.allclose(grads, expected_grads, rtol=1e-3, atol=1e-4 * float(expected_grads.abs().max()))
    assert grads[:, -2:].abs().sum() > 0  # the shifts are learned too


def test_fedavg_attacks_keep_vmap(image_batch):
    model = build_model("lenet", 100, seed=0)
    x, y = image_batch[0][:2], image_batch[1][:2]
    fedavg = client_update(model, x, y, local_steps=2).shared
    assert fedavg.local is not None and not Problem.build(model, fedavg, AttackConfig.ig(), joint=True).by_hand


def test_big_models_go_in_chunks_on_a_cpu_with_the_same_results(monkeypatch, image_batch):
    """Chunks keep the largest per-candidate gradient under the budget (glibc's page faults above
    32 MB); they change nothing but the time."""
    import ats.persample

    model = build_model("lenet", 100, seed=0)
    largest = 768 * 100 * 4  # bytes of the classifier's weight
    assert batch_size(model, torch.device("cpu")) == ats.persample.CPU_BUDGET // largest
    assert batch_size(model, torch.device("cuda")) is None  # a GPU's allocator caches; no limit
    x, y = image_batch[0][:3], image_batch[1][:3]
    update = client_update(model, x, y, per_example=True).shared
    problem = Problem.build(model, update, replace(AttackConfig.ig(), restarts=3), joint=False)
    z = problem.initial(torch.Generator().manual_seed(2), None)
    whole = problem.costs_and_grads(z)
    calls = []
    real = ats.objective.Problem._costs_by_hand
    monkeypatch.setattr(ats.objective.Problem, "_costs_by_hand",
                        lambda self, z, *a: (calls.append(len(z)), real(self, z, *a))[1])
    monkeypatch.setattr(ats.persample, "CPU_BUDGET", 2 * largest)  # 2 candidates a call
    chunked = problem.costs_and_grads(z)
    assert calls == [2, 2, 2, 2, 1]  # 9 candidates in 5 nearly equal chunks
    assert torch.allclose(chunked[0], whole[0], rtol=1e-6) and torch.allclose(chunked[1], whole[1], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("path", ["by hand", "vmap", "one candidate", "fedavg"])
def test_costs_alone_equal_the_costs_with_gradients(path, image_batch):
    """`Problem.costs` (one backward pass: the final rescore) gives `costs_and_grads`' costs."""
    model = _trained_bn(build_model("resnet20" if path != "fedavg" else "lenet", 100, seed=0))
    count = 1 if path == "one candidate" else 2
    x, y = image_batch[0][:count], image_batch[1][:count]
    fedavg = path == "fedavg"
    update = client_update(model, x, y, per_example=not fedavg, local_steps=2 if fedavg else 0).shared
    restarts = 1 if path == "one candidate" else 2
    problem = Problem.build(model, update, replace(AttackConfig.ig(), restarts=restarts), joint=fedavg)
    if path == "vmap":
        problem = replace(problem, by_hand=False)
    assert problem.by_hand == (path in ("by hand", "one candidate"))  # (one candidate: plain autograd)
    z = problem.initial(torch.Generator().manual_seed(2), None)
    assert z.shape[0] == (1 if path == "one candidate" else 2 if fedavg else 4)
    for with_tv in (True, False):
        expected, _ = problem.costs_and_grads(z, with_tv=with_tv)
        assert torch.allclose(problem.costs(z, with_tv=with_tv), expected, rtol=1e-5, atol=1e-7)


def test_one_candidate_on_a_wide_model_takes_the_cosine_piece_by_piece_with_the_same_result(monkeypatch,
                                                                                           image_batch):
    """Large tensors (ConvNet): one candidate's cosine goes per tensor (`_CosineRows`), not over the
    concatenated gradient; its cost and image gradient are the concatenated path's."""
    model = _trained_bn(build_model("convnet", 100, seed=0))
    trial = tuple(p.detach() for p in model.parameters())
    assert ats.objective._wide(trial)
    assert not ats.objective._wide(tuple(build_model("resnet20", 10, seed=0).parameters()))
    update = client_update(model, image_batch[0][:1], image_batch[1][:1], per_example=True).shared
    problem = Problem.build(model, update, AttackConfig.ig(), joint=False)
    z = problem.initial(torch.Generator().manual_seed(2), None)
    pieces = []
    real = ats.objective._CosineRows.apply
    monkeypatch.setattr(ats.objective._CosineRows, "apply", lambda *a: (pieces.append(len(a) - 2), real(*a))[1])
    cost, grad = problem.costs_and_grads(z)
    alone = problem.costs(z)
    assert pieces == [len(trial), len(trial)]
    monkeypatch.setattr(ats.objective, "_wide", lambda trial: False)
    expected_cost, expected_grad = problem.costs_and_grads(z)
    assert len(pieces) == 2  # the concatenated path
    # 1 − cos is about 1e-3 here: both lose a few float32 steps of cos ≈ 1 (6e-8 each) to cancellation
    assert torch.allclose(cost, expected_cost, rtol=0, atol=1e-6) and torch.allclose(alone, cost, rtol=1e-6)
    assert torch.allclose(grad, expected_grad, rtol=1e-3, atol=1e-4 * float(expected_grad.abs().max()))
