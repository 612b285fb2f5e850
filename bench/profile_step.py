"""Where an attack step's time goes: operator profile, FLOPs against this machine's FLOP/s, torch.compile.

For one Inverting Gradients step (Adam on the cosine cost) and one iDLG L-BFGS step (up to 20
gradient evaluations), at 1 × 1 and 8 × 4 (images × restarts): the operators that dominate
(`torch.profiler`, self time), the step's floating-point work (`torch.utils.flop_counter`: the
forward, the backward with `create_graph=True` and the double backward) divided by its measured
time, against a float32 matrix product's FLOP/s on the same machine: the rough compute limit.
`--compile` also tries `torch.compile` on the one-candidate cost-and-gradient function and reports
its first-call time and its steady step time (or why it fell back). The findings are in
`bench/profile.md`.

    python bench/profile_step.py                       # ResNet20 (IG), LeNet (iDLG)
    python bench/profile_step.py --compile --top 8
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from ats import attacks, data, models
from ats.federated import client_update
from ats.objective import Problem
from ats.optim import make_stepper
from ats.runtime import describe_device, make_generator


def setup(arch: str, preset: str, images: int, restarts: int):
    model = models.build_model(arch, 100, seed=0).eval()
    x, y = data.attack_images(images).batch(list(range(images)))
    shared = client_update(model, x, y, per_example=True).shared
    config = replace(attacks.AttackConfig.preset(preset), restarts=restarts, iterations=1000)
    problem = Problem.build(model, shared, config, joint=False)
    z = problem.initial(make_generator(1), None)
    return problem, config, z


def matmul_flops(seconds: float = 1.0, n: int = 1024) -> float:
    """FLOP/s of a float32 n×n matrix product on this machine: the practical peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    count, begun = 0, time.perf_counter()
    while time.perf_counter() - begun < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - begun)


def timed(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        begun = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - begun)
    return best


def report(arch: str, preset: str, images: int, restarts: int, peak: float, top: int, repeats: int) -> None:
    problem, config, z = setup(arch, preset, images, restarts)
    stepper = make_stepper(problem, config, z)
    n = images * restarts
    # FLOPs of one candidate through plain autograd, times N: under vmap the convolutions run
    # grouped, and FlopCounterMode counts a grouped convolution_backward as if ungrouped (N times
    # too much per candidate: 3.2 instead of 0.66 GFLOP at N = 32 on ResNet20), though its time
    # per candidate falls with N
    counter = FlopCounterMode(display=False)
    with counter:
        problem.costs_and_grads(z, rows=torch.tensor([0]))
    flops_eval = counter.get_total_flops() * n
    seconds_eval = timed(lambda: problem.costs_and_grads(z), repeats)
    counting = {"n": 0}
    original = problem.costs_and_grads

    def counted(*args, **kwargs):
        counting["n"] += 1
        return original(*args, **kwargs)

    problem.costs_and_grads = counted
    counting["n"] = 0
    seconds_step = timed(lambda: stepper.step(1), repeats)
    evaluations = counting["n"] / (repeats + 1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        stepper.step(1)
    print(f"\n### {arch}, {config.name}, {images} × {restarts} (N = {n})\n")
    print(f"- one evaluation of all N costs and gradients: {1000 * seconds_eval:.1f} ms, "
          f"{flops_eval / 1e9:.3f} GFLOP -> {flops_eval / seconds_eval / 1e9:.1f} GFLOP/s "
          f"({100 * flops_eval / seconds_eval / peak:.0f} % of the matrix-product peak)")
    print(f"- one step: {1000 * seconds_step:.1f} ms, {evaluations:.1f} evaluations; "
          f"evaluations are {100 * min(1.0, evaluations * seconds_eval / seconds_step):.0f} % of it")
    print(f"- FLOPs by operator: " + ", ".join(f"{str(op).split('.')[-1]} {f * n / flops_eval:.0%}" for op, f in
                                             sorted(counter.get_flop_counts()["Global"].items(),
                                                    key=lambda kv: -kv[1])[:5]))
    print("\n```")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40))
    print("```")


def try_compile(arch: str, repeats: int) -> None:
    """torch.compile on the one-candidate cost and gradient; its first call and steady time."""
    problem, config, z = setup(arch, "ig", 1, 1)
    eager = timed(lambda: problem.costs_and_grads(z), repeats)
    print(f"\n### torch.compile, {arch}, one candidate\n")
    print(f"- eager: {1000 * eager:.1f} ms per evaluation")
    for mode in ("default",):
        compiled = torch.compile(problem.costs_and_grads, mode=mode)
        try:
            begun = time.perf_counter()
            cost, grad = compiled(z)
            first = time.perf_counter() - begun
            ref_cost, ref_grad = problem.costs_and_grads(z)
            agree = float((grad - ref_grad).abs().max() / ref_grad.abs().max())
            steady = timed(lambda: compiled(z), repeats)
            print(f"- compiled ({mode}): first call {first:.1f} s, then {1000 * steady:.1f} ms per evaluation "
                  f"({eager / steady:.2f}× eager), gradient agrees to {agree:.1e} (relative)")
        except Exception as error:  # noqa: BLE001 - reported, not hidden: compile is optional
            print(f"- compiled ({mode}) failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--top", type=int, default=10, help="operators listed per profile")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also try torch.compile")
    args = p.parse_args()
    peak = matmul_flops()
    print(f"{describe_device(torch.device('cpu'))}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"float32 1024² matrix product: {peak / 1e9:.1f} GFLOP/s")
    for arch, preset in (("resnet20", "ig"), ("lenet", "idlg")):
        for images, restarts in ((1, 1), (8, 4)):
            report(arch, preset, images, restarts, peak, args.top, args.repeats)
    if args.compile:
        try_compile("resnet20", args.repeats)


if __name__ == "__main__":
    main()
