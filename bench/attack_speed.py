"""Batched vs sequential attacks: B images × R restarts in one `torch.func` call, vs one at a time.

Both run in this process on the same model, gradients and starting points: the batched engine
(`ats.attacks.reconstruct`) and the plain autograd loop of Inverting Gradients
(`ats.reference.invert_gradient_sequential`). Prints the speed ratio and how well they agree.

    python bench/attack_speed.py --model resnet20 --images 8 --restarts 4 --iterations 50
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from ats import attacks, data, models
from ats.federated import client_update
from ats.metrics import psnr
from ats.reference import invert_gradient_sequential
from ats.runtime import describe_device, make_generator, pick_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--restarts", type=int, default=4)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    device = pick_device(args.device)
    model = models.build_model(args.model, 100, seed=args.seed).to(device).eval()
    x, y = data.load_dataset("cifar100", "test").batch(list(range(args.images)))
    x, y = x.to(device), y.to(device)
    update = client_update(model, x, y, per_example=True).shared
    config = replace(attacks.AttackConfig.ig(), iterations=args.iterations, restarts=args.restarts)
    n = args.images * args.restarts
    init = torch.randn(n, 3, 32, 32, generator=make_generator(args.seed, device), device=device)

    attacks.reconstruct(model, update, replace(config, iterations=2), init=init)  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    batched = attacks.reconstruct(model, update, config, init=init, )
    sync()
    t_batched = time.perf_counter() - start

    # The same N attacks one at a time, restarts chosen by final cost as the batched engine does.
    single = replace(config, restarts=1)
    start = time.perf_counter()
    best = []
    for b in range(args.images):
        target = tuple(g[b] for g in update.gradients)
        runs = [invert_gradient_sequential(model, target, y[b:b + 1], init[b * args.restarts + r][None], single)
                for r in range(args.restarts)]
        best.append(min(runs, key=lambda run: run[1])[0])
    sync()
    t_sequential = time.perf_counter() - start
    sequential = torch.cat(best).cpu()

    # Exactness: without the sign (which turns rounding noise into ±lr steps) the two agree to
    # float precision, step for step.
    exact = replace(config, iterations=5, signed=False, lr=0.01)
    strict = attacks.reconstruct(model, update, replace(exact, restarts=1), init=init[:: args.restarts])
    strict_seq = torch.cat([invert_gradient_sequential(model, tuple(g[b] for g in update.gradients), y[b:b + 1],
                                                       init[b * args.restarts][None], replace(exact, restarts=1))[0]
                            for b in range(args.images)]).cpu()

    p_batched = psnr(batched.images, x.cpu())
    p_sequential = psnr(sequential, x.cpu())
    result = {
        "device": describe_device(device),
        "model": args.model,
        "attacks": f"{args.images} images × {args.restarts} restarts × {args.iterations} iterations",
        "seconds_batched": round(t_batched, 3),
        "seconds_sequential": round(t_sequential, 3),
        "speedup": round(t_sequential / t_batched, 2),
        "psnr_x_batched_mean": round(float(p_batched.mean()), 3),
        "psnr_x_sequential_mean": round(float(p_sequential.mean()), 3),
        "max_abs_psnr_x_difference": round(float((p_batched - p_sequential).abs().max()), 4),
        "max_abs_pixel_difference": round(float((batched.images - sequential).abs().max()), 5),
        "unsigned_5_steps_max_abs_pixel_difference": float(f"{float((strict.images - strict_seq).abs().max()):.2e}"),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value}")


if __name__ == "__main__":
    main()
