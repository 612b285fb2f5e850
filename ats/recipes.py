"""Training recipes: how the benchmark's models and the tiny-data model M_s are trained.

Gao et al. (CVPR 2021, §5.2) train with inversefed's "conservative" strategy: SGD with Nesterov
momentum 0.9, lr 0.1, weight decay 5e-4, batch 128, `MultiStepLR` ×0.1 at `epochs // 2.667`,
`// 1.6`, `// 1.142` (74, 124, 175 for 200 epochs), loss 0.5·CE. `TrainRecipe` holds these
numbers with presets as classmethods; `ats.train.train` runs one. See docs/design.md §3.
`defense` trains under a classic gradient defense (pruning, Gaussian or Laplacian noise on every
step's gradient, as `ats.federated` applies it to a shared update), for the accuracies of Table 3.
"""
from __future__ import annotations

from dataclasses import dataclass

from ats.federated import LOSSES as LOSS_FUNCTIONS
from ats.federated import parse_defense
from ats.ops import check_semantics

LOSSES = tuple(LOSS_FUNCTIONS)  # the loss names federated.py defines


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
    defense: str = "none"  # a gradient defense on every step ("prune-70", "gauss-1e-3", "lap-1e-2", DP-SGD "dp-1-1.1")

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
        object.__setattr__(self, "defense", str(parse_defense(self.defense)))  # canonical: "gauss-1e-3"

    def milestone_epochs(self) -> list[int]:
        """The epochs after which the lr drops: [74, 124, 175] for 200 epochs, as the original computes."""
        return [int(self.epochs // m) for m in self.milestones]
