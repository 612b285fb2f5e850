"""The benchmark: how much does a shared gradient leak, and how much does each policy, and each
classic gradient defense, hide, at what cost in accuracy? (Gao et al., CVPR 2021, §5; Tables 1, 3.)

The protocol, per preset (`ats.protocol.BenchmarkConfig`), planned as cells by `ats.cells`:

* **Models** (`ats.victims`). One model per policy, trained with it by `ats.train` (crop → flip →
  policy), at each training stage the protocol attacks; with `train_defense`, each defense's model
  is trained under that defense (Table 3 as the paper ran it). "none" is the crop-and-flip baseline.
* **Table.** For every policy × gradient defense, the attack set's first `images` test images are
  attacked one by one (batched) on that policy's model: the client transforms each image as in
  training, shares the gradient of 0.5·CE, and the defense is applied to that shared gradient at
  attack time (the original code parsed `--defense` and never used it).
* **Stages, aware attacker, regimes, correlation**: the undefended attack at other training stages,
  the policy-aware attacker (all 8 flip and shift-sign hypotheses), other (model, attack) settings,
  and S_pri against PSNR over random policies applied by the client on the "none" model.

Every image is scored against x, against T(x), aligned to x, and beside what trivial guesses
score (`ats.evaluation`, `ats.baselines`); each cell carries bootstrap intervals, and keeps its
first reconstructions for the report's grids (`grid_path`). What the cells support (leakage,
paired tests with Holm's correction) is `ats.evidence`; tables and the report are `ats.report`.

Every cell is a `BenchmarkRow` written to the results database as soon as it finishes, keyed by
its study, policy, defense, attack, model hash (which tells stages and training defenses apart),
image count, iterations and seed, so an interrupted run resumes where it stopped and never
recomputes or loses a finished cell.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ats import attacks, checkpoints, data as data_module
from ats.cells import CellKey, cell_attack, cell_key, plan_cells
from ats.evaluation import SCORED, summarize
from ats.indices import ATTACK_SET
from ats.protocol import BenchmarkConfig
from ats.published import PAPER, RESCIENCE
from ats.scores import ScoreConfig, default_score_checkpoint
from ats.scoring import ScoringSetup
from ats.stats import bootstrap_ci, correlation_study
from ats.store import BenchmarkRow, Store
from ats.threats import attack_threat
from ats.victims import VictimModels

if TYPE_CHECKING:
    from ats.distributed import RayOptions


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
    failed: tuple = ()  # (key, error) of the cells (and models) a Ray run recorded as failed

    def table(self) -> list[dict]:
        """One flat dict per cell, with the paper's and the reproduction's numbers where they exist."""
        out, paper_policies = [], {p for p, _ in PAPER}
        for row in self.rows:
            flat = {"study": row.study, "policy": row.policy, "defense": row.defense, "attack": row.attack,
                    "stage": row.summary.get("stage"), "images": row.images, "iterations": row.iterations,
                    "threat": "fedsgd", **row.summary}
            if row.study == "table":
                paper_key = (row.policy if row.policy in paper_policies else "random", row.defense)
                flat["paper_psnr"], flat["paper_accuracy"] = PAPER.get(paper_key, (math.nan, math.nan))
                flat["rescience_psnr"] = RESCIENCE.get(row.policy, (math.nan,))[0] if row.defense == "none" else math.nan
            out.append(flat)
        return out


def cell_summary(results, accuracy: float | None, privacy: float | None = None, *, stage: int | None = None,
                 arch: str = "", extra: dict | None = None) -> dict:
    """The aggregates of one cell: `summarize`'s, under its names (`psnr_tx_mean` against T(x),
    `psnr_x_mean` against x, `baseline_grey_median`, …; NaN when no image finished), 95 % bootstrap
    intervals on the median and mean PSNR against x, the model's test accuracy, stage and arch."""
    s = summarize(results)
    stats = [f"{key}_{stat}" for key in SCORED for stat in ("mean", "std", "median")]
    summary = {name: s.get(name, math.nan) for name in stats}
    ok = [r.psnr_x for r in results if r.status == "ok"]
    _, summary["psnr_x_ci_low"], summary["psnr_x_ci_high"] = bootstrap_ci(ok, "median")
    _, summary["psnr_x_mean_ci_low"], summary["psnr_x_mean_ci_high"] = bootstrap_ci(ok, "mean")
    summary.update(label_accuracy=s["label_accuracy"], failed=s["failed"],
                   accuracy=math.nan if accuracy is None else float(accuracy))
    if stage is not None:
        summary["stage"] = int(stage)
    if arch:
        summary["arch"] = arch
    if privacy is not None:
        summary["privacy"] = float(privacy)
    summary.update(extra or {})
    return summary


