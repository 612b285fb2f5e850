"""Training recipes: the benchmark's models and the tiny-data model M_s behind S_pri.

Gao et al. (CVPR 2021, §5.2) train with inversefed's "conservative" strategy: SGD with Nesterov
momentum 0.9, lr 0.1, weight decay 5e-4, batch 128, `MultiStepLR` ×0.1 at `epochs // 2.667`,
`// 1.6`, `// 1.142` (74, 124, 175 for 200 epochs), stepped once per epoch, loss 0.5·CE, each
image randomly cropped (pad 4), flipped, then transformed by the policy (`reference/ats-method.md`
§5.2). The privacy score S_pri runs on a "semi-trained" model trained on 10 % of the training set
for 50 epochs (§2.1); the original never said how the 10 % was drawn and loaded a file named
`100.pth` (§2.2, §8 item 1), so `TrainRecipe.tiny` draws a seeded class-balanced 10 % and trains
the paper's 50 epochs (pass `epochs=100` through `dataclasses.replace` for the file name's reading).

Augmentation runs batched on the training device (`ats.policy.transform`), randomness comes from
generators seeded by `seed`, and after every epoch the whole training state is written next to the
output, so an interrupted run resumes (`resume=True`) and ends with the same weights.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ats import data as data_module
from ats import models
from ats.federated import LOSSES as LOSS_FUNCTIONS
from ats.ops import check_semantics
from ats.policy import Hybrid, Policy, parse_policy, transform
from ats.runtime import make_generator

LOSSES = tuple(LOSS_FUNCTIONS)  # the loss names federated.py defines
STATE_FORMAT = "ats-train-state/1"
NUM_CLASSES = {"cifar100": 100, "cifar10": 10, "fmnist": 10}


@dataclass(frozen=True)
class TrainRecipe:
    """How to train a model; presets are classmethods, overrides go through `dataclasses.replace`."""

    name: str
    arch: str = "resnet20"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (2.667, 1.6, 1.142)  # lr ×gamma at epochs // m for each m
    gamma: float = 0.1
    loss: str = "half-ce"  # inversefed's 0.5·CE; "ce" for plain cross-entropy
    data_fraction: float = 1.0  # a seeded class-balanced share of the train split
    crop_flip: bool = True
    semantics: str = "ats"
    eval_every: int = 0  # evaluate on the test set every N epochs (0: only at the end)
    eval_images: int | None = None  # evaluate on the first N test images (None: all)
    normalization: str | None = None  # None: the dataset's own statistics; "cifar10" as the original

    @classmethod
    def paper(cls) -> TrainRecipe:
        """The benchmark's recipe (§5.2): ResNet20-4, full train set, 200 epochs (GPU hours)."""
        return cls(name="paper", arch="resnet20-4", epochs=200, eval_every=10)

    @classmethod
    def laptop(cls) -> TrainRecipe:
        """The paper's optimizer and schedule shape on ResNet20 (width 16), 10 epochs, full train set."""
        return cls(name="laptop", arch="resnet20", epochs=10, eval_every=5)

    @classmethod
    def tiny(cls) -> TrainRecipe:
        """M_s for S_pri: a seeded class-balanced 10 % of the train set, 50 epochs (paper §4.4), ResNet20."""
        return cls(name="tiny", arch="resnet20", epochs=50, data_fraction=0.1)

    @classmethod
    def tiny_paper(cls) -> TrainRecipe:
        """`tiny` on the paper's ResNet20-4."""
        return cls(name="tiny-paper", arch="resnet20-4", epochs=50, data_fraction=0.1)

    @classmethod
    def smoke(cls) -> TrainRecipe:
        """For tests: two images a class of CIFAR-100 (200), 2 epochs, evaluated on 200 test images."""
        return cls(name="smoke", arch="resnet20", epochs=2, batch_size=50, data_fraction=0.004, eval_every=1,
                   eval_images=200)

    @classmethod
    def preset(cls, name: str) -> TrainRecipe:
        """The preset called `name` (paper, laptop, tiny, tiny-paper, smoke)."""
        presets = {"paper": cls.paper, "laptop": cls.laptop, "tiny": cls.tiny,
                   "tiny-paper": cls.tiny_paper, "smoke": cls.smoke}
        if name not in presets:
            raise ValueError(f"recipe {name!r} is not one of {', '.join(presets)}")
        return presets[name]()

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs={self.epochs} and batch_size={self.batch_size} must be at least 1")
        if self.loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        if not 0.0 < self.data_fraction <= 1.0:
            raise ValueError(f"data_fraction {self.data_fraction} must lie in (0, 1]")
        if self.eval_images is not None and self.eval_images < 1:
            raise ValueError(f"eval_images={self.eval_images} must be at least 1 (or None for all)")
        if self.lr <= 0 or self.eval_every < 0:
            raise ValueError(f"lr={self.lr} must be positive and eval_every={self.eval_every} not negative")
        check_semantics(self.semantics)

    def milestone_epochs(self) -> list[int]:
        """The epochs after which the lr drops: [74, 124, 175] for 200 epochs, as the original computes."""
        return [int(self.epochs // m) for m in self.milestones]


@dataclass(frozen=True)
class TrainProgress:
    """One finished batch; on an epoch's last batch the epoch is already checkpointed."""

    epoch: int  # 1-based
    epochs: int
    batch: int  # 1-based
    batches: int
    loss: float  # this batch's loss
    accuracy: float | None  # test accuracy, on the last batch of an evaluated epoch
    seconds: float  # since the start of this call


@dataclass(frozen=True)
class TrainResult:
    """What `train` made: the checkpoint, its accuracy, and per-epoch curves."""

    checkpoint: Path
    meta: models.ModelMeta
    accuracy: float | None
    epochs: int
    seconds: float  # training time over all runs, resumed ones included
    epoch_losses: tuple[float, ...]  # mean training loss of each epoch
    accuracies: tuple[tuple[int, float], ...]  # (epoch, test accuracy)
    device: str
    resumed_from: int  # the epoch this call started after (0: from scratch)


def state_path(out: str | os.PathLike) -> Path:
    """Where `train` keeps the resumable training state for the checkpoint `out`."""
    return Path(f"{out}.state")


def evaluate(model: nn.Module, test: data_module.ImageSet, *, batch_size: int = 500,
             device: torch.device | str | None = None) -> float:
    """Top-1 accuracy of `model` (in eval mode) on `test`, in [0, 1]."""
    if len(test) == 0:
        raise ValueError(f"the test set {test!r} is empty")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), batch_size):
            x, y = test.batch(range(start, min(start + batch_size, len(test))), device)
            correct += int((model(x).argmax(1) == y).sum())
    model.train(was_training)
    return correct / len(test)


