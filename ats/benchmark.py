"""The benchmark: how much does each policy, and each classic gradient defense, lower what an
attacker recovers, and what does it cost in accuracy? (Gao et al., CVPR 2021, §5; Tables 1 and 3.)

The protocol, per preset (`BenchmarkConfig`):

* **Models.** One model per policy, trained with that policy by `ats.train` (crop → flip →
  policy, the paper's optimizer), or reused when its checkpoint already exists. "none" is the
  paper's crop-and-flip baseline.
* **Table.** For every policy × gradient defense, the attack set's first `images` test images are
  attacked one by one (batched) on that policy's model: the client transforms each image as in
  training, shares the gradient of 0.5·CE, and the defense (pruning, Gaussian or Laplacian noise)
  is applied to that shared gradient *at attack time*, which the original code never did (its
  `--defense` flag is parsed and unused). Reported: PSNR and SSIM against T(x) (the paper's
  convention) and against x, and the model's test accuracy.
* **Policy-aware attacker.** Each policy is also attacked by `AttackConfig.aware_ig`, which knows
  the policy and learns its translation and flip; PSNR against x with and without it.
* **Does S_pri predict privacy?** `correlation` random policies are scored (S_pri on the shipped
  tiny-data model, or another given one) and attacked on the "none" model with the policy applied by the client; the
  Pearson and Spearman correlations between S_pri and PSNR are reported, whatever they are.

Every cell is a `BenchmarkRow` written to the results database as soon as it finishes, keyed by
its study, policy, defense, attack, model hash, image count, iterations and seed, so an
interrupted run resumes where it stopped and never recomputes or loses a finished cell.

The runner is three steps: `plan_cells` lists the protocol's cells, `VictimModels` trains or finds
each policy's model once, and `run_cell` attacks one cell. The published numbers are in
`ats.published`, the CSV, tables and report in `ats.report`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ats import attacks, checkpoints, data as data_module, search
from ats.evaluation import SCORED, evaluate_reconstruction, summarize
from ats.cells import CellKey, cell_attack, cell_key, plan_cells
from ats.federated import DEFENSES, client_update, parse_defense
from ats.indices import ATTACK_SET
from ats.policy import Policy, parse_policy
from ats.published import PAPER, PAPER_POLICIES, RESCIENCE
from ats.runtime import make_generator
from ats.scores import ScoreConfig, default_score_checkpoint
from ats.scoring import ScoringSetup
from ats.stats import correlation_study
from ats.store import BenchmarkRow, Store
from ats.recipes import TrainRecipe
from ats.train import train


@dataclass(frozen=True)
class BenchmarkConfig:
    """One scale of the protocol; presets are classmethods, overrides go through `dataclasses.replace`."""

    name: str
    recipe: TrainRecipe  # how each policy's model is trained
    attack: attacks.AttackConfig = field(default_factory=attacks.AttackConfig.ig)
    images: int = 100  # the attack set's first n test images
    policies: tuple[str, ...] = PAPER_POLICIES
    random: int = 10  # extra random policies in the table (the paper's "Random", averaged)
    defenses: tuple[str, ...] = DEFENSES
    aware: bool = True  # also attack every policy with the policy-aware attacker
    correlation: int = 0  # random policies scored and attacked for the S_pri–PSNR study (0: skip)
    score: ScoreConfig = field(default_factory=ScoreConfig)  # S_pri of the correlation study

    def __post_init__(self) -> None:
        if not 1 <= self.images <= len(ATTACK_SET):
            raise ValueError(f"images={self.images} must lie in 1–{len(ATTACK_SET)}")
        if self.random < 0 or self.correlation < 0:
            raise ValueError(f"random={self.random} and correlation={self.correlation} must not be negative")
        if self.correlation == 1 or self.correlation == 2:
            raise ValueError("a correlation needs at least 3 policies (or 0 to skip it)")
        for policy in self.policies:
            parse_policy(policy)  # a malformed policy fails here, before any work
        for defense in self.defenses:
            parse_defense(defense)
        if not self.policies or not self.defenses:
            raise ValueError("the benchmark needs at least one policy and one defense")

    @classmethod
    def paper(cls) -> BenchmarkConfig:
        """The paper's protocol: ResNet20-4, 200 epochs, IG with 4,800 iterations on 100 images (GPU days)."""
        return cls(name="paper", recipe=TrainRecipe.paper(), correlation=20, score=ScoreConfig.paper())

    @classmethod
    def laptop(cls) -> BenchmarkConfig:
        """About 45 minutes on a 2-core CPU: ResNet20 (width 16) trained 3 epochs per policy, IG with
        200 iterations on 8 images, every defense, one random policy, 10 policies for the correlation."""
        recipe = replace(TrainRecipe.laptop(), name="bench-laptop", epochs=3, eval_every=0)
        return cls(name="laptop", recipe=recipe, attack=replace(attacks.AttackConfig.ig(), iterations=200),
                   images=8, random=1, correlation=10, score=ScoreConfig.laptop())

    @classmethod
    def smoke(cls) -> BenchmarkConfig:
        """For tests and CI: a 200-image model, 4 iterations on 2 images, 2 policies × 2 defenses."""
        return cls(name="smoke", recipe=TrainRecipe.smoke(), attack=replace(attacks.AttackConfig.ig(), iterations=4),
                   images=2, policies=("none", "3-1-7"), random=0, defenses=("none", "prune-70"),
                   correlation=3, score=ScoreConfig.smoke())

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


