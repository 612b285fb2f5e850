"""The benchmark's victims: each (architecture, policy, training stage, training defense) model,
found in the run folder or made once (Gao et al., CVPR 2021, §5.2: one model per policy).

Stage s is its own training run of s epochs by `ats.train` (resumable from its state file);
stage 0 is the seeded initialisation every run starts from. With `train_defense`, a defense's
model is trained with that defense on every step, as the paper's Table 3.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ats import checkpoints, data as data_module
from ats.cells import Victim
from ats.models import NUM_CLASSES, build_model
from ats.recipes import TrainRecipe
from ats.train import evaluate, train

if TYPE_CHECKING:
    from ats.protocol import BenchmarkConfig


def victim_name(recipe: TrainRecipe, victim: Victim, seed: int) -> str:
    """The checkpoint file of `victim` under `recipe` (one file per arch, policy, defense, stage)."""
    defense = "" if victim.defense == "none" else f"-{victim.defense}"
    return f"{recipe.name}-{victim.arch}-{victim.policy.replace('+', '_')}{defense}-e{victim.stage}-seed{seed}.pt"


def victim_recipe(victim: Victim, config: BenchmarkConfig) -> TrainRecipe:
    """The training recipe of `victim`: the protocol's, at its architecture, stage and defense."""
    return replace(config.recipe, arch=victim.arch, epochs=max(1, victim.stage), defense=victim.defense)


def model_path(victim: Victim, config: BenchmarkConfig, *, workdir: Path, seed: int) -> Path:
    """Where `victim`'s checkpoint lives in the run folder `workdir`."""
    return Path(workdir) / "models" / victim_name(victim_recipe(victim, config), victim, seed)


def model_for(victim: Victim, config: BenchmarkConfig, *, workdir: Path, train_data, test_data, seed: int,
              device: torch.device, callback: Callable[[str], None] | None = None) -> tuple[Path, checkpoints.ModelMeta]:
    """The checkpoint of `victim` under `config.recipe`: reused when present, else made. Stage s is
    its own training run of s epochs (resuming an interrupted one from its state file); stage 0
    is the seeded initialisation that every run starts from."""
    recipe = victim_recipe(victim, config)
    path = model_path(victim, config, workdir=workdir, seed=seed)
    if path.is_file():
        _, meta = checkpoints.load_checkpoint(path, device="cpu", expect_arch=victim.arch)
        if (meta.policy, meta.recipe, meta.epochs, meta.defense) != (victim.policy, recipe.name, victim.stage,
                                                                      victim.defense):
            raise ValueError(f"{path} holds a model of policy {meta.policy!r}, recipe {meta.recipe!r}, "
                             f"{meta.epochs} epochs, defense {meta.defense!r}, not this benchmark's; "
                             "move it away or use another --out")
        return path, meta
    path.parent.mkdir(parents=True, exist_ok=True)
    if victim.stage == 0:
        model = build_model(victim.arch, NUM_CLASSES[test_data.name], dataset=test_data.name,
                            normalization=recipe.normalization, seed=seed).to(device)
        meta = checkpoints.ModelMeta(arch=victim.arch, dataset=test_data.name, num_classes=NUM_CLASSES[test_data.name],
                                     normalization=recipe.normalization or test_data.name, policy=victim.policy,
                                     epochs=0, accuracy=evaluate(model.eval(), test_data), recipe=recipe.name,
                                     seed=seed, extra={"note": f"ats benchmark --preset {config.name}: untrained"})
        checkpoints.save_checkpoint(path, model, meta)
        return path, meta

    def report(p) -> None:
        if callback is not None and (p.batch == p.batches or p.batch % 50 == 0):
            callback(f"training {victim.policy} ({victim.arch}, {victim.defense}): epoch {p.epoch}/{p.epochs}, "
                     f"batch {p.batch}/{p.batches}, loss {p.loss:.3f}"
                     + (f", accuracy {p.accuracy:.2%}" if p.accuracy is not None else ""))

    result = train(recipe, policy=victim.policy, data=train_data, test=test_data, out=path, seed=seed,
                   device=device, callback=report, resume=True, note=f"ats benchmark --preset {config.name}")
    return path, result.meta


class VictimModels:
    """Each victim's model: found or made (`model_for`) and hashed on first use, one in memory at a time."""

    def __init__(self, config: BenchmarkConfig, *, workdir: Path, test_data, data_root: str | Path | None,
                 seed: int, device: torch.device, on_train: Callable[[str], None]) -> None:
        self.config, self.workdir, self.test_data, self.data_root = config, workdir, test_data, data_root
        self.seed, self.device, self.on_train = seed, device, on_train
        self.checkpoints: dict[Victim, Path] = {}
        self.accuracies: dict[Victim, float | None] = {}
        self._digests: dict[Victim, str] = {}  # victim -> checkpoint hash, read once
        self._train_data = None
        self._loaded: dict[Victim, nn.Module] = {}

    def get(self, victim: Victim) -> tuple[nn.Module, str]:
        """`victim`'s model, in eval mode on the device, and its checkpoint hash."""
        if victim not in self.checkpoints:
            if self._train_data is None and victim.stage > 0:
                self._train_data = data_module.load_dataset("cifar100", "train", root=self.data_root)
            path, meta = model_for(victim, self.config, workdir=self.workdir, train_data=self._train_data,
                                   test_data=self.test_data, seed=self.seed, device=self.device,
                                   callback=self.on_train)
            self.checkpoints[victim], self.accuracies[victim] = path, meta.accuracy
            self._digests[victim] = checkpoints.checkpoint_hash(path)
        if victim not in self._loaded:
            self._loaded.clear()  # one model in memory at a time
            self._loaded[victim] = checkpoints.load_checkpoint(self.checkpoints[victim], device=self.device)[0].eval()
        return self._loaded[victim], self._digests[victim]

    def named_checkpoints(self) -> dict[str, str]:
        """Each victim's checkpoint, named "<arch> <policy> <defense> e<stage>"."""
        return {f"{v.arch} {v.policy} {v.defense} e{v.stage}": str(p) for v, p in self.checkpoints.items()}
