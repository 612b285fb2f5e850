"""Our attack engine against the plain one-at-a-time loop, per model, attack and size.

For every model, attack and size (B images × R restarts), in this process, on the same model,
gradients and starting points:

* ours: `ats.attacks.reconstruct` on all B·R candidates at once (plain autograd when there is one
  candidate, one `torch.func.vmap` when there are more);
* reference: `ats.reference`'s plain loop run B·R times, one after the other, each image's restart
  picked by its final cost as the engine does: Inverting Gradients' own loop (ig), the same loop
  learning the policy-aware attacker's shift (aware), iDLG's `torch.optim.LBFGS` loop (idlg).

It prints the time per iteration of the whole job (all B·R candidates; the faster of `--repeats`
interleaved runs of each side), the ratio
reference / ours (above 1: ours is faster), the mean PSNR against x of each and their difference,
and, for L-BFGS, the gradient evaluations per candidate. One untrained model (seed 0) per row.

    python bench/attack_speed.py                                   # LeNet and ResNet20, every size
    python bench/attack_speed.py --models resnet20 --sizes 1x1:200 # the one-image figure, 200 steps
    python bench/attack_speed.py --models resnet20-4,convnet --sizes 1x1,8x1 --iterations 5 --json

A size is `BxR` or `BxR:T` (T iterations for that size, overriding `--iterations`). The images are
the CIFAR-100 attack set (`ATS_DATA_DIR`) or, without it, the bundled sample photos.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass, replace

import torch

from ats import attacks, data, models
from ats.aware import shift_hypotheses
from ats.federated import client_update
from ats.metrics import psnr
from ats.reference import invert_gradient_sequential, invert_lbfgs_sequential
from ats.runtime import PRECISIONS, describe_device, make_generator, pick_device, precision

ATTACKS = ("ig", "idlg", "aware")
AWARE_POLICY = "3-1-7"  # translateX 0.45, contrast, translateY 0.10: shifts for the aware attacker to learn
DEFAULT_SIZES = "1x1:200,1x4,8x1,8x4,32x1"


@dataclass(frozen=True)
class Size:
    images: int
    restarts: int
    iterations: int | None  # None: --iterations

    @classmethod
    def parse(cls, text: str) -> Size:
        shape, _, steps = text.partition(":")
        try:
            b, r = (int(v) for v in shape.lower().split("x"))
            t = int(steps) if steps else None
        except ValueError:
            raise SystemExit(f"a size is BxR or BxR:T (images × restarts, iterations), got {text!r}") from None
        if b < 1 or r < 1 or (t is not None and t < 1):
            raise SystemExit(f"sizes must be positive, got {text!r}")
        return cls(b, r, t)


class Counted(attacks.Problem):
    """A Problem that counts the candidate-evaluations it makes (L-BFGS stops candidates early)."""

    evaluations = 0

    def costs_and_grads(self, z, with_tv=True, rows=None):
        Counted.evaluations += z.shape[0] if rows is None else len(rows)
        return super().costs_and_grads(z, with_tv, rows)


def config_for(attack: str, restarts: int, iterations: int) -> attacks.AttackConfig:
    base = {"ig": attacks.AttackConfig.ig, "idlg": attacks.AttackConfig.idlg, "aware": attacks.AttackConfig.aware_ig}
    return replace(base[attack](), iterations=iterations, restarts=restarts)


def run_ours(model, shared, config, init, attack: str, mode: str = "float32") -> tuple[float, torch.Tensor, int]:
    """Seconds, final images (B, 3, H, W) and candidate-evaluations of the batched engine."""
    known = {"policy": AWARE_POLICY, "crop_flip": True} if attack == "aware" else {}
    engine, Counted.evaluations = attacks.Problem, 0
    attacks.Problem = Counted
    try:
        begun = time.perf_counter()
        result = attacks.reconstruct(model, shared, replace(config, precision=mode), init=init, **known)
        _sync(init.device)
        return time.perf_counter() - begun, result.images, Counted.evaluations
    finally:
        attacks.Problem = engine


def run_reference(model, shared, y, config, init, attack: str,
                  images: int | None = None) -> tuple[float, torch.Tensor, int]:
    """The same B·R attacks one at a time with the plain loop; each image keeps its cheapest restart.
    `images`: only the first that many (a warm-up)."""
    single, r = replace(config, restarts=1), config.restarts
    reach, starts, flips = shift_hypotheses(AWARE_POLICY, True, r, init.shape[-1])
    begun, evaluations, best = time.perf_counter(), 0, []
    for b in range(images or shared.batch_size):
        target = tuple(g[b] for g in shared.gradients)
        runs = []
        for k in range(r):
            start = init[b * r + k][None]
            if attack == "idlg":
                image, cost, made = invert_lbfgs_sequential(model, target, y[b : b + 1], start, single)
                evaluations += made
            elif attack == "aware":
                image, cost = invert_gradient_sequential(model, target, y[b : b + 1], start, single, start=starts[k],
                                                         flip=bool(flips[k]), reach=reach)
            else:
                image, cost = invert_gradient_sequential(model, target, y[b : b + 1], start, single)
            runs.append((image, cost))
        best.append(min(runs, key=lambda run: run[1])[0])
    _sync(init.device)
    return time.perf_counter() - begun, torch.cat(best).cpu(), evaluations


def run_reference_exact(*args, **kwargs):
    """`run_reference` in plain float32 (TF32 off), whatever the engine's `--precision`."""
    with precision("float32"):
        return run_reference(*args, **kwargs)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(arch: str, attack: str, size: Size, iterations: int, images, device, seed: int, repeats: int = 1,
            mode: str = "float32") -> dict:
    """One row: ours against the reference at one model, attack and size."""
    model = models.build_model(arch, 100, seed=seed).to(device).eval()
    x, y = images.batch(list(range(size.images)))
    x, y = x.to(device), y.to(device)
    policy = AWARE_POLICY if attack == "aware" else "none"
    shared = client_update(model, x, y, policy, crop_flip=attack == "aware", per_example=True,
                           generator=make_generator(seed)).shared
    steps = size.iterations or iterations
    config = config_for(attack, size.restarts, steps)
    n = size.images * size.restarts
    init = torch.randn(n, 3, *x.shape[-2:], generator=make_generator(seed + 1, device), device=device)
    run_ours(model, shared, replace(config, iterations=1), init, attack, mode)  # warm-up, both
    run_reference_exact(model, shared, y, replace(config, iterations=1), init, attack, images=1)
    t_ours = t_ref = float("inf")
    for _ in range(repeats):  # interleaved, the fastest of each: this machine's noise is ±10 %
        seconds, ours, evals_ours = run_ours(model, shared, config, init, attack, mode)
        t_ours = min(t_ours, seconds)
        seconds, reference, evals_ref = run_reference_exact(model, shared, y, config, init, attack)
        t_ref = min(t_ref, seconds)
    p_ours, p_ref = psnr(ours, x.cpu()), psnr(reference, x.cpu())
    row = {
        "model": arch,
        "attack": attack,
        "images": size.images,
        "restarts": size.restarts,
        "iterations": steps,
        "repeats": repeats,
        "precision": mode,
        "ours_ms": round(1000 * t_ours / steps, 2),
        "reference_ms": round(1000 * t_ref / steps, 2),
        "ratio": round(t_ref / t_ours, 2),
        "psnr_delta": round(float(p_ours.mean() - p_ref.mean()), 3),
        "psnr_ours": round(float(p_ours.mean()), 2),
        "psnr_reference": round(float(p_ref.mean()), 2),
        "max_abs_psnr_difference": round(float((p_ours - p_ref).abs().max()), 3),
    }
    if attack == "idlg":  # L-BFGS stops candidates early, at chaotic moments: compare per evaluation too
        row["evaluations_ours"] = round(evals_ours / n, 1)
        row["evaluations_reference"] = round(evals_ref / n, 1)
        row["ours_ms_per_evaluation"] = round(1000 * t_ours / max(1, evals_ours), 3)
        row["reference_ms_per_evaluation"] = round(1000 * t_ref / max(1, evals_ref), 3)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lenet,resnet20", help="comma list: lenet, resnet20, resnet20-4, convnet, ...")
    p.add_argument("--attacks", default="ig,idlg,aware", help=f"comma list of {', '.join(ATTACKS)}")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma list of BxR or BxR:T (images × restarts[:iterations])")
    p.add_argument("--iterations", type=int, default=20, help="iterations for sizes without their own")
    p.add_argument("--idlg-models", default="lenet", help="models iDLG runs on (its sigmoid LeNet is DLG's own)")
    p.add_argument("--repeats", type=int, default=2, help="times each side runs, interleaved; the fastest counts")
    p.add_argument("--precision", default="float32", choices=PRECISIONS,
                   help="the engine's arithmetic (AttackConfig.precision); the reference stays float32")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    args = p.parse_args(argv)
    chosen = [a for a in args.attacks.split(",") if a]
    if unknown := [a for a in chosen if a not in ATTACKS]:
        raise SystemExit(f"unknown attacks {unknown}: choose from {', '.join(ATTACKS)}")
    sizes = [Size.parse(s) for s in args.sizes.split(",") if s]
    device = pick_device(args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = data.attack_images(max(s.images for s in sizes))
    if len(images) < max(s.images for s in sizes):
        raise SystemExit(f"only {len(images)} images found (set ATS_DATA_DIR to a CIFAR-100 copy for more)")
    if not args.json:
        print(f"{describe_device(device)}, {torch.get_num_threads()} threads, images: {images.name}")
        print(f"{'model':>10} {'attack':>6} {'B×R':>6} {'its':>4} | {'ours ms/it':>10} {'ref ms/it':>10} "
              f"{'ratio':>6} | {'PSNR ours':>9} {'ref':>6} {'Δ':>6}")
    rows = []
    for arch in [m for m in args.models.split(",") if m]:
        for attack in chosen:
            if attack == "idlg" and arch not in args.idlg_models.split(","):
                continue
            for size in sizes:
                row = measure(arch, attack, size, args.iterations, images, device, args.seed,
                              max(1, args.repeats), args.precision)
                rows.append(row)
                if not args.json:
                    extra = (f"  evaluations/candidate {row['evaluations_ours']} vs {row['evaluations_reference']},"
                             f" ms per candidate-evaluation {row['ours_ms_per_evaluation']} vs "
                             f"{row['reference_ms_per_evaluation']}" if attack == "idlg" else "")
                    print(f"{arch:>10} {attack:>6} {size.images:>3}×{size.restarts:<2} {row['iterations']:>4} | "
                          f"{row['ours_ms']:>10.1f} {row['reference_ms']:>10.1f} {row['ratio']:>6.2f} | "
                          f"{row['psnr_ours']:>9.2f} {row['psnr_reference']:>6.2f} {row['psnr_delta']:>+6.2f}{extra}",
                          flush=True)
    if args.json:
        json.dump(rows, sys.stdout)
        print()
    return rows


if __name__ == "__main__":
    main()
