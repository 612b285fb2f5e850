"""The benchmark's protocol at each scale: `BenchmarkConfig` and its presets (paper, laptop, smoke).

Gao et al. (CVPR 2021, §5) train ResNet20-4 for 200 epochs per policy and attack 100 test images
with IG × 4,800 under each gradient defense (Tables 1 and 3). A config says which policies,
defenses, training stages, attacks and regimes a run covers and how many images each cell
attacks; `ats.cells` turns it into cells and `ats.benchmark` runs them. Why the laptop preset
attacks DLG's LeNet with iDLG is measured and written down in `ats.report.RATIONALE`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ats import attacks, search
from ats.federated import DEFENSES, parse_defense
from ats.indices import ATTACK_SET
from ats.models import build_model
from ats.policy import parse_policy
from ats.published import PAPER_POLICIES
from ats.recipes import TrainRecipe
from ats.scores import ScoreConfig
from ats.threats import check_client_split, parse_threat


@dataclass(frozen=True)
class BenchmarkConfig:
    """One scale of the protocol; presets are classmethods, overrides go through `dataclasses.replace`."""

    name: str
    recipe: TrainRecipe  # how each policy's model is trained (its epochs: the longest stage)
    attack: attacks.AttackConfig = field(default_factory=attacks.AttackConfig.ig)
    images: int = 100  # the attack set's first n test images
    policies: tuple[str, ...] = PAPER_POLICIES
    random: int = 10  # extra random policies in the table (the paper's "Random", averaged)
    defenses: tuple[str, ...] = DEFENSES
    defense_policies: tuple[str, ...] | None = None  # attacked under every defense (None: all; others: "none" only)
    aware: bool = True  # also attack every policy with the policy-aware attacker
    aware_restarts: int = 8  # flip × x-sign × y-sign: every hypothesis of the aware attacker
    aware_policies: tuple[str, ...] | None = None  # the policies the aware attacker attacks (None: all)
    aware_screen: int = 0  # iterations every hypothesis runs before only the cheapest goes on (0: all to the end)
    correlation: int = 0  # random policies scored and attacked for the S_pri–PSNR study (0: skip)
    correlation_iterations: int = 0  # the correlation study's attack iterations (0: the table attack's)
    score: ScoreConfig = field(default_factory=ScoreConfig)  # S_pri of the correlation study
    stage: int | None = None  # the table's training stage in epochs (None: the recipe's epochs)
    stages: tuple[int, ...] = ()  # other stages the undefended attack is run at (leakage over training)
    stage_policies: tuple[str, ...] | None = None  # the policies attacked at every stage (None: all)
    regimes: tuple[tuple[str, str, int, int], ...] = ()  # (arch, attack preset, iterations, stage), undefended
    train_defense: bool = False  # Table 3 as the paper ran it: each defense's model trained under it
    threats: tuple[str, ...] = ()  # other threat models (`ats.threats`: batch-B, fedavg-E-K), undefended
    threat_policies: tuple[str, ...] = ("none",)  # the policies attacked under every threat
    grid_images: int = 8  # reconstructions kept per cell for the report's image grids

    def __post_init__(self) -> None:
        if not 1 <= self.images <= len(ATTACK_SET):
            raise ValueError(f"images={self.images} must lie in 1–{len(ATTACK_SET)}")
        if self.random < 0 or self.correlation < 0:
            raise ValueError(f"random={self.random} and correlation={self.correlation} must not be negative")
        if self.correlation_iterations < 0:
            raise ValueError(f"correlation_iterations={self.correlation_iterations} must not be negative")
        if self.correlation == 1 or self.correlation == 2:
            raise ValueError("a correlation needs at least 3 policies (or 0 to skip it)")
        for policy in (*self.policies, *(self.stage_policies or ()), *(self.aware_policies or ()),
                       *(self.defense_policies or ())):
            parse_policy(policy)  # a malformed policy fails here, before any work
        for defense in self.defenses:
            parse_defense(defense)
        if self.train_defense:  # DP-SGD trains only models without BatchNorm: fail before any work
            from ats.federated import parse_defense as parse
            from ats.train import check_dp_trainable

            for defense in self.defenses:
                check_dp_trainable(build_model(self.recipe.arch), parse(defense))
        for threat in self.threats:  # a malformed threat, or images that do not split into its clients
            check_client_split(parse_threat(threat), self.images)
        for policy in self.threat_policies:
            parse_policy(policy)
        if not self.policies or not self.defenses:
            raise ValueError("the benchmark needs at least one policy and one defense")
        if self.stage is None:
            object.__setattr__(self, "stage", self.recipe.epochs)
        if any(s < 0 or s > self.recipe.epochs for s in (self.stage, *self.stages)):
            raise ValueError(f"training stages {(self.stage, *self.stages)} must lie in 0–{self.recipe.epochs} "
                             "(the recipe's epochs)")
        if self.aware_restarts < 1 or self.grid_images < 0 or self.aware_screen < 0:
            raise ValueError("aware_restarts must be at least 1, aware_screen and grid_images not negative")
        for arch, attack, iterations, stage in self.regimes:
            attacks.AttackConfig.preset(attack)
            build_model(arch)  # an unknown architecture fails here
            if iterations < 1 or not 0 <= stage <= self.recipe.epochs:
                raise ValueError(f"regime {arch}/{attack}: iterations {iterations} and stage {stage} out of range")

    @property
    def correlation_budget(self) -> int:
        """The correlation study's attack iterations: its own, or the table attack's."""
        return self.correlation_iterations or self.attack.iterations

    @classmethod
    def paper(cls) -> BenchmarkConfig:
        """The paper's protocol: ResNet20-4, 200 epochs, IG with 4,800 iterations on 100 images (GPU
        days), leakage at 0, 1, 10 and 50 epochs too."""
        return cls(name="paper", recipe=TrainRecipe.paper(), correlation=100, score=ScoreConfig.paper(),
                   stages=(0, 1, 10, 50), stage_policies=("none", "3-1-7+43-18-18"))

    @classmethod
    def laptop(cls) -> BenchmarkConfig:
        """About an hour on a 2-core CPU (51 min measured), in a setting where the undefended attack
        leaks: DLG's sigmoid LeNet trained 5 epochs per policy (lr 0.05, constant), iDLG with 100 L-BFGS
        iterations on 32 images; the two gradient defenses on the undefended policy only (the
        paper's Table 3), each on a model trained under it; leakage at 0, 1 and 5 epochs without a
        policy; the aware attacker on the hybrid (its 8 hypotheses screened for 10 iterations, the
        cheapest run on to 100); 30 random policies for the correlation, attacked with 40
        iterations; the paper's IG on ResNet20 and on this LeNet as regimes (see
        docs/reproduction.md for why and for what each part costs)."""
        recipe = replace(TrainRecipe.laptop(), name="bench-laptop", arch="lenet", epochs=5, lr=0.05,
                         milestones=(), eval_every=0)
        return cls(name="laptop", recipe=recipe, attack=replace(attacks.AttackConfig.idlg(), iterations=100),
                   images=32, random=0, defenses=("none", "prune-70", "gauss-1e-2"), defense_policies=("none",),
                   correlation=30, correlation_iterations=40, score=ScoreConfig.laptop(), stages=(0, 1),
                   stage_policies=("none",),
                   aware_policies=("3-1-7+43-18-18",), aware_screen=10, regimes=(("lenet", "ig", 200, 5), ("resnet20", "ig", 200, 0)), train_defense=True)

    @classmethod
    def smoke(cls) -> BenchmarkConfig:
        """For tests and CI: a 200-image model, 4 iterations on 2 images, 2 policies × 3 defenses
        (DP-SGD among them), the two aggregated threats on "none"."""
        return cls(name="smoke", recipe=TrainRecipe.smoke(), attack=replace(attacks.AttackConfig.ig(), iterations=4),
                   images=2, policies=("none", "3-1-7"), random=0, defenses=("none", "prune-70", "dp-1-0.5"),
                   threats=("batch-2", "fedavg-1-2"),
                   correlation=3, score=ScoreConfig.smoke(), stages=(0,), stage_policies=("none",),
                   regimes=(("lenet", "ig", 3, 0),), aware_restarts=2, aware_screen=2, grid_images=2)

    @classmethod
    def preset(cls, name: str) -> BenchmarkConfig:
        presets = {"paper": cls.paper, "laptop": cls.laptop, "smoke": cls.smoke}
        if name not in presets:
            raise ValueError(f"benchmark preset {name!r} is not one of {', '.join(presets)}")
        return presets[name]()

    def table_policies(self, seed: int) -> tuple[str, ...]:
        """The table's policies: the given ones, then `random` seeded random ones not among them."""
        given = tuple(str(parse_policy(p)) for p in self.policies)
        pool = [str(p) for p in search.candidates(max(64, 4 * self.random), seed=seed + 7)]
        return given + tuple(p for p in pool if p not in given)[: self.random]

    def correlation_policies(self, seed: int) -> tuple[str, ...]:
        return tuple(str(p) for p in search.candidates(self.correlation, seed=seed + 11)) if self.correlation else ()
