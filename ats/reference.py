"""Plain, one-at-a-time reference implementations: the oracle for tests, the baseline for `bench/`.

`invert_gradient_sequential` is Inverting Gradients' own loop (Geiping et al. 2020,
`inversefed/reconstruction_algorithms.py`, as configured by ATS): one image, one restart, ordinary
autograd with `create_graph=True`, no `torch.func`; with `config.aware`, the same loop with the
policy-aware attacker's learned shift. `invert_lbfgs_sequential` is iDLG's loop on
`torch.optim.LBFGS`. The batched engine in `ats.attacks` must agree with them;
`bench/attack_speed.py` times them against it in the same process.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ats.attacks import AttackConfig
from ats.aware import warp
from ats.models import input_stats
from ats.objective import total_variation
from ats.optim import lr_milestones


def invert_gradient_sequential(model: nn.Module, target: tuple[Tensor, ...], label: Tensor, init: Tensor,
                               config: AttackConfig, *, half: bool = True, start: Tensor | None = None,
                               flip: bool = False, reach: Tensor | None = None) -> tuple[Tensor, float]:
    """Attack one gradient with Adam/SGD on a cosine, L2 or L1 cost, known label.

    `init` is the starting image in normalized space (1, C, H, W). Returns the final image in
    pixel space (1, C, H, W) and its gradient-matching cost without TV. With `config.aware`, the
    policy-aware attacker: the shift (2,) in pixels is learned too, from `start`, under the
    assumed `flip`, clamped to ±`reach` (what `ats.aware.shift_hypotheses` gives each restart).
    """
    if config.optimizer == "lbfgs" or config.labels == "joint":
        raise ValueError("the sequential reference covers Adam and SGD with known labels")
    if config.aware and (start is None or reach is None):
        raise ValueError("the aware reference needs the restart's starting shift and the reach")
    model.eval()
    device = init.device
    mean, std = (t.to(device) for t in input_stats(model))  # (1, C, 1, 1)
    params = [p for p in model.parameters()]
    x = init.detach().clone().requires_grad_(True)
    variables = [x]
    if config.aware:
        shift = start.detach().to(device, torch.float32).clone().requires_grad_(True)
        reach, flip_t = reach.to(device), torch.tensor(flip, device=device)
        variables.append(shift)
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(variables, lr=config.lr)
    else:
        optimizer = torch.optim.SGD(variables, lr=config.lr, momentum=config.momentum, nesterov=True)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=lr_milestones(config), gamma=0.1)
    low, high = (0 - mean) / std, (1 - mean) / std

    def cost_of(x: Tensor, create_graph: bool) -> Tensor:
        pixels = x * std + mean
        if config.aware:
            pixels = warp(pixels, shift, flip_t)
        loss = nn.functional.cross_entropy(model(pixels), label)
        loss = 0.5 * loss if half else loss
        trial = torch.autograd.grad(loss, params, create_graph=create_graph)
        return _distance(config.cost, trial, target)

    for _ in range(config.iterations):
        optimizer.zero_grad()
        cost = cost_of(x, create_graph=True)
        if config.tv > 0:
            cost = cost + config.tv * total_variation(x)
        grads = torch.autograd.grad(cost, variables)
        for variable, grad in zip(variables, grads):
            variable.grad = grad.sign() if config.signed else grad
        optimizer.step()
        scheduler.step()
        if config.boxed:
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))
                if config.aware:
                    shift.copy_(torch.maximum(torch.minimum(shift, reach), -reach))
    final = float(cost_of(x, create_graph=False))
    return (x.detach() * std + mean).clamp(0, 1), final


def invert_lbfgs_sequential(model: nn.Module, target: tuple[Tensor, ...], label: Tensor, init: Tensor,
                            config: AttackConfig, *, half: bool = True) -> tuple[Tensor, float, int]:
    """iDLG's loop: `torch.optim.LBFGS` on one image, known (or already inferred) label.

    As in DLG's code: the closure computes the trial gradient with `create_graph=True`, the L2 (or
    cosine) distance and its gradient with respect to the image only; one iteration is one `LBFGS.step(closure)` of up to
    `config.inner` evaluations, with `config.history` pairs and no line search. `init` is in
    normalized space (1, C, H, W). Returns the image in pixel space, the final cost and the
    number of closure evaluations.
    """
    if config.optimizer != "lbfgs" or config.labels == "joint" or config.aware or config.tv > 0:
        raise ValueError("the L-BFGS reference covers iDLG: L-BFGS, one image, a given label, no TV")
    model.eval()
    mean, std = (t.to(init.device) for t in input_stats(model))
    params = [p for p in model.parameters()]
    x = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=config.lr, max_iter=config.inner, history_size=config.history)
    evaluations = 0

    def cost_of(create_graph: bool) -> Tensor:
        loss = nn.functional.cross_entropy(model(x * std + mean), label)
        loss = 0.5 * loss if half else loss
        trial = torch.autograd.grad(loss, params, create_graph=create_graph)
        return _distance(config.cost, trial, target)

    def closure() -> Tensor:
        nonlocal evaluations
        evaluations += 1
        cost = cost_of(create_graph=True)
        (x.grad,) = torch.autograd.grad(cost, [x])  # not cost.backward(): no parameter gradients
        return cost

    for _ in range(config.iterations):
        optimizer.step(closure)
    final = float(cost_of(create_graph=False))
    return (x.detach() * std + mean).clamp(0, 1), final, evaluations


def _distance(cost: str, trial: tuple[Tensor, ...], target: tuple[Tensor, ...]) -> Tensor:
    """The gradient distance over all tensors at once: 1 − cosine, squared L2 or L1."""
    if cost == "cosine":
        dot = sum((a * b).sum() for a, b in zip(trial, target))
        na = sum(a.pow(2).sum() for a in trial).sqrt()
        nb = sum(b.pow(2).sum() for b in target).sqrt()
        return 1 - dot / (na * nb)
    if cost == "l2":
        return sum((a - b).pow(2).sum() for a, b in zip(trial, target))
    return sum((a - b).abs().sum() for a, b in zip(trial, target))


from typing import TYPE_CHECKING  # noqa: E402  (appended section: S_pri)

if TYPE_CHECKING:
    from ats.policy import Hybrid, Policy
    from ats.scores import PrivacyScore, ScoreConfig


def privacy_score_sequential(model: nn.Module, policy: Policy | Hybrid | str, x: Tensor, y: Tensor, *,
                             generator: torch.Generator, config: ScoreConfig | None = None) -> PrivacyScore:
    """S_pri as the original computes it: per image, one `torch.autograd.grad` per path point.

    Same inputs as `ats.scores.privacy_score` (`privacy_inputs` with the same generator), the
    reference gradient at T(x), then for k = 0..K the gradient at x_k = (k/K)·T(x) + (1 − k/K)·z,
    `F.cosine_similarity` per parameter tensor, the mean over tensors, and the trapezoid area.
    """
    from ats.federated import LOSSES
    from ats.policy import as_policy
    from ats.scores import PrivacyScore, ScoreConfig, _check_batch, privacy_inputs

    config = config or ScoreConfig()
    _check_batch(x, y)
    policy = as_policy(policy)
    images, starts = privacy_inputs(policy, x, generator, semantics=config.semantics)
    criterion = LOSSES[config.loss]
    params = list(model.parameters())
    bins = config.points - 1
    training = model.training
    model.eval()
    curves, per_image = [], []
    for image, start, label in zip(images, starts, y):
        label = label[None]
        target = torch.autograd.grad(criterion(model(image[None]), label), params)
        curve = []
        for k in range(bins + 1):
            point = (k / bins) * image + (1 - k / bins) * start
            trial = torch.autograd.grad(criterion(model(point[None]), label), params)
            cosines = [nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0, eps=1e-30)
                       for a, b in zip(trial, target)]
            curve.append(float(sum(cosines)) / len(cosines))
        area = sum((curve[k - 1] + curve[k]) / 2 for k in range(1, bins + 1)) / bins
        curves.append(curve)
        per_image.append(area)
    model.train(training)
    per_image = torch.tensor(per_image, dtype=torch.float64)
    return PrivacyScore(str(policy), float(per_image.mean()), per_image, torch.tensor(curves, dtype=torch.float64),
                        y.detach().cpu())
