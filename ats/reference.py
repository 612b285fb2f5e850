"""Plain, one-at-a-time reference implementations: the oracle for tests, the baseline for `bench/`.

`invert_gradient_sequential` is Inverting Gradients' own loop (Geiping et al. 2020,
`inversefed/reconstruction_algorithms.py`, as configured by ATS): one image, one restart, ordinary
autograd with `create_graph=True`, no `torch.func`. The batched engine in `ats.attacks` must agree
with it; `bench/attack_speed.py` times the two in the same process.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ats.attacks import AttackConfig, _input_stats, lr_milestones, total_variation


def invert_gradient_sequential(model: nn.Module, target: tuple[Tensor, ...], label: Tensor, init: Tensor,
                               config: AttackConfig, *, half: bool = True) -> tuple[Tensor, float]:
    """Attack one gradient with Adam/SGD on a cosine, L2 or L1 cost, known label.

    `init` is the starting image in normalized space (1, C, H, W). Returns the final image in
    pixel space (1, C, H, W) and its gradient-matching cost without TV.
    """
    if config.optimizer == "lbfgs" or config.labels == "joint":
        raise ValueError("the sequential reference covers Adam and SGD with known labels")
    model.eval()
    device = init.device
    mean, std = _input_stats(model, device)
    params = [p for p in model.parameters()]
    x = init.detach().clone().requires_grad_(True)
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam([x], lr=config.lr)
    else:
        optimizer = torch.optim.SGD([x], lr=config.lr, momentum=config.momentum, nesterov=True)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=lr_milestones(config), gamma=0.1)
    low, high = (0 - mean) / std, (1 - mean) / std

    def cost_of(x: Tensor, create_graph: bool) -> Tensor:
        loss = nn.functional.cross_entropy(model(x * std + mean), label)
        loss = 0.5 * loss if half else loss
        trial = torch.autograd.grad(loss, params, create_graph=create_graph)
        if config.cost == "cosine":
            dot = sum((a * b).sum() for a, b in zip(trial, target))
            na = sum(a.pow(2).sum() for a in trial).sqrt()
            nb = sum(b.pow(2).sum() for b in target).sqrt()
            return 1 - dot / (na * nb)
        if config.cost == "l2":
            return sum((a - b).pow(2).sum() for a, b in zip(trial, target))
        return sum((a - b).abs().sum() for a, b in zip(trial, target))

    for _ in range(config.iterations):
        optimizer.zero_grad()
        cost = cost_of(x, create_graph=True)
        if config.tv > 0:
            cost = cost + config.tv * total_variation(x)
        (grad,) = torch.autograd.grad(cost, [x])
        x.grad = grad.sign() if config.signed else grad
        optimizer.step()
        scheduler.step()
        if config.boxed:
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))
    final = float(cost_of(x, create_graph=False))
    return (x.detach() * std + mean).clamp(0, 1), final