@dataclass(frozen=True)
class BenchmarkEvent:
    """Progress: what is being done (`stage`: train, attack, score), and how far the run is."""

    stage: str
    message: str
    done: int  # cells finished (stored or skipped)
    total: int
    row: BenchmarkRow | None = None  # the cell that just finished, if any
    skipped: bool = False  # True when that cell was found in the database


@dataclass(frozen=True)
class BenchmarkResult:
    config: BenchmarkConfig
    rows: tuple[BenchmarkRow, ...]  # this run's cells, in protocol order
    computed: int  # cells computed now (the rest came from the database)
    seconds: float
    correlation: dict | None  # pearson/spearman of S_pri vs PSNR, when the study ran
    checkpoints: dict  # policy -> checkpoint path
    score_checkpoint: str = ""  # the S_pri model of the correlation study

    def table(self) -> list[dict]:
        """One flat dict per cell, with the paper's and the reproduction's numbers where they exist."""
        out, paper_policies = [], {p for p, _ in PAPER}
        for row in self.rows:
            flat = {"study": row.study, "policy": row.policy, "defense": row.defense, "attack": row.attack,
                    "images": row.images, "iterations": row.iterations, **row.summary}
            if row.study == "table":
                paper_key = (row.policy if row.policy in paper_policies else "random", row.defense)
                flat["paper_psnr"], flat["paper_accuracy"] = PAPER.get(paper_key, (math.nan, math.nan))
                flat["rescience_psnr"] = RESCIENCE.get(row.policy, (math.nan,))[0] if row.defense == "none" else math.nan
            out.append(flat)
        return out


def cell_summary(results, accuracy: float | None, privacy: float | None = None) -> dict:
    """The aggregates of one cell: `summarize`'s, under its names (`psnr_tx_mean` against T(x),
    `psnr_x_mean` against x, …; NaN when no image finished), and the model's test accuracy."""
    s = summarize(results)
    stats = [f"{key}_{stat}" for key in SCORED for stat in ("mean", "std", "median")]
    summary = {name: s.get(name, math.nan) for name in stats}
    summary.update(label_accuracy=s["label_accuracy"], failed=s["failed"],
                   accuracy=math.nan if accuracy is None else float(accuracy))
    if privacy is not None:
        summary["privacy"] = float(privacy)
    return summary


