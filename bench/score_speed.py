"""Batched vs sequential search scores: seconds per policy for S_pri and S_acc, and their agreement.

S_pri: `ats.scores.privacy_score` (all points × images through `vmap(grad)`, chunked) against
`ats.reference.privacy_score_sequential` (the original's loop: one `torch.autograd.grad` per point,
per image), in this process, on the same model, images, crops, flips and noise starts.
S_acc: `ats.scores.accuracy_score` against the original's computation on the same transformed
windows (one backward per window, `np.corrcoef`, `np.linalg.eig`). Uses the shipped tiny-data
checkpoint when it exists and matches `--arch`, else an untrained model.

    python bench/score_speed.py --arch resnet20 --images 100 --chunks 21,63,126
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch

from ats import indices, scores
from ats.reference import privacy_score_sequential
from ats.runtime import describe_device, make_generator, pick_device
from ats.scoring import ScoringSetup


def original_accuracy(model: torch.nn.Module, views: list[torch.Tensor]) -> list[float]:
    """The original's `eval_score` on `get_batch_jacobian`: numpy corrcoef and a general `eig`."""
    values = []
    for view in views:
        jacobian = scores.input_jacobian(model, view).cpu().numpy()
        eigenvalues = np.real(np.linalg.eig(np.corrcoef(jacobian))[0])
        values.append(float(-np.sum(np.log(eigenvalues + 1e-5) + 1.0 / (eigenvalues + 1e-5))))
    return values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--images", type=int, default=100, help="S_pri images (first n of the privacy set)")
    p.add_argument("--chunks", default="21,63,126", help="comma-separated ScoreConfig.chunk values to time")
    p.add_argument("--policy", default="3-1-7")
    p.add_argument("--checkpoint", default=None, help="S_pri model (default: the shipped tiny-data one if it fits)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    shipped = scores.default_score_checkpoint().is_file() and args.arch == "resnet20"
    setup = ScoringSetup.load("laptop", checkpoint=args.checkpoint, arch=args.arch, device=device, seed=args.seed,
                              untrained=not (args.checkpoint or shipped), privacy_images=args.images)
    config, model, acc_model, test = setup.config, setup.privacy_model, setup.accuracy_model, setup.data
    source = str(setup.checkpoint) if setup.checkpoint else "untrained"
    x, y = test.batch(indices.PRIVACY_SET[:args.images], device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(function, *a, **k):
        sync()
        start = time.perf_counter()
        out = function(*a, **k)
        sync()
        return out, time.perf_counter() - start

    scores.privacy_score(model, args.policy, x[:2], y[:2], generator=make_generator(0, device), config=config)
    by_chunk = {}
    for chunk in (int(c) for c in args.chunks.split(",")):
        batched, seconds = timed(scores.privacy_score, model, args.policy, x, y,
                                 generator=make_generator(args.seed, device), config=replace(config, chunk=chunk))
        by_chunk[chunk] = (batched, seconds)
    best = min(by_chunk, key=lambda c: by_chunk[c][1])
    batched, t_batched = by_chunk[best]
    sequential, t_sequential = timed(privacy_score_sequential, model, args.policy, x, y,
                                     generator=make_generator(args.seed, device), config=config)

    windows = [test.batch(w, device) for w in indices.accuracy_windows(config.accuracy_runs, config.accuracy_window)]
    accuracy, t_acc = timed(scores.accuracy_score, acc_model, args.policy, windows,
                            generator=make_generator(args.seed, device), config=config)
    views = scores.accuracy_inputs(args.policy, windows, make_generator(args.seed, device), semantics=config.semantics)
    original, t_acc_original = timed(original_accuracy, acc_model, views)
    original = torch.tensor(original, dtype=torch.float64)

    result = {
        "device": describe_device(device),
        "arch": args.arch,
        "model": source,
        "policy": args.policy,
        "s_pri": f"{args.images} images × {config.points} points",
        "seconds_by_chunk": {c: round(s, 3) for c, (_, s) in by_chunk.items()},
        "chunk": best,
        "seconds_batched": round(t_batched, 3),
        "seconds_sequential": round(t_sequential, 3),
        "speedup": round(t_sequential / t_batched, 2),
        "privacy_batched": round(batched.value, 6),
        "privacy_sequential": round(sequential.value, 6),
        "max_abs_per_image_difference": float(f"{float((batched.per_image.double() - sequential.per_image).abs().max()):.2e}"),
        "abs_score_difference": float(f"{abs(batched.value - sequential.value):.2e}"),
        "s_acc": f"{config.accuracy_runs} windows of {config.accuracy_window}, sizes {list(accuracy.sizes)}",
        "seconds_accuracy": round(t_acc, 3),
        "seconds_accuracy_original": round(t_acc_original, 3),
        "accuracy": round(accuracy.value, 4),
        "max_abs_accuracy_run_difference": float(f"{float((accuracy.per_run - original).abs().max()):.2e}"),
        "seconds_per_policy_batched": round(t_batched + t_acc, 3),
        "seconds_per_policy_sequential": round(t_sequential + t_acc_original, 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>32}: {value}")


if __name__ == "__main__":
    main()
