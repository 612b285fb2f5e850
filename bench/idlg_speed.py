"""Where iDLG's time goes: the batched L-BFGS engine against torch's own L-BFGS, one image at a time.

Both run in this process on the same model, gradients and starting points: the batched engine
(`ats.attacks.reconstruct`, one `vmap` over the images, `ats.optim.BatchedLBFGS`) and DLG's
plain loop (`torch.optim.LBFGS` without line search on one image, the L2 gradient distance by
autograd's double backward). One L-BFGS iteration is up to 20 evaluations of the cost and its
gradient (torch's `max_iter`), so an iDLG cell of 32 images × 100 iterations is up to 64,000
image-evaluations: per image and iteration it costs ~20× what one Adam step does. Prints, per
batch size, the seconds of both, their ratio, the evaluations each made, and the time per
image-evaluation.

    python bench/idlg_speed.py --images 1 8 32 --iterations 10
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from torch import nn

from ats import attacks, data, models
from ats.federated import client_update
from ats.models import input_stats
from ats.objective import Problem
from ats.runtime import describe_device, make_generator


def sequential(model: nn.Module, target: tuple, label: torch.Tensor, init: torch.Tensor,
               iterations: int) -> tuple[torch.Tensor, int]:
    """DLG's loop on one image (1, C, H, W in normalized space): the final image and the evaluations made."""
    mean, std = input_stats(model)
    params = list(model.parameters())
    x = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=1.0, max_iter=20, history_size=100, line_search_fn=None)
    calls = 0

    def closure() -> torch.Tensor:
        nonlocal calls
        calls += 1
        optimizer.zero_grad()
        loss = 0.5 * nn.functional.cross_entropy(model(x * std + mean), label)
        trial = torch.autograd.grad(loss, params, create_graph=True)
        cost = sum((a - b).pow(2).sum() for a, b in zip(trial, target))
        cost.backward()
        return cost

    for _ in range(iterations):
        optimizer.step(closure)
    return x.detach(), calls


class Counting(Problem):
    """A Problem that counts its batched evaluations."""

    calls = 0

    def costs_and_grads(self, z, with_tv=True, rows=None):
        Counting.calls += 1
        return super().costs_and_grads(z, with_tv, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = models.build_model("lenet", num_classes=100).eval()
    test = data.load_dataset("cifar100", "test")
    config = replace(attacks.AttackConfig.idlg(), iterations=args.iterations)
    print(f"iDLG on an untrained LeNet, {args.iterations} iterations, {describe_device(torch.device('cpu'))}, "
          f"{torch.get_num_threads()} threads")
    print("images | batched s | sequential s | sequential / batched | evaluations (batched × images, sequential) "
          "| ms per image-evaluation: batched, sequential")
    import ats.attacks as engine
    engine_problem = engine.Problem
    for n in args.images:
        x, y = test.images[:n].float() / 255, test.labels[:n]
        shared, _ = client_update(model, x, y, "none", "none", crop_flip=False, per_example=True)
        mean, std = input_stats(model)
        init = torch.randn(n, 3, 32, 32, generator=make_generator(1))
        engine.Problem, Counting.calls = Counting, 0
        try:
            begun = time.perf_counter()
            attacks.reconstruct(model, shared, config, generator=make_generator(0), init=init)
            batched = time.perf_counter() - begun
        finally:
            engine.Problem = engine_problem
        evaluations = Counting.calls
        begun, calls = time.perf_counter(), 0
        for i in range(n):
            target = tuple(g[i] for g in shared.gradients)
            _, made = sequential(model, target, y[i : i + 1], init[i : i + 1], args.iterations)
            calls += made
        plain = time.perf_counter() - begun
        print(f"{n} | {batched:.2f} | {plain:.2f} | {plain / batched:.2f} | {evaluations} × {n}, {calls} "
              f"| {1000 * batched / max(1, evaluations * n):.3f}, {1000 * plain / max(1, calls):.3f}")


if __name__ == "__main__":
    main()
