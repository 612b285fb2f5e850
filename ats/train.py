"""Training: the benchmark's models and the tiny-data model M_s behind S_pri (recipes: `ats.recipes`).

Gao et al. (CVPR 2021, §5.2) train with inversefed's "conservative" strategy: SGD with Nesterov
momentum 0.9, lr 0.1, weight decay 5e-4, batch 128, `MultiStepLR` ×0.1 at `epochs // 2.667`,
`// 1.6`, `// 1.142` (74, 124, 175 for 200 epochs), stepped once per epoch, loss 0.5·CE, each
image randomly cropped (pad 4), flipped, then transformed by the policy. The privacy score S_pri
runs on a "semi-trained" model trained on 10 % of the training set for 50 epochs (paper §4.4); the
original never said how the 10 % was drawn and loaded a file named `100.pth` (see `docs/method.md`),
so `TrainRecipe.tiny` draws a seeded class-balanced 10 % and trains the paper's 50 epochs (pass
`epochs=100` through `dataclasses.replace` for the file name's reading).

Augmentation runs batched on the training device (`ats.policy.transform`). With `recipe.defense`
(Table 3's defended models) every step's batch gradient goes through that `ats.federated.Defense`
before the optimizer step, just as a client's shared update does; under DP-SGD (`dp-C-σ`) each
step computes every example's gradient, clips it to C and adds noise σ·C to the sum (Abadi et
al. 2016), for models without BatchNorm; `ats.privacy.training_epsilon` gives the ε it spends. Randomness comes from
generators seeded by `seed`, and after every epoch the whole training state is written next to the
output, so an interrupted run resumes (`resume=True`) and ends with the same weights. `train` is
restore (`_restore`), then per epoch one pass (`_train_epoch`) and its end (`_end_epoch`: evaluate,
save the state), then the checkpoint (`_finish`).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ats import data as data_module
from ats import checkpoints, models
from ats.federated import LOSSES as LOSS_FUNCTIONS
from ats.federated import Defense, parse_defense
from ats.privacy import dp_sgd
from ats.indices import class_balanced_subset
from ats.models import NUM_CLASSES
from ats.policy import Hybrid, Policy, as_policy, transform
from ats.recipes import TrainRecipe
from ats.runtime import make_generator

STATE_FORMAT = "ats-train-state/1"


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
    meta: checkpoints.ModelMeta
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
    indices = class_balanced_subset(data.labels, recipe.data_fraction, make_generator(seed))
    return data.subset(indices)


def train(recipe: TrainRecipe, *, policy: Policy | Hybrid | str = Policy.none(),
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
    policy, test = _checked_inputs(recipe, policy, data, test)
    out = Path(out)
    subset = training_subset(recipe, data, seed)
    run = _Run.start(recipe, subset, policy, seed, device)
    if resume and state_path(out).is_file():
        _restore(run, state_path(out))
    resumed_from, started = run.epoch, time.perf_counter()
    batches = -(-len(subset) // recipe.batch_size)
    for epoch in range(resumed_from + 1, recipe.epochs + 1):
        report = _reporter(callback, epoch, recipe.epochs, batches, started)
        epoch_started = time.perf_counter()
        total, last_loss = _train_epoch(run, recipe, policy, report)
        accuracy = _end_epoch(run, recipe, test, float(total) / len(subset), epoch_started, state_path(out))
        report(batches, last_loss, accuracy)  # the epoch's last batch, once its state is saved
    return _finish(run, recipe, policy, test, out, keep_state, note, resumed_from)


def _reporter(callback: Callable[[TrainProgress], None] | None, epoch: int, epochs: int, batches: int,
              started: float) -> Callable[..., None]:
    """`report(batch, loss, accuracy=None)`, handing `callback` a `TrainProgress` (a no-op without one)."""
    def report(batch: int, loss: torch.Tensor, accuracy: float | None = None) -> None:
        if callback is not None:  # loss.item() waits for the device: only when someone listens
            callback(TrainProgress(epoch, epochs, batch, batches, loss.item(), accuracy, time.perf_counter() - started))
    return report


def _checked_inputs(recipe: TrainRecipe, policy: Policy | Hybrid | str, data: data_module.ImageSet,
                    test: data_module.ImageSet | None) -> tuple[Policy | Hybrid, data_module.ImageSet | None]:
    """The parsed policy and the test images to evaluate on, or a ValueError."""
    policy = as_policy(policy)
    if data.name not in NUM_CLASSES:
        raise ValueError(f"cannot train on {data.name!r}; use one of {', '.join(NUM_CLASSES)}")
    if test is not None and (test.name != data.name or len(test) == 0):
        raise ValueError(f"the test set {test!r} must be a non-empty {data.name!r} set")
    if test is not None and recipe.eval_images is not None:
        test = test.subset(range(min(recipe.eval_images, len(test))))
    return policy, test


@dataclass
class _Run:
    """One training run in progress: its images on the device, the model, optimizer, scheduler,
    generators, the identity a saved state must match, and the curves of the epochs done so far."""

    subset: data_module.ImageSet
    device: torch.device
    images: torch.Tensor  # (N, 3, H, W) uint8, on `device`
    labels: torch.Tensor  # (N,)
    model: nn.Module
    memory_format: torch.memory_format
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    order_generator: torch.Generator  # shuffling, on the CPU
    augment_generator: torch.Generator  # crop, flip and policy, on the device
    defense: Defense  # applied to every step's gradient (`recipe.defense`)
    defense_generator: torch.Generator  # the defense's noise, on the device
    identity: dict
    epoch: int = 0  # epochs finished
    seconds: float = 0.0  # training time of those epochs, over all calls
    epoch_losses: list[float] = field(default_factory=list)
    accuracies: list[tuple[int, float]] = field(default_factory=list)

    @classmethod
    def start(cls, recipe: TrainRecipe, subset: data_module.ImageSet, policy: Policy | Hybrid,
              seed: int, device: torch.device) -> _Run:
        """A fresh run: the seeded model, its optimizer and scheduler, the seeded generators."""
        model = models.build_model(recipe.arch, NUM_CLASSES[subset.name], dataset=subset.name,
                                   normalization=recipe.normalization, seed=seed).to(device)
        memory_format = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
        model = model.to(memory_format=memory_format)  # about 1.5× faster convolutions on a 2-core CPU
        check_dp_trainable(model, parse_defense(recipe.defense))
        optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                    nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, recipe.milestone_epochs(), recipe.gamma)
        recipe_fields = asdict(recipe)
        if recipe.defense == "none":  # undefended: the identity states saved before `defense` existed
            del recipe_fields["defense"]
        identity = {"recipe": recipe_fields, "policy": str(policy), "seed": seed,
                    "dataset": subset.name, "images": len(subset)}
        return cls(subset, device, subset.images.to(device), subset.labels.to(device), model, memory_format,
                   optimizer, scheduler, make_generator(seed + 1), make_generator(seed + 2, device),
                   parse_defense(recipe.defense), make_generator(seed + 3, device), identity)

    def state(self) -> dict:
        """The resumable training state, as saved after every epoch (format `STATE_FORMAT`)."""
        return {
            "format": STATE_FORMAT, "identity": self.identity, "epoch": self.epoch, "seconds": self.seconds,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "order_generator": self.order_generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
            "defense_generator": self.defense_generator.get_state(),
            "epoch_losses": self.epoch_losses, "accuracies": self.accuracies,
        }


def _restore(run: _Run, path: Path) -> None:
    """Load the state saved at `path` into `run`; a one-line ValueError naming the file if it is
    damaged, hostile or from another run (delete it, or train without --resume, to start over)."""
    start_over = "delete it, or train without --resume, to start over"
    try:
        state = checkpoints.load_tensors(path, "training state", "cpu")
    except ValueError as error:
        raise ValueError(f"{error}; {start_over}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"training state {path} is not an ats training state; {start_over}")
    if state.get("identity") != run.identity:
        raise ValueError(f"{path} belongs to a different training run; {start_over}")
    try:
        _load_state(run, state)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
        detail = " ".join(str(error).split())[:120] or type(error).__name__
        raise ValueError(f"training state {path} is damaged ({detail}); {start_over}") from None


def _load_state(run: _Run, state: dict) -> None:
    """Put `state` (as `_Run.state` wrote it) into `run`."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.order_generator.set_state(state["order_generator"])
    run.augment_generator.set_state(state["augment_generator"].cpu())
    if "defense_generator" in state:  # states saved before defenses lack it (and trained without one)
        run.defense_generator.set_state(state["defense_generator"].cpu())
    epoch = int(state["epoch"])
    if not 0 <= epoch <= run.scheduler.last_epoch:
        raise ValueError(f"epoch {epoch} does not match its scheduler")
    run.epoch, run.seconds = epoch, float(state["seconds"])
    run.epoch_losses = [float(v) for v in state["epoch_losses"]]
    run.accuracies = [(int(e), float(a)) for e, a in state["accuracies"]]


