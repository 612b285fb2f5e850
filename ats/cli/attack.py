"""`ats attack`: reconstruct images from a shared gradient and score the result.

`--threat` picks what the client shares (`ats.threats`: fedsgd, batch-B, fedavg-E-K); `--defense dp-C-σ`
is DP-SGD (`ats.privacy`), whose ε the JSON reports.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

from ats.cli import add_common, check_folder, dumps, log, progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ats.attacks import PRESETS
    from ats.fedavg import FEDAVG_LR

    p = sub.add_parser("attack", help="reconstruct images from a shared gradient and score the result",
                       description="Run a gradient-inversion attack on real images and report how well it worked.")
    p.add_argument("--data", default="cifar100", choices=["cifar100", "cifar10", "fmnist", "samples"],
                   help="where the images come from (default cifar100; samples = the bundled photos)")
    p.add_argument("--indices", default="0", help="test-set indices, e.g. 0-4 or 0,3,7 (default 0)")
    p.add_argument("--image", type=Path, help="attack this image file instead (resized to 32×32)")
    p.add_argument("--label", help="the label of --image: a class index or name (default 0)")
    p.add_argument("--model", default="resnet20", help="resnet20-4, resnet20, convnet or lenet (default resnet20)")
    p.add_argument("--checkpoint", type=Path, help="trained weights (default: an untrained model)")
    p.add_argument("--policy", default="none", help="transformation policy, e.g. 3-1-7 or 3-1-7+43-18-18")
    p.add_argument("--defense", default="none",
                   help="gradient defense: none, prune-70, gauss-1e-3, lap-1e-3, ..., or DP-SGD dp-C-σ (e.g. dp-1-1.1: "
                        "clip each image's gradient to norm C, add noise σ·C to the sum); for dp the JSON gives the "
                        "ε of one step at δ = 1e-5 and sampling rate (images in one shared update) / (images in the "
                        "data set: 1 for --image), from Opacus's RDP accountant")
    p.add_argument("--threat", default="fedsgd",
                   help="what the client shares: fedsgd (default: a gradient, per image unless --joint), batch-B "
                        "(one gradient of the B images of --indices, labels kept: counted from the last layer, "
                        "reconstructed jointly), fedavg-E-K (the weight difference after E local epochs over K "
                        f"mini-batches of the images, SGD at lr {FEDAVG_LR:g}; reconstructed jointly)")
    p.add_argument("--attack", default="ig", choices=list(PRESETS), help="attack preset (default ig)")
    p.add_argument("--iterations", type=int, help="override the preset's iterations")
    p.add_argument("--restarts", type=int, help="override the preset's restarts")
    p.add_argument("--lr", type=float, help="override the preset's step size (e.g. 1 for lbfgs-cos on DLG's LeNet, "
                                            "whose Table 2 value 1e-4 barely moves it)")
    p.add_argument("--joint", action="store_true",
                   help="share one aggregated gradient for all images and reconstruct them jointly")
    p.add_argument("--out", type=Path, help="folder for grid.png and results.json "
                   "(default runs/attack-TIME, relative to the current folder)")
    add_common(p)


def _load_images(args, num_classes_hint: int):
    """(x, y, indices, classes, population) for --data/--indices or --image; `population` is the
    number of images they were drawn from (1 for --image)."""
    from ats import data
    from ats.images import load_image
    from ats.indices import parse_indices
    from ats.limits import MAX_ATTACK_IMAGES

    if args.image is not None:
        x = load_image(args.image)[None]
        classes = data.CIFAR100_CLASSES if args.data == "cifar100" else None
        label = 0
        if args.label is not None:
            if args.label.isascii() and args.label.isdigit() and len(args.label) <= 6:
                label = int(args.label)
            elif classes and args.label in classes:
                label = classes.index(args.label)
            else:
                raise ValueError(f"--label {args.label!r} is neither a class index nor a class name")
        if not 0 <= label < num_classes_hint:
            raise ValueError(f"--label {label} is out of range 0–{num_classes_hint - 1}")
        import torch

        return x, torch.tensor([label]), [0], classes, 1
    images = data.load_samples() if args.data == "samples" else data.load_dataset(args.data, "test")
    indices = parse_indices(args.indices, limit=min(MAX_ATTACK_IMAGES, len(images)))
    x, y = images.batch(indices)
    return x, y, list(indices), images.classes, len(images)


def attack_config(args):
    """The preset's AttackConfig with --iterations and --restarts, each checked against `ats.limits`."""
    from ats import attacks
    from ats.limits import MAX_ITERATIONS, MAX_RESTARTS, check_range

    config = attacks.AttackConfig.preset(args.attack)
    if args.iterations is not None:
        check_range("--iterations", args.iterations, 1, MAX_ITERATIONS)
        config = replace(config, iterations=args.iterations)
    if args.restarts is not None:
        check_range("--restarts", args.restarts, 1, MAX_RESTARTS)
        config = replace(config, restarts=args.restarts)
    if args.lr is not None:
        if not (math.isfinite(args.lr) and 0 < args.lr <= 100):
            raise ValueError(f"--lr must be a number in (0, 100], got {args.lr}")
        config = replace(config, lr=args.lr)
    return config