def attack_cell(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, policy: str, defense: str,
                config: attacks.AttackConfig, seed: int, indices: Sequence[int], threat: str = "fedsgd"):
    """Attack the images of `x` as `threat` deals them to clients (fedsgd: every image alone, in
    one batched run; `ats.threats.attack_threat`): the client's update with `policy` and `defense`,
    then `config` (told the policy, which only the policy-aware attacker uses).
    Returns the per-image results, the reconstruction and what the client kept."""
    outcome = attack_threat(model, x, y, threat, config, policy=policy, defense=defense, seed=seed, indices=indices)
    return outcome.results, outcome.recon, outcome.private


def dp_budget(defense: str, recipe, stage: int, *, trained: bool) -> dict:
    """For a DP-SGD cell (`dp-C-σ`): ε of the one attacked update (sampling rate 1, one step) and,
    when the victim was trained under that DP-SGD (`trained`), ε of its training to `stage` epochs
    (`ats.privacy.training_epsilon` over the recipe's CIFAR-100 share and batch), at δ = 1e-5."""
    from ats.federated import parse_defense
    from ats.privacy import DP_DELTA, training_epsilon, update_epsilon

    parsed = parse_defense(defense)
    if parsed.kind != "dp":
        return {}
    out = {"epsilon_update": update_epsilon(parsed.amount), "delta": DP_DELTA}
    if trained:
        images = CIFAR100_TRAIN_CLASSES * max(1, round(CIFAR100_TRAIN_PER_CLASS * recipe.data_fraction))
        out["epsilon_train"] = training_epsilon(parsed.amount, recipe.batch_size, images, stage)
    return out


CIFAR100_TRAIN_CLASSES, CIFAR100_TRAIN_PER_CLASS = 100, 500  # the train split behind the recipes' shares


# --- the runner: plan the cells, get each victim model once (`ats.victims`), run one cell ----------

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


def grid_path(workdir: str | Path, key: CellKey) -> Path:
    """Where a cell's first reconstructions are kept for the report's image grids."""
    digest = hashlib.sha256(repr(key.astuple()).encode()).hexdigest()[:16]
    return Path(workdir) / "grids" / f"{key.study}-{digest}.pt"


def save_grid(path: Path, key: CellKey, recon, private, n: int) -> None:
    """The first `n` reconstructions (x as the attacker estimates it) and T(x), as uint8 pixels."""
    if n <= 0:
        return
    as_bytes = lambda t: (t[:n].detach().cpu().float().nan_to_num(0.5).clamp(0, 1) * 255).round().to(torch.uint8)  # noqa: E731
    payload = {"key": key.astuple(), "recon": as_bytes(recon.images), "transformed": as_bytes(private.transformed)}
    checkpoints.atomic_save(payload, path)


def run_cell(key: CellKey, attack: attacks.AttackConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             indices: Sequence[int], accuracy: float | None, privacy: PrivacyScorer | None, stage: int | None = None,
             arch: str = "", grid: Path | None = None, grid_images: int = 0, threat: str = "fedsgd",
             extra: dict | None = None) -> BenchmarkRow:
    """Attack one cell (scoring its policy first, in the correlation study) under `threat` and
    return its row, `extra` (a DP budget, say) in its summary; with `grid`, its first
    `grid_images` reconstructions are saved there."""
    started = time.perf_counter()
    score = privacy.score(key.policy) if key.study == "correlation" else None
    results, recon, private = attack_cell(model, x, y, policy=key.policy, defense=key.defense, config=attack,
                                          seed=key.seed, indices=indices, threat=threat)
    if grid is not None:
        save_grid(grid, key, recon, private, grid_images)
    extra = {**(extra or {}), **({"threat": threat} if threat != "fedsgd" else {})}
    summary = cell_summary(results, accuracy, score, stage=stage, arch=arch, extra=extra)
    return BenchmarkRow(*key.astuple(), summary, tuple(r.to_dict() for r in results), time.perf_counter() - started)