def _train_epoch(run: _Run, recipe: TrainRecipe, policy: Policy | Hybrid,
                 report: Callable[[int, torch.Tensor], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """One shuffled pass over `run`'s images, augmented on the device; `report(batch, loss)` after
    each batch but the last. Returns the summed loss (each batch's mean × its size) and the last loss."""
    run.model.train()
    order = torch.randperm(len(run.images), generator=run.order_generator).to(run.device)
    total = torch.zeros((), device=run.device)
    batches = -(-len(run.images) // recipe.batch_size)
    loss_fn = LOSS_FUNCTIONS[recipe.loss]
    for batch in range(1, batches + 1):
        index = order[(batch - 1) * recipe.batch_size: batch * recipe.batch_size]
        x = run.images[index].float() / 255.0  # (B, 3, H, W)
        x = transform(x, policy, run.augment_generator, crop_flip=recipe.crop_flip, semantics=recipe.semantics)
        x = x.contiguous(memory_format=run.memory_format)
        run.optimizer.zero_grad(set_to_none=True)
        if run.defense.kind == "dp":  # DP-SGD: per-example gradients, clipped, noised, averaged
            loss = _dp_sgd_gradients(run, x, run.labels[index], loss_fn)
        else:
            loss = loss_fn(run.model(x), run.labels[index])
            loss.backward()
            if run.defense.kind != "none":
                _defend_gradients(run)
        run.optimizer.step()
        total += loss.detach() * len(index)
        if batch < batches:
            report(batch, loss)
    return total, loss


def _defend_gradients(run: _Run) -> None:
    """Put `run.defense` on the batch gradient in place, as `client_update` does to a shared update."""
    params = [p for p in run.model.parameters() if p.grad is not None]
    with torch.no_grad():
        defended = run.defense.apply(tuple(p.grad for p in params), run.defense_generator, per_example=False)
        for p, g in zip(params, defended):
            p.grad.copy_(g)  # keeps the gradient's memory format (channels_last)


def _dp_sgd_gradients(run: _Run, x: torch.Tensor, labels: torch.Tensor, loss_fn) -> torch.Tensor:
    """Put DP-SGD's update (Abadi et al. 2016; `ats.privacy.dp_sgd`) in the parameters' `.grad`:
    every example's gradient (`torch.func.vmap` of `grad`) clipped to C, summed, noised with σ·C
    from the run's defense generator, divided by the batch size. Returns the batch's mean loss."""
    from torch.func import functional_call, grad, vmap

    names = [name for name, p in run.model.named_parameters() if p.requires_grad]
    params = {name: p.detach() for name, p in run.model.named_parameters() if p.requires_grad}
    buffers = dict(run.model.named_buffers())

    def one(params: dict[str, torch.Tensor], image: torch.Tensor, label: torch.Tensor):
        loss = loss_fn(functional_call(run.model, (params, buffers), (image[None],)), label[None])
        return loss, loss.detach()

    grads, losses = vmap(grad(one, has_aux=True), in_dims=(None, 0, 0))(params, x, labels)
    update = dp_sgd(tuple(grads[name] for name in names), run.defense.clip, run.defense.amount,
                    run.defense_generator, aggregate=True)
    for p, g in zip((p for p in run.model.parameters() if p.requires_grad), update):
        p.grad = torch.empty_like(p).copy_(g)  # the parameter's own memory format (channels_last)
    return losses.mean()


def check_dp_trainable(model: nn.Module, defense: Defense) -> None:
    """DP-SGD needs each example's own gradient, which BatchNorm does not have (its statistics mix
    the batch's examples; Opacus refuses it too): a ValueError naming the model and what trains."""
    if defense.kind == "dp" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError(f"DP-SGD training ({defense}) needs per-example gradients, which "
                         f"{type(model).__name__}'s BatchNorm layers mix across the batch; train an architecture "
                         "without BatchNorm (lenet) under DP-SGD")


def _end_epoch(run: _Run, recipe: TrainRecipe, test: data_module.ImageSet | None, epoch_loss: float,
               epoch_started: float, path: Path) -> float | None:
    """Close epoch `run.epoch + 1`: step the lr, record its loss, evaluate when due, save the state
    to `path`. Returns the test accuracy, or None when this epoch is not evaluated."""
    run.epoch += 1
    run.scheduler.step()
    run.epoch_losses.append(epoch_loss)
    accuracy = None
    due = recipe.eval_every and run.epoch % recipe.eval_every == 0
    if test is not None and (due or run.epoch == recipe.epochs):
        accuracy = evaluate(run.model, test, device=run.device)
        run.accuracies.append((run.epoch, accuracy))
    run.seconds += time.perf_counter() - epoch_started
    checkpoints.atomic_save(run.state(), path)
    return accuracy


def _finish(run: _Run, recipe: TrainRecipe, policy: Policy | Hybrid, test: data_module.ImageSet | None,
            out: Path, keep_state: bool, note: str, resumed_from: int) -> TrainResult:
    """Save the trained model to `out` with its `ModelMeta`, drop the state unless `keep_state`."""
    accuracies, device, name = run.accuracies, run.device, run.subset.name
    final_accuracy = accuracies[-1][1] if accuracies and accuracies[-1][0] == recipe.epochs else None
    if test is not None and final_accuracy is None:  # resumed from a finished state
        final_accuracy = evaluate(run.model, test, device=device)
    meta = checkpoints.ModelMeta(
        arch=recipe.arch, dataset=name, num_classes=NUM_CLASSES[name],
        normalization=recipe.normalization or name, policy=str(policy), defense=recipe.defense,
        epochs=recipe.epochs, accuracy=final_accuracy, recipe=recipe.name, seed=run.identity["seed"],
        extra={"recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(recipe).items()},
               "train_images": len(run.subset), "seconds": round(run.seconds, 1), "device": str(device),
               "torch": str(torch.__version__), **({"note": note} if note else {})})
    checkpoints.save_checkpoint(out, run.model, meta)
    if not keep_state:
        state_path(out).unlink(missing_ok=True)
    return TrainResult(out, meta, final_accuracy, recipe.epochs, run.seconds, tuple(run.epoch_losses),
                       tuple(accuracies), str(device), resumed_from)