def attack_cell(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, policy: str, defense: str,
                config: attacks.AttackConfig, seed: int, indices: Sequence[int]):
    """Attack every image of `x` alone (one batched run): the client's update with `policy` and
    `defense`, then `config` (told the policy, which only the policy-aware attacker uses).
    Returns the per-image results and the update the attacker saw."""
    device = next(model.parameters()).device
    generator = make_generator(seed, device)  # the same crops, flips and signs for every defense
    parsed = parse_policy(policy)
    crop_flip = parsed != Policy.none()  # as the original: the baseline's attacked images are x itself
    shared, private = client_update(model, x, y, parsed, defense, crop_flip=crop_flip, generator=generator,
                                    per_example=True)
    recon = attacks.reconstruct(model, shared, config, generator=make_generator(seed + 1, device),
                                policy=parsed, crop_flip=crop_flip)
    return evaluate_reconstruction(recon, private, x, indices), shared


def model_for(policy: str, config: BenchmarkConfig, *, workdir: Path, train_data, test_data, seed: int,
              device: torch.device, callback: Callable[[str], None] | None = None) -> tuple[Path, checkpoints.ModelMeta]:
    """The checkpoint of `policy`'s model under `config.recipe`: reused when present, else trained
    (resuming an interrupted training from its state file)."""
    name = f"{config.recipe.name}-{config.recipe.arch}-{policy.replace('+', '_')}-seed{seed}.pt"
    path = workdir / "models" / name
    if path.is_file():
        _, meta = checkpoints.load_checkpoint(path, device="cpu", expect_arch=config.recipe.arch)
        if meta.policy != policy or meta.recipe != config.recipe.name or meta.epochs != config.recipe.epochs:
            raise ValueError(f"{path} holds a model of policy {meta.policy!r}, recipe {meta.recipe!r}, "
                             f"{meta.epochs} epochs, not this benchmark's; move it away or use another --out")
        return path, meta
    path.parent.mkdir(parents=True, exist_ok=True)

    def report(p) -> None:
        if callback is not None and (p.batch == p.batches or p.batch % 50 == 0):
            callback(f"training {policy}: epoch {p.epoch}/{p.epochs}, batch {p.batch}/{p.batches}, "
                     f"loss {p.loss:.3f}" + (f", accuracy {p.accuracy:.2%}" if p.accuracy is not None else ""))

    result = train(config.recipe, policy=policy, data=train_data, test=test_data,
                   out=path, seed=seed, device=device, callback=report, resume=True,
                   note=f"ats benchmark --preset {config.name}")
    return path, result.meta


# --- the runner: plan the cells, get each victim model once, run one cell --------------------------

class VictimModels:
    """Each policy's model: found or trained (`model_for`) and hashed on first use, one in memory at a time."""

    def __init__(self, config: BenchmarkConfig, *, workdir: Path, test_data, data_root: str | Path | None,
                 seed: int, device: torch.device, on_train: Callable[[str], None]) -> None:
        self.config, self.workdir, self.test_data, self.data_root = config, workdir, test_data, data_root
        self.seed, self.device, self.on_train = seed, device, on_train
        self.checkpoints: dict[str, Path] = {}
        self.accuracies: dict[str, float | None] = {}
        self._digests: dict[str, str] = {}  # policy -> checkpoint hash, read once
        self._train_data = None
        self._loaded: dict[str, nn.Module] = {}

    def get(self, policy: str) -> tuple[nn.Module, str]:
        """`policy`'s model, in eval mode on the device, and its checkpoint hash."""
        if policy not in self.checkpoints:
            if self._train_data is None:
                self._train_data = data_module.load_dataset("cifar100", "train", root=self.data_root)
            path, meta = model_for(policy, self.config, workdir=self.workdir, train_data=self._train_data,
                                   test_data=self.test_data, seed=self.seed, device=self.device,
                                   callback=self.on_train)
            self.checkpoints[policy], self.accuracies[policy] = path, meta.accuracy
            self._digests[policy] = checkpoints.checkpoint_hash(path)
        if policy not in self._loaded:
            self._loaded.clear()  # one model in memory at a time
            self._loaded[policy] = checkpoints.load_checkpoint(self.checkpoints[policy], device=self.device)[0].eval()
        return self._loaded[policy], self._digests[policy]