def cell_extras(cell, config: BenchmarkConfig) -> dict:
    """`run_cell`'s `threat` and `extra` (the DP budget) for `cell`."""
    victim = cell.victim(config)
    return {"threat": cell.threat, "extra": dp_budget(cell.defense, config.recipe, cell.stage,
                                                      trained=victim.defense == cell.defense)}


def run_benchmark(config: BenchmarkConfig, *, store: Store, workdir: str | Path, seed: int = 0,
                  device: torch.device | str = "cpu", data_root: str | Path | None = None,
                  score_checkpoint: str | Path | None = None,
                  callback: Callable[[BenchmarkEvent], None] | None = None,
                  ray: RayOptions | None = None) -> BenchmarkResult:
    """Run (or resume) the protocol of `config`; every finished cell goes to `store` at once.

    With `ray`, the victims' training and the cells run as Ray tasks (`ats.distributed`), each cell
    after its model; a cell that keeps failing is recorded in the store's failures and left out of
    the result, and the next run retries it."""
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
    if ray is not None:
        return _run_on_ray(config, cells, ray, store=store, workdir=Path(workdir), seed=seed, data_root=data_root,
                           x=x, y=y, indices=indices, privacy=privacy, score_path=score_path, emit=emit,
                           started=started)
    for cell in cells:
        what = f"{cell.study} {cell.policy} / {cell.defense}{'' if cell.threat == 'fedsgd' else ' / ' + cell.threat}" \
               f" at {cell.stage} epochs"
        victim = cell.victim(config)
        model, digest = victims.get(victim)
        key = cell_key(cell, config, digest=digest, seed=seed, privacy_key=privacy.key if privacy else "")
        stored = store.get_benchmark(key.astuple())
        if stored is not None:
            rows.append(stored)
            emit(BenchmarkEvent("attack", f"{what}: already in {store.path}", len(rows), len(cells), stored,
                                skipped=True))
            continue
        attack = cell_attack(cell, config)
        emit(BenchmarkEvent("attack", f"{what}: attacking with {attack.name}", len(rows), len(cells)))
        row = run_cell(key, attack, model, x, y, indices=indices, accuracy=victims.accuracies[victim],
                       privacy=privacy, stage=cell.stage, arch=victim.arch, grid=grid_path(workdir, key),
                       grid_images=min(config.grid_images, config.images), **cell_extras(cell, config))
        store.put_benchmark(row)
        rows.append(row)
        computed += 1
        emit(BenchmarkEvent("attack", f"{what}: PSNR {row.summary['psnr_x_median']:.2f} dB vs x (median; mean "
                            f"colour {row.summary['baseline_mean_colour_median']:.2f} dB), "
                            f"{row.summary['psnr_tx_median']:.2f} dB vs T(x)", len(rows), len(cells), row))
    return BenchmarkResult(config, tuple(rows), computed, time.perf_counter() - started, correlation_study(rows),
                           victims.named_checkpoints(), str(score_path))


def _run_on_ray(config: BenchmarkConfig, cells, options: RayOptions, *, store: Store, workdir: Path, seed: int,
                data_root, x, y, indices, privacy, score_path: Path, emit, started: float) -> BenchmarkResult:
    """`run_benchmark`'s cells as Ray tasks; the result lists the cells that finished, in protocol order."""
    from ats.distributed import cells_on_ray

    done = [0]

    def report(stage: str, message: str, row, skipped: bool) -> None:
        done[0] += row is not None
        emit(BenchmarkEvent(stage, message, done[0], len(cells), row, skipped=skipped))

    outcome = cells_on_ray(cells, config, options, store=store, workdir=workdir, seed=seed, data_root=data_root,
                           x=x, y=y, indices=indices, privacy=privacy, emit=report)
    rows = tuple(outcome.rows[i] for i in sorted(outcome.rows))
    named = {f"{v.arch} {v.policy} {v.defense} e{v.stage}": str(p) for v, p in outcome.checkpoints.items()}
    return BenchmarkResult(config, rows, outcome.computed, time.perf_counter() - started, correlation_study(rows),
                           named, str(score_path), failed=tuple(outcome.failed))