def check_attack_memory(model, name: str, images: int, config, joint: bool, device) -> None:
    """Refuse, before anything is allocated, an attack that would not fit in `device`'s free memory."""
    from ats.limits import attack_bytes, check_memory

    check_memory(attack_bytes(model, images, config.restarts, joint=joint), device,
                 f"attacking {images} image(s) × {config.restarts} restart(s) of {name}",
                 "lower --restarts or --indices, or take a smaller --model")


def run(args) -> int:

    from ats import attacks, checkpoints
    from ats.evaluation import evaluate_reconstruction, summarize
    from ats.federated import client_update, parse_defense
    from ats.policy import Policy, parse_policy
    from ats.runtime import describe_device, make_generator, pick_device
    from ats.threats import parse_threat
    from ats.viz import save_grid

    device = pick_device(args.device)
    policy = parse_policy(args.policy)
    defense = parse_defense(args.defense)
    threat = parse_threat(args.threat)
    config = threat.attack_config(attack_config(args))
    joint = bool(args.joint or threat.aggregated)
    out = check_folder(args.out or Path("runs") / time.strftime("attack-%Y%m%d-%H%M%S"))
    model, num_classes = checkpoints.model_for_data(args.model, args.data, checkpoint=args.checkpoint, device=device,
                                               seed=args.seed)
    model.eval()
    x, y, indices, _, population = _load_images(args, num_classes)
    options = threat.client_options(len(indices), joint=joint)
    if int(y.max()) >= num_classes:
        raise ValueError(f"label {int(y.max())} does not fit a model with {num_classes} classes")
    check_attack_memory(model, args.model if args.checkpoint is None else str(args.checkpoint), len(indices), config,
                        joint, device)
    x, y = x.to(device), y.to(device)
    generator = make_generator(args.seed, device)
    crop_flip = policy != Policy.none()  # as before: crop and flip come with a policy, not without
    shared, private = client_update(model, x, y, policy, defense, crop_flip=crop_flip, generator=generator,
                                    **options)
    log(f"ats attack: {config.name} on {len(indices)} image(s), {getattr(model, 'arch', type(model).__name__)}, "
         f"policy {policy}, defense {defense}, threat {threat}, {describe_device(device)}")
    started = time.perf_counter()
    final = None
    bar = progress(config.iterations)
    every = max(1, config.iterations // 100)
    for snapshot in attacks.iter_reconstruct(model, shared, config, generator=generator, every=every,
                                             policy=private.policy, crop_flip=private.crop_flip):
        bar.update(snapshot.iteration - bar.n)
        bar.set_postfix(loss=f"{float(snapshot.loss.nanmean()):.4g}")
        final = snapshot
    bar.close()
    seconds = time.perf_counter() - started
    results = evaluate_reconstruction(final, private, x, indices)
    document = {
        "device": str(device),
        "seconds": round(seconds, 3),
        "attack": config.name,
        "model": args.model if args.checkpoint is None else str(args.checkpoint),
        "policy": str(policy),
        "defense": str(defense),
        "threat": str(threat),
        **_privacy(defense, 1 if shared.per_example else shared.batch_size, population),
        "joint": joint,
        "summary": summarize(results),
        "results": [r.to_dict() for r in results],
        "grid": str(out / "grid.png"),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_grid(out / "grid.png", [x.cpu(), private.transformed.cpu(), final.images])
    (out / "results.json").write_text(json.dumps(document, indent=2))
    if args.json:
        print(dumps(document))
    else:
        _print_table(results, document)
    return 0


def _privacy(defense, batch: int, population: int) -> dict:
    """For DP-SGD, at δ = 1e-5: `epsilon`, the budget of the one update the attacker inverts (sampling
    rate 1, one step: `ats.privacy.update_epsilon`, as the app, the benchmark and the notebooks show
    it), and `epsilon_sampled`, the same step's budget had the client drawn its batch at rate
    `batch` / `population` from the data set (amplification by sampling)."""
    from ats.privacy import DP_DELTA, dp_epsilon, update_epsilon

    if defense.kind != "dp":
        return {}
    rate = min(1.0, batch / population)
    return {"epsilon": update_epsilon(defense.amount, DP_DELTA), "delta": DP_DELTA,
            "epsilon_sampled": dp_epsilon(defense.amount, rate, 1, DP_DELTA), "sample_rate": rate, "steps": 1}


def _print_table(results, document) -> None:
    print(f"{'index':>5} {'label':>5} {'label ok':>8} {'psnr_x':>7} {'psnr_tx':>7} {'ssim_x':>6} {'ssim_tx':>7}"
          "  status")
    for r in results:
        print(f"{r.index:>5} {r.label:>5} {str(r.label_recovered):>8} {r.psnr_x:7.2f} {r.psnr_tx:7.2f} "
              f"{r.ssim_x:6.3f} {r.ssim_tx:7.3f}  {r.status}")
    s = document["summary"]
    if "psnr_x_mean" in s:
        print(f"mean PSNR {s['psnr_x_mean']:.2f} dB (median {s['psnr_x_median']:.2f}) against the original x, "
              f"{s['psnr_tx_mean']:.2f} dB against the transformed T(x); "
              f"labels recovered {s['label_accuracy']:.0%}; {document['seconds']:.1f} s on {document['device']}")
    if "epsilon" in document:
        print(f"DP-SGD: ε = {document['epsilon']:.3g} at δ = {document['delta']:g} for the one update inverted "
              f"({document['epsilon_sampled']:.3g} had its batch been sampled at rate {document['sample_rate']:.3g})")
    print(f"grid: {document['grid']}")
