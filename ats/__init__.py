"""ats: gradient leakage and the Automatic Transformation Search defense.

A compact library to measure how much a shared gradient reveals about the private images
behind it, and how well image transformations (Gao et al., "Privacy-preserving Collaborative
Learning with Automatic Transformation Search", CVPR 2021; TPAMI 2023) hide them.

The names a user needs are importable from the package itself::

    import ats
    images = ats.attack_images(1)
    x, y = images.batch([0])
    model = ats.build_model("lenet", 100, seed=0).eval()
    shared, private = ats.client_update(model, x, y, "3-1-7", crop_flip=True, generator=ats.make_generator(0))
    recon = ats.reconstruct(model, shared, ats.AttackConfig.preset("idlg"))
    print(ats.summarize(ats.evaluate_reconstruction(recon, private, x)))

Each name lives in the module that owns its concept (see the README's map); they are loaded on
first use, so `import ats` stays cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_HOMES = {
    # the client and its defenses
    "client_update": "federated", "SharedUpdate": "federated", "ClientRound": "federated",
    "ClientSecrets": "federated", "Defense": "federated", "parse_defense": "federated",
    "infer_labels": "federated", "infer_label_counts": "labels",
    # threat models beyond the paper's (issue 14)
    "Threat": "threats", "parse_threat": "threats", "dp_epsilon": "privacy",
    # policies
    "Policy": "policy", "Hybrid": "policy", "parse_policy": "policy", "random_policy": "policy",
    # attacks and their evaluation
    "AttackConfig": "attacks", "Reconstruction": "attacks", "reconstruct": "attacks",
    "iter_reconstruct": "attacks",
    "evaluate_reconstruction": "evaluation", "summarize": "evaluation", "ImageResult": "evaluation",
    "psnr": "metrics", "ssim": "metrics",
    # scores and search
    "privacy_score": "scores", "accuracy_score": "scores", "ScoreConfig": "scores",
    "ScoringSetup": "scoring", "run_search": "search", "candidates": "search", "select": "selection",
    "RayOptions": "distributed",
    "Store": "store",
    # models, data, training, the benchmark
    "build_model": "models", "load_checkpoint": "checkpoints", "save_checkpoint": "checkpoints",
    "load_dataset": "data", "attack_images": "data", "load_samples": "data", "load_image": "images",
    "TrainRecipe": "recipes",  # the function is ats.train.train: `ats.train` names its module
    "run_benchmark": "benchmark", "BenchmarkConfig": "benchmark",
    "pick_device": "runtime", "make_generator": "runtime",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'ats' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ats.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