class PrivacyScorer:
    """S_pri of the correlation study's policies on one model, set up (`ScoringSetup`) on first use.

    `key` names the model (its hash) and the score definition: a correlation cell depends on both.
    It is built from the given config, not the set-up one (which takes the checkpoint's arch), so
    stored cells keep their keys."""

    def __init__(self, path: Path, config: ScoreConfig, *, seed: int, device: torch.device,
                 data_root: str | Path | None = None) -> None:
        self.path, self.config, self.seed, self.device, self.data_root = path, config, seed, device, data_root
        self.key = f"{checkpoints.checkpoint_hash(path)}:{config.definition()}"
        self._setup: ScoringSetup | None = None

    def score(self, policy: str) -> float:
        if self._setup is None:
            self._setup = ScoringSetup.load(self.config, checkpoint=self.path, device=self.device, seed=self.seed,
                                            data_root=self.data_root)
        return self._setup.privacy(policy).value


def run_cell(key: CellKey, attack: attacks.AttackConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             indices: Sequence[int], accuracy: float | None, privacy: PrivacyScorer | None) -> BenchmarkRow:
    """Attack one cell (scoring its policy first, in the correlation study) and return its row."""
    started = time.perf_counter()
    score = privacy.score(key.policy) if key.study == "correlation" else None
    results, _ = attack_cell(model, x, y, policy=key.policy, defense=key.defense, config=attack, seed=key.seed,
                             indices=indices)
    return BenchmarkRow(*key.astuple(), cell_summary(results, accuracy, score), tuple(r.to_dict() for r in results),
                        time.perf_counter() - started)


def run_benchmark(config: BenchmarkConfig, *, store: Store, workdir: str | Path, seed: int = 0,
                  device: torch.device | str = "cpu", data_root: str | Path | None = None,
                  score_checkpoint: str | Path | None = None,
                  callback: Callable[[BenchmarkEvent], None] | None = None) -> BenchmarkResult:
    """Run (or resume) the protocol of `config`; every finished cell goes to `store` at once."""
    device, started = torch.device(device), time.perf_counter()
    cells, rows, computed = plan_cells(config, seed), [], 0
    emit = callback or (lambda event: None)
    test = data_module.load_dataset("cifar100", "test", root=data_root)
    indices = ATTACK_SET[: config.images]
    x, y = test.batch(indices, device)
    victims = VictimModels(config, workdir=Path(workdir), test_data=test, data_root=data_root, seed=seed,
                           device=device, on_train=lambda m: emit(BenchmarkEvent("train", m, len(rows), len(cells))))
    score_path = Path(score_checkpoint) if score_checkpoint is not None else default_score_checkpoint()
    privacy = None
    if any(cell.study == "correlation" for cell in cells):
        privacy = PrivacyScorer(score_path, config.score, seed=seed, device=device, data_root=data_root)
    for cell in cells:
        what = f"{cell.study} {cell.policy} / {cell.defense}"
        model, digest = victims.get(cell.victim)
        key = cell_key(cell, config, digest=digest, seed=seed, privacy_key=privacy.key if privacy else "")
        stored = store.get_benchmark(key.astuple())
        if stored is not None:
            rows.append(stored)
            emit(BenchmarkEvent("attack", f"{what}: already in {store.path}", len(rows), len(cells), stored,
                                skipped=True))
            continue
        attack = cell_attack(cell, config)
        emit(BenchmarkEvent("attack", f"{cell.study}: attacking {cell.policy} / {cell.defense} with {attack.name}",
                            len(rows), len(cells)))
        row = run_cell(key, attack, model, x, y, indices=indices, accuracy=victims.accuracies[cell.victim],
                       privacy=privacy)
        store.put_benchmark(row)
        rows.append(row)
        computed += 1
        emit(BenchmarkEvent("attack", f"{what}: PSNR {row.summary['psnr_tx_mean']:.2f} dB vs T(x), "
                            f"{row.summary['psnr_x_mean']:.2f} dB vs x", len(rows), len(cells), row))
    return BenchmarkResult(config, tuple(rows), computed, time.perf_counter() - started, correlation_study(rows),
                           {p: str(c) for p, c in victims.checkpoints.items()}, str(score_path))
