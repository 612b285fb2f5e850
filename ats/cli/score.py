"""`ats score`: the privacy score S_pri and accuracy score S_acc of given policies (Gao et al., CVPR 2021, §4.2–4.3)."""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from ats.cli import add_common, dumps, log, progress
from ats.runtime import PRESETS


def add_scoring_flags(p: argparse.ArgumentParser) -> None:
    """The flags `ats score` and `ats search` share: what the scores are computed with."""
    p.add_argument("--preset", default="laptop", choices=PRESETS, help="score definition preset (default laptop)")
    p.add_argument("--model", help="architecture (default: the checkpoint's); must match --checkpoint")
    p.add_argument("--checkpoint", type=Path,
                   help="the tiny-data model behind S_pri "
                   "(default: the shipped ats/assets/models/tiny-cifar100-resnet20.pt)")
    p.add_argument("--images", type=int, help="privacy-score images (default: the preset's)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="privacy and accuracy scores of policies, without running an attack",
                       description="Compute S_pri (lower = more private) and S_acc (higher = better expected "
                                   "accuracy; policies below the threshold are rejected by the search).")
    p.add_argument("policies", nargs="+", metavar="POLICY", help="e.g. 3-1-7, 43-18-18, 3-1-7+43-18-18 or none")
    add_scoring_flags(p)
    add_common(p)


def _images(args) -> int | None:
    """--images, checked."""
    if args.images is not None and args.images < 1:
        raise ValueError(f"--images {args.images} must be at least 1")
    return args.images


def score_config(args):
    """The ScoreConfig named by --preset, with --images applied."""
    from ats.scoring import preset_config

    return preset_config(args.preset, privacy_images=_images(args))


def load_scoring(args, device):
    """The S_pri checkpoint, the untrained S_acc model and the test images for `args`: a ScoringSetup."""
    from ats.scoring import ScoringSetup

    return ScoringSetup.load(args.preset, checkpoint=args.checkpoint, arch=args.model, device=device,
                             seed=args.seed, privacy_images=_images(args))


def run(args) -> int:
    from ats import scores
    from ats.runtime import describe_device, pick_device
    from ats.search import parse_policies

    device = pick_device(args.device)
    policies = parse_policies(args.policies)
    setup = load_scoring(args, device)
    log(f"ats score: {len(policies)} policies, preset {setup.config.name}, {setup.config.privacy_images} "
        f"privacy images, model {setup.checkpoint}, {describe_device(device)}")
    results = []
    bar = progress(len(policies), unit="policy")
    for policy in policies:
        started = time.perf_counter()
        privacy, accuracy = setup.score(policy)
        values = {"privacy": float(privacy.value), "accuracy": float(accuracy.value),
                  "accuracy_normalized": float(accuracy.normalized)}
        passes = bool(accuracy.passes) and all(math.isfinite(v) for v in values.values())  # NaN never passes
        results.append({"policy": str(policy), **values, "passes": passes,
                        "seconds": round(time.perf_counter() - started, 3)})
        bar.update(1)
    bar.close()
    if args.json:
        print(dumps(results))
        return 0
    print(f"{'policy':<16} {'S_pri':>7} {'S_acc':>9} {'S_acc/img':>9}  threshold {scores.ACCURACY_THRESHOLD:g}")
    for r in results:
        verdict = "passes" if r["passes"] else "rejected"
        print(f"{r['policy']:<16} {r['privacy']:7.4f} {r['accuracy']:9.2f} {r['accuracy_normalized']:9.4f}  {verdict}")
    return 0
