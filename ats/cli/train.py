"""`ats train`: train a model by one of the recipes of `ats.train` and save it as an ats checkpoint."""
from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import replace
from pathlib import Path

from ats.cli import add_common, dumps, check_folder, log, progress

RECIPES = ("paper", "laptop", "tiny", "tiny-paper", "smoke")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (paper, laptop, tiny-data or smoke recipe)",
                       description="Train a model with crop, flip and an optional policy; resumable after every epoch.")
    p.add_argument("--recipe", default="laptop", help=f"{', '.join(RECIPES)} (default laptop)")
    p.add_argument("--model", help="override the recipe's model: resnet20-4, resnet20, convnet, lenet")
    p.add_argument("--policy", default="none", help="transformation policy, e.g. 3-1-7 or 3-1-7+43-18-18")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (the lr milestones scale with it)")
    p.add_argument("--data", default="cifar100", help="cifar100, cifar10 or fmnist (default cifar100)")
    p.add_argument("--out", type=Path, help="checkpoint path "
                   "(default runs/models/RECIPE-DATA-MODEL[-POLICY].pt, relative to the current folder)")
    p.add_argument("--resume", action="store_true", help="continue from the state saved after the last finished epoch")
    p.add_argument("--keep-state", action="store_true", help="keep the resumable state file (OUT.state) at the end")
    p.add_argument("--note", default="", help="a note kept in the checkpoint's metadata (why epochs differ, say)")
    p.add_argument("--download", action="store_true", help="download the dataset if no local copy is found")
    add_common(p)


def run(args) -> int:
    from ats import data, models, train
    from ats.limits import MAX_EPOCHS, check_model, check_range
    from ats.policy import Policy, parse_policy
    from ats.recipes import TrainRecipe
    from ats.runtime import describe_device, pick_device

    recipe = TrainRecipe.preset(args.recipe)
    if args.model is not None:
        recipe = replace(recipe, arch=args.model)
    if args.epochs is not None:
        if args.epochs > MAX_EPOCHS:  # below 1, the recipe says what epochs may be
            check_range("--epochs", args.epochs, 1, MAX_EPOCHS)
        recipe = replace(recipe, epochs=args.epochs)
    policy = parse_policy(args.policy)
    if args.data not in models.NUM_CLASSES:
        raise ValueError(f"--data {args.data!r} is not one of {', '.join(models.NUM_CLASSES)}")
    check_model(recipe.arch, models.NUM_CLASSES[args.data], args.data)
    if args.out is not None:
        _check_out(args.out)
    device = pick_device(args.device)
    with contextlib.redirect_stdout(sys.stderr):  # whatever a download prints, stdout stays --json's
        train_set = data.load_dataset(args.data, "train", download=args.download)
        test_set = data.load_dataset(args.data, "test", download=args.download)
    suffix = "" if policy == Policy.none() else f"-{policy}"
    out = args.out or Path("runs") / "models" / f"{recipe.name}-{args.data}-{recipe.arch}{suffix}.pt"
    log(f"ats train: recipe {recipe.name}, {recipe.arch}, {recipe.epochs} epochs, policy {policy}, "
        f"{args.data} ({recipe.data_fraction:.0%} of {len(train_set)} images), {describe_device(device)} -> {out}")
    report = _Progress()
    try:
        result = train.train(recipe, policy=policy, data=train_set, test=test_set, out=out, seed=args.seed,
                             device=device, callback=report, resume=args.resume, keep_state=args.keep_state,
                             note=args.note)
    finally:
        report.close()
    document = {
        "checkpoint": str(result.checkpoint),
        "accuracy": result.accuracy,
        "epochs": result.epochs,
        "seconds": round(result.seconds, 1),
        "device": result.device,
    }
    if args.json:
        print(dumps(document))
    else:
        print(f"{result.checkpoint}: {recipe.arch} after {result.epochs} epochs, test accuracy "
              f"{result.accuracy:.2%}, {result.seconds:.0f} s on {result.device}")
    return 0


def _check_out(out: Path) -> None:
    """Refuse, before training, an --out the checkpoint could not be written to."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the checkpoint's file name, e.g. {out / 'model.pt'}")
    check_folder(out.parent, "--out")


class _Progress:
    """The `train` callback: a progress bar over all batches, and a line per evaluated epoch."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, step) -> None:
        if self.bar is None:
            self.bar = progress(step.epochs * step.batches, unit="batch")
            self.bar.update((step.epoch - 1) * step.batches + step.batch - 1)  # a resumed run starts part-way
        self.bar.update(1)
        postfix = {"epoch": f"{step.epoch}/{step.epochs}", "loss": f"{step.loss:.3f}"}
        if step.accuracy is not None:
            postfix["acc"] = f"{step.accuracy:.1%}"
            log(f"epoch {step.epoch}: test accuracy {step.accuracy:.2%} after {step.seconds:.0f} s")
        self.bar.set_postfix(postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