def training_subset(recipe: TrainRecipe, data: data_module.ImageSet, seed: int) -> data_module.ImageSet:
    """The images `recipe` trains on: all of `data`, or its seeded class-balanced `data_fraction`."""
    if recipe.data_fraction >= 1.0:
        return data
    indices = data_module.class_balanced_subset(data.labels, recipe.data_fraction, make_generator(seed))
    return data.subset(indices)


def train(recipe: TrainRecipe, *, policy: Policy | Hybrid | str | None = None,
          data: data_module.ImageSet, test: data_module.ImageSet | None = None,
          out: str | os.PathLike, seed: int = 0, device: torch.device | str = "cpu",
          callback: Callable[[TrainProgress], None] | None = None, resume: bool = False,
          keep_state: bool = False, note: str = "") -> TrainResult:
    """Train a fresh `recipe.arch` on `data` (a train split) and save it to `out` with its `ModelMeta`.

    Each epoch shuffles with a seeded generator and augments every batch on `device`: random crop
    (pad 4) → horizontal flip → `policy`. The training state (model, optimizer, scheduler, epoch,
    generators) is written atomically to `state_path(out)` after every epoch; `resume=True` picks it
    up and finishes with the weights an uninterrupted run would have. The state file is removed at
    the end unless `keep_state`. `callback` gets a `TrainProgress` after every batch. `note` (why a
    run departs from its recipe, say) is kept in the checkpoint's `ModelMeta.extra`.
    """
    device = torch.device(device)
    if isinstance(policy, str):
        policy = parse_policy(policy)
    if policy is not None and str(policy) == "none":
        policy = None
    if data.name not in NUM_CLASSES:
        raise ValueError(f"cannot train on {data.name!r}; use one of {', '.join(NUM_CLASSES)}")
    if test is not None and (test.name != data.name or len(test) == 0):
        raise ValueError(f"the test set {test!r} must be a non-empty {data.name!r} set")
    if test is not None and recipe.eval_images is not None:
        test = test.subset(range(min(recipe.eval_images, len(test))))
    out = Path(out)
    subset = training_subset(recipe, data, seed)
    images = subset.images.to(device)  # (N, 3, H, W) uint8, kept on the device
    labels = subset.labels.to(device)
    batches = -(-len(subset) // recipe.batch_size)
    model = models.build_model(recipe.arch, NUM_CLASSES[data.name], dataset=data.name,
                               normalization=recipe.normalization, seed=seed).to(device)
    memory_format = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
    model = model.to(memory_format=memory_format)  # about 1.5× faster convolutions on a 2-core CPU
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, recipe.milestone_epochs(), recipe.gamma)
    order_generator = make_generator(seed + 1)  # shuffling, on the CPU
    augment_generator = make_generator(seed + 2, device)  # crop, flip and policy, on the device
    identity = {"recipe": asdict(recipe), "policy": str(policy or "none"), "seed": seed,
                "dataset": data.name, "images": len(subset)}
    start, seconds, epoch_losses, accuracies = 0, 0.0, [], []
    if resume and state_path(out).is_file():
        state = torch.load(state_path(out), weights_only=True, map_location="cpu")
        if state.get("format") != STATE_FORMAT or state.get("identity") != identity:
            raise ValueError(f"{state_path(out)} belongs to a different training run; "
                             "remove it or train without --resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        order_generator.set_state(state["order_generator"])
        augment_generator.set_state(state["augment_generator"].cpu())
        start, seconds = int(state["epoch"]), float(state["seconds"])
        epoch_losses = [float(v) for v in state["epoch_losses"]]
        accuracies = [(int(e), float(a)) for e, a in state["accuracies"]]
    loss_fn = LOSS_FUNCTIONS[recipe.loss]
    started = time.perf_counter()
    for epoch in range(start + 1, recipe.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        order = torch.randperm(len(subset), generator=order_generator).to(device)
        total = torch.zeros((), device=device)
        for batch in range(1, batches + 1):
            index = order[(batch - 1) * recipe.batch_size: batch * recipe.batch_size]
            x = images[index].float() / 255.0  # (B, 3, H, W)
            x = transform(x, policy, augment_generator, crop_flip=recipe.crop_flip, semantics=recipe.semantics)
            x = x.contiguous(memory_format=memory_format)
            loss = loss_fn(model(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(index)
            accuracy = None
            if batch == batches:
                scheduler.step()
                epoch_losses.append(float(total) / len(subset))
                due = recipe.eval_every and epoch % recipe.eval_every == 0
                if test is not None and (due or epoch == recipe.epochs):
                    accuracy = evaluate(model, test, device=device)
                    accuracies.append((epoch, accuracy))
                seconds += time.perf_counter() - epoch_started
                models.atomic_save({
                    "format": STATE_FORMAT, "identity": identity, "epoch": epoch, "seconds": seconds,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "order_generator": order_generator.get_state(),
                    "augment_generator": augment_generator.get_state(),
                    "epoch_losses": epoch_losses, "accuracies": accuracies,
                }, state_path(out))
            if callback is not None:
                callback(TrainProgress(epoch, recipe.epochs, batch, batches, loss.item(), accuracy,
                                       time.perf_counter() - started))
    final_accuracy = accuracies[-1][1] if accuracies and accuracies[-1][0] == recipe.epochs else None
    if test is not None and final_accuracy is None:  # resumed from a finished state
        final_accuracy = evaluate(model, test, device=device)
    meta = models.ModelMeta(
        arch=recipe.arch, dataset=data.name, num_classes=NUM_CLASSES[data.name],
        normalization=recipe.normalization or data.name, policy=str(policy or "none"),
        epochs=recipe.epochs, accuracy=final_accuracy, recipe=recipe.name, seed=seed,
        extra={"recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(recipe).items()},
               "train_images": len(subset), "seconds": round(seconds, 1), "device": str(device),
               "torch": str(torch.__version__), **({"note": note} if note else {})})
    models.save_checkpoint(out, model, meta)
    if not keep_state:
        state_path(out).unlink(missing_ok=True)
    return TrainResult(out, meta, final_accuracy, recipe.epochs, seconds, tuple(epoch_losses),
                       tuple(accuracies), str(device), start)
