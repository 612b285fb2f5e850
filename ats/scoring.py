"""The wiring of the search scores: the S_pri model, the S_acc model, the test images and the config.

Gao et al., "Privacy-preserving Collaborative Learning with Automatic Transformation Search"
(CVPR 2021), §4.2–4.3: S_pri is computed on a model briefly trained on a tiny part of the data
(the shipped `ats/assets/models/tiny-cifar100-resnet20.pt`), S_acc on a seeded random-init model
of the same architecture, both on test images picked by a `ScoreConfig` preset (`ats.scores`).
`ScoringSetup.load` puts these together once, so the command line, the app, the benchmark and the
scripts all score with the same inputs:

    setup = ScoringSetup.load("smoke", device="cpu")
    privacy, accuracy = setup.score("3-1-7")
    run_search(policies, store=store, **setup.inputs(), checkpoint_hash=setup.checkpoint_hash)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ats import checkpoints, models, scores
from ats.data import ImageSet, load_dataset
from ats.policy import Hybrid, Policy
from ats.runtime import PRESETS, make_generator, pick_device


def preset_config(preset: str | scores.ScoreConfig = "laptop", **changes) -> scores.ScoreConfig:
    """The ScoreConfig preset `preset` (smoke, laptop, paper; or a ScoreConfig itself) with `changes`.

    A change of None is ignored, so optional command-line flags can be passed straight on.
    """
    if isinstance(preset, scores.ScoreConfig):
        config = preset
    elif preset in PRESETS:
        config = getattr(scores.ScoreConfig, preset)()
    else:
        raise ValueError(f"score preset {preset!r} is not one of {', '.join(PRESETS)}")
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


def score_checkpoint(path: str | Path | None = None) -> Path:
    """`path`, else the shipped tiny-data S_pri model, with a clear error when that one is missing."""
    if path is not None:
        return Path(path)
    default = scores.default_score_checkpoint()
    if not default.is_file():
        raise ValueError(f"the S_pri model {default} does not exist; build it with "
                         f"`ats train --recipe tiny --out {default}` or pass --checkpoint")
    return default


@dataclass(frozen=True, eq=False)
class ScoringSetup:
    """Everything S_pri and S_acc need, loaded once; `score` and `inputs` hand it on."""

    config: scores.ScoreConfig  # its arch is the models' architecture
    privacy_model: nn.Module  # the tiny-data model behind S_pri (eval mode)
    accuracy_model: nn.Module  # the seeded random-init config.arch behind S_acc (eval mode)
    data: ImageSet  # the test set the scores' images come from
    seed: int  # the S_acc model's initialisation, and the scores' seed unless one is given
    checkpoint: Path | None  # the S_pri model's file; None for an untrained model
    checkpoint_hash: str  # what stored results are keyed by: the file's hash or "untrained-<arch>-seed<seed>"

    @classmethod
    def load(cls, preset: str | scores.ScoreConfig = "laptop", *, checkpoint: str | Path | None = None,
             arch: str | None = None, untrained: bool = False, device: torch.device | str | None = None,
             seed: int = 0, data_root: str | Path | None = None, **changes) -> ScoringSetup:
        """Load the S_pri checkpoint (default: the shipped one), build the S_acc model, load the test set.

        `preset` is a ScoreConfig preset's name or a ScoreConfig; `changes` override its fields
        (`privacy_images=8`; None keeps the preset's value), and its `arch` becomes the
        checkpoint's. `arch`, when given, must be the checkpoint's architecture. `untrained=True`
        uses a seeded untrained `arch` (default: the preset's) for CIFAR-100 instead of a
        checkpoint: a quick look, not the paper's setting. `device` goes through `pick_device`;
        `data_root` is `load_dataset`'s `root`.
        """
        device = device if isinstance(device, torch.device) else pick_device(device)
        config = preset_config(preset, **changes)
        if untrained:
            arch = arch or config.arch
            privacy_model = models.build_model(arch, 100, seed=seed)
            path, key, dataset, num_classes = None, f"untrained-{arch}-seed{seed}", "cifar100", 100
        else:
            path = score_checkpoint(checkpoint)
            privacy_model, meta = checkpoints.load_checkpoint(path, device=device, expect_arch=arch)
            arch, key, dataset, num_classes = meta.arch, checkpoints.checkpoint_hash(path), meta.dataset, meta.num_classes
        config = replace(config, arch=arch)
        accuracy_model = scores.accuracy_model(config, seed, num_classes=num_classes).to(device)
        data = load_dataset(dataset, "test", root=data_root)
        return cls(config, privacy_model.to(device).eval(), accuracy_model, data, seed, path, key)

    def with_config(self, **changes) -> ScoringSetup:
        """The same models and images under a changed ScoreConfig (`privacy_images=4`); not `arch`."""
        if changes.get("arch", self.config.arch) != self.config.arch:
            raise ValueError(f"arch={changes['arch']!r}: the models are {self.config.arch!r}; load a new setup")
        return replace(self, config=replace(self.config, **changes))

    def inputs(self, seed: int | None = None) -> dict:
        """The keyword arguments `scores.score_policy` and `search.run_search` take (seed: this one's)."""
        return dict(privacy_model=self.privacy_model, accuracy_model=self.accuracy_model, data=self.data,
                    config=self.config, seed=self.seed if seed is None else seed)

    def score(self, policy: Policy | Hybrid | str, *, seed: int | None = None
              ) -> tuple[scores.PrivacyScore, scores.AccuracyScore]:
        """S_pri and S_acc of `policy` (`scores.score_policy`), with this setup's seed unless `seed` is given."""
        return scores.score_policy(policy, **self.inputs(seed))

    def privacy(self, policy: Policy | Hybrid | str, *, seed: int | None = None) -> scores.PrivacyScore:
        """S_pri alone, exactly as `score` computes it (for studies that need no S_acc)."""
        device = next(self.privacy_model.parameters()).device
        x, y = self.data.batch(scores.privacy_indices(self.data, self.config), device)
        generator = make_generator(self.seed if seed is None else seed, device)
        return scores.privacy_score(self.privacy_model, policy, x, y, generator=generator, config=self.config)
