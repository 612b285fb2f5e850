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
  tiny-data model) and attacked on the "none" model with the policy applied by the client; the
  Pearson and Spearman correlations between S_pri and PSNR are reported, whatever they are.

Every cell is a `BenchmarkRow` written to the results database as soon as it finishes, keyed by
its study, policy, defense, attack, model hash, image count, iterations and seed, so an
interrupted run resumes where it stopped and never recomputes or loses a finished cell.
"""
from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ats import attacks, data as data_module, models, search
from ats.evaluation import evaluate_reconstruction, summarize
from ats.federated import client_update, parse_defense
from ats.policy import parse_policy
from ats.runtime import make_generator
from ats.scores import ScoreConfig, default_score_checkpoint, privacy_indices, privacy_score
from ats.store import BenchmarkRow, Store
from ats.train import TrainRecipe, train

PAPER_POLICIES = ("none", "3-1-7", "43-18-18", "3-1-7+43-18-18")
ALL_DEFENSES = ("none", "prune-70", "prune-95", "prune-99", "gauss-1e-3", "gauss-1e-2", "lap-1e-3", "lap-1e-2")
STUDIES = ("table", "aware", "correlation")

# CVPR 2021, Tables 1 and 3 (CIFAR-100, ResNet20-4, Adam+Cosine): (PSNR vs T(x), accuracy %).
# Table 3's defenses were applied in *training*; their accuracy is that of a model trained so.
PAPER = {
    ("none", "none"): (13.88, 76.88), ("3-1-7", "none"): (6.579, 70.56), ("43-18-18", "none"): (8.56, 77.27),
    ("3-1-7+43-18-18", "none"): (7.64, 77.92), ("random", "none"): (11.41, 73.94),
    ("none", "prune-70"): (12.00, 77.12), ("none", "prune-95"): (10.07, 70.12), ("none", "prune-99"): (10.93, 58.33),
    ("none", "lap-1e-3"): (11.85, 74.12), ("none", "lap-1e-2"): (9.67, 39.59),
    ("none", "gauss-1e-3"): (12.71, 75.67), ("none", "gauss-1e-2"): (11.44, 48.2),
}
# ReScience 2022 reproduction with the original code (ResNet20-4): PSNR vs T(x) mean, std; accuracy %;
# and its translation-aware attacker: PSNR vs T(x) / vs x.
RESCIENCE = {"none": (9.94, 2.19, 77.00), "3-1-7": (6.28, 1.02, 65.83), "43-18-18": (8.71, 1.81, 74.84),
             "3-1-7+43-18-18": (7.48, 1.85, 71.06)}
RESCIENCE_AWARE = {"3-1-7": (9.43, 7.37), "43-18-18": (10.34, 9.61), "3-1-7+43-18-18": (9.42, 9.11)}
PAPER_CORRELATION = 0.697


@dataclass(frozen=True)
class BenchmarkConfig:
    """One scale of the protocol; presets are classmethods, overrides go through `dataclasses.replace`."""

    name: str
    recipe: TrainRecipe  # how each policy's model is trained
    attack: attacks.AttackConfig = field(default_factory=attacks.AttackConfig.ig)
    images: int = 100  # the attack set's first n test images
    policies: tuple[str, ...] = PAPER_POLICIES
    random: int = 10  # extra random policies in the table (the paper's "Random", averaged)
    defenses: tuple[str, ...] = ALL_DEFENSES
    aware: bool = True  # also attack every policy with the policy-aware attacker
    correlation: int = 0  # random policies scored and attacked for the S_pri–PSNR study (0: skip)
    score: ScoreConfig = field(default_factory=ScoreConfig)  # S_pri of the correlation study

    def __post_init__(self) -> None:
        if not 1 <= self.images <= len(data_module.ATTACK_SET):
            raise ValueError(f"images={self.images} must lie in 1–{len(data_module.ATTACK_SET)}")
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
    """The aggregates of one cell, under the names the table, CSV and app read."""
    s = summarize(results)
    summary = {
        "psnr_mean": s.get("psnr_transformed_mean", math.nan), "psnr_std": s.get("psnr_transformed_std", math.nan),
        "psnr_original_mean": s.get("psnr_mean", math.nan), "psnr_original_std": s.get("psnr_std", math.nan),
        "ssim_mean": s.get("ssim_transformed_mean", math.nan), "ssim_original_mean": s.get("ssim_mean", math.nan),
        "label_accuracy": s["label_accuracy"], "failed": s["failed"],
        "accuracy": math.nan if accuracy is None else float(accuracy),
    }
    if privacy is not None:
        summary["privacy"] = float(privacy)
    return summary


def attack_cell(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, policy: str, defense: str,
                config: attacks.AttackConfig, seed: int, indices: Sequence[int]):
    """Attack every image of `x` alone (one batched run): the client's update with `policy` and
    `defense`, then `config`. Returns the per-image results and the update the attacker saw."""
    device = next(model.parameters()).device
    generator = make_generator(seed, device)  # the same crops, flips and signs for every defense
    update = client_update(model, x, y, None if policy == "none" else policy, defense,
                           generator=generator, per_example=True)
    recon = attacks.reconstruct(model, update, config, generator=make_generator(seed + 1, device))
    return evaluate_reconstruction(recon, update, x, indices), update


def model_for(policy: str, config: BenchmarkConfig, *, workdir: Path, train_data, test_data, seed: int,
              device: torch.device, callback: Callable[[str], None] | None = None) -> tuple[Path, models.ModelMeta]:
    """The checkpoint of `policy`'s model under `config.recipe`: reused when present, else trained
    (resuming an interrupted training from its state file)."""
    name = f"{config.recipe.name}-{config.recipe.arch}-{policy.replace('+', '_')}-seed{seed}.pt"
    path = workdir / "models" / name
    if path.is_file():
        _, meta = models.load_checkpoint(path, device="cpu", expect_arch=config.recipe.arch)
        if meta.policy != policy or meta.recipe != config.recipe.name or meta.epochs != config.recipe.epochs:
            raise ValueError(f"{path} holds a model of policy {meta.policy!r}, recipe {meta.recipe!r}, "
                             f"{meta.epochs} epochs, not this benchmark's; move it away or use another --out")
        return path, meta
    path.parent.mkdir(parents=True, exist_ok=True)

    def report(p) -> None:
        if callback is not None and (p.batch == p.batches or p.batch % 50 == 0):
            callback(f"training {policy}: epoch {p.epoch}/{p.epochs}, batch {p.batch}/{p.batches}, "
                     f"loss {p.loss:.3f}" + (f", accuracy {p.accuracy:.2%}" if p.accuracy is not None else ""))

    result = train(config.recipe, policy=None if policy == "none" else policy, data=train_data, test=test_data,
                   out=path, seed=seed, device=device, callback=report, resume=True,
                   note=f"ats benchmark --preset {config.name}")
    return path, result.meta


def correlation(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """Pearson and Spearman correlation of paired values, with two-sided p-values (NaNs dropped)."""
    from scipy import stats

    pairs = [(a, b) for a, b in zip(xs, ys) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return {"n": len(pairs), "pearson": math.nan, "pearson_p": math.nan, "spearman": math.nan,
                "spearman_p": math.nan}
    a, b = zip(*pairs)
    pearson, spearman = stats.pearsonr(a, b), stats.spearmanr(a, b)
    return {"n": len(pairs), "pearson": float(pearson[0]), "pearson_p": float(pearson[1]),
            "spearman": float(spearman[0]), "spearman_p": float(spearman[1])}


def run_benchmark(config: BenchmarkConfig, *, store: Store, workdir: str | Path, seed: int = 0,
                  device: torch.device | str = "cpu", data_root: str | Path | None = None,
                  score_checkpoint: str | Path | None = None,
                  callback: Callable[[BenchmarkEvent], None] | None = None) -> BenchmarkResult:
    """Run (or resume) the protocol of `config`; every finished cell goes to `store` at once."""
    device, workdir, started = torch.device(device), Path(workdir), time.perf_counter()
    policies = config.table_policies(seed)
    cells = [("table", p, d) for p in policies for d in config.defenses]
    if config.aware:
        cells += [("aware", p, "none") for p in policies if p != "none"]
    random_policies = config.correlation_policies(seed)
    cells += [("correlation", p, "none") for p in random_policies]
    done, computed, rows = 0, 0, []
    emit = callback or (lambda event: None)

    test = data_module.load_dataset("cifar100", "test", root=data_root)
    indices = data_module.ATTACK_SET[: config.images]
    x, y = test.batch(indices, device)
    train_data = None
    checkpoints: dict[str, Path] = {}
    digests: dict[str, str] = {}  # policy -> checkpoint hash, read once
    accuracies: dict[str, float | None] = {}
    loaded: dict[str, nn.Module] = {}

    def victim(policy: str) -> tuple[nn.Module, str]:
        nonlocal train_data
        if policy not in checkpoints:
            if train_data is None:
                train_data = data_module.load_dataset("cifar100", "train", root=data_root)
            path, meta = model_for(policy, config, workdir=workdir, train_data=train_data, test_data=test,
                                   seed=seed, device=device,
                                   callback=lambda m: emit(BenchmarkEvent("train", m, done, len(cells))))
            checkpoints[policy], accuracies[policy] = path, meta.accuracy
            digests[policy] = models.checkpoint_hash(path)
        if policy not in loaded:
            loaded.clear()  # one model in memory at a time
            loaded[policy] = models.load_checkpoint(checkpoints[policy], device=device)[0].eval()
        return loaded[policy], digests[policy]

    privacy_model = None
    score_path = Path(score_checkpoint) if score_checkpoint is not None else default_score_checkpoint()
    # a correlation cell's S_pri depends on the S_pri model and definition too: both go into its key
    score_key = f"{models.checkpoint_hash(score_path)}:{config.score.definition()}" if random_policies else ""
    for study, policy, defense in cells:
        model_policy = "none" if study == "correlation" else policy
        model, digest = victim(model_policy)
        attack = attacks.AttackConfig.aware_ig() if study == "aware" else config.attack
        attack = replace(attack, iterations=config.attack.iterations)
        model_key = f"{digest}|S_pri {score_key}" if study == "correlation" else digest
        key = (study, policy, defense, attack.name, model_key, config.images, attack.iterations, seed)
        stored = store.get_benchmark(key)
        if stored is not None:
            rows.append(stored)
            done += 1
            emit(BenchmarkEvent("attack", f"{study} {policy} / {defense}: already in {store.path}", done,
                                len(cells), stored, skipped=True))
            continue
        emit(BenchmarkEvent("attack", f"{study}: attacking {policy} / {defense} with {attack.name}", done, len(cells)))
        cell_started = time.perf_counter()
        privacy = None
        if study == "correlation":
            if privacy_model is None:
                privacy_model = models.load_checkpoint(score_path, device=device)[0].eval()
                px, py = test.batch(privacy_indices(test, config.score), device)  # the same S_pri images for all
            privacy = privacy_score(privacy_model, policy, px, py, generator=make_generator(seed, device),
                                    config=config.score).value
        results, _ = attack_cell(model, x, y, policy=policy, defense=defense, config=attack, seed=seed,
                                 indices=indices)
        row = BenchmarkRow(study, policy, defense, attack.name, model_key, config.images, attack.iterations, seed,
                           cell_summary(results, accuracies[model_policy], privacy),
                           tuple(r.to_dict() for r in results), time.perf_counter() - cell_started)
        store.put_benchmark(row)
        rows.append(row)
        done, computed = done + 1, computed + 1
        emit(BenchmarkEvent("attack", f"{study} {policy} / {defense}: PSNR {row.summary['psnr_mean']:.2f} dB vs T(x), "
                            f"{row.summary['psnr_original_mean']:.2f} dB vs x", done, len(cells), row))

    study = None
    if random_policies:
        pts = [r for r in rows if r.study == "correlation"]
        privacy = [r.summary.get("privacy", math.nan) for r in pts]
        study = {"vs_transformed": correlation(privacy, [r.summary["psnr_mean"] for r in pts]),
                 "vs_original": correlation(privacy, [r.summary["psnr_original_mean"] for r in pts])}
    return BenchmarkResult(config, tuple(rows), computed, time.perf_counter() - started, study,
                           {p: str(c) for p, c in checkpoints.items()})


# --- output ----------------------------------------------------------------------------------------

CSV_COLUMNS = ("study", "policy", "defense", "attack", "images", "iterations", "psnr_mean", "psnr_std",
               "psnr_original_mean", "psnr_original_std", "ssim_mean", "ssim_original_mean", "label_accuracy",
               "failed", "accuracy", "privacy", "paper_psnr", "paper_accuracy", "rescience_psnr")


def write_csv(result: BenchmarkResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for flat in result.table():
            writer.writerow({k: _csv_value(flat.get(k)) for k in CSV_COLUMNS})
    return path


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 4)
    return "" if value is None else value


def _num(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _pm(mean, std) -> str:
    return "–" if mean is None or math.isnan(mean) else f"{mean:.2f} ± {_num(std)}"


def markdown_table(result: BenchmarkResult) -> str:
    """The policy × defense table, with the paper's and the reproduction's numbers beside ours."""
    lines = ["| policy | defense | attack | PSNR vs T(x) | PSNR vs x | SSIM vs T(x) | accuracy | failed "
             "| paper PSNR | paper acc. | ReScience PSNR |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for flat in result.table():
        if flat["study"] != "table":
            continue
        lines.append(f"| {flat['policy']} | {flat['defense']} | {flat['attack']} "
                     f"| {_pm(flat['psnr_mean'], flat['psnr_std'])} "
                     f"| {_pm(flat['psnr_original_mean'], flat['psnr_original_std'])} | {_num(flat['ssim_mean'], 3)} "
                     f"| {_num(100 * flat['accuracy'], 1)} % | {flat['failed']} | {_num(flat['paper_psnr'])} "
                     f"| {_num(flat['paper_accuracy'])} | {_num(flat['rescience_psnr'])} |")
    return "\n".join(lines)


def markdown_aware(result: BenchmarkResult) -> str:
    """PSNR against x (and T(x)) without and with the policy-aware attacker, per policy."""
    plain = {r.policy: r for r in result.rows if r.study == "table" and r.defense == "none"}
    lines = ["| policy | IG: PSNR vs x | aware: PSNR vs x | IG: PSNR vs T(x) | aware: PSNR vs T(x) "
             "| ReScience aware (vs T(x) / vs x) |", "|---|---|---|---|---|---|"]
    for row in result.rows:
        if row.study != "aware" or row.policy not in plain:
            continue
        base, s = plain[row.policy].summary, row.summary
        ref = RESCIENCE_AWARE.get(row.policy)
        lines.append(f"| {row.policy} | {_pm(base['psnr_original_mean'], base['psnr_original_std'])} "
                     f"| {_pm(s['psnr_original_mean'], s['psnr_original_std'])} "
                     f"| {_pm(base['psnr_mean'], base['psnr_std'])} | {_pm(s['psnr_mean'], s['psnr_std'])} "
                     f"| {f'{ref[0]} / {ref[1]}' if ref else '–'} |")
    return "\n".join(lines)


def markdown_correlation(result: BenchmarkResult) -> str:
    if not result.correlation:
        return "The correlation study was not run (`correlation=0`)."
    rows = [r for r in result.rows if r.study == "correlation"]
    lines = ["| policy | S_pri | PSNR vs T(x) | PSNR vs x |", "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r.summary.get("privacy", math.nan)):
        lines.append(f"| {r.policy} | {_num(r.summary.get('privacy'), 3)} | {_num(r.summary['psnr_mean'])} "
                     f"| {_num(r.summary['psnr_original_mean'])} |")
    for name, c in result.correlation.items():
        target = "T(x)" if name == "vs_transformed" else "x"
        lines.append(f"\nS_pri against PSNR vs {target} over n = {c['n']} policies: Pearson r = "
                     f"{_num(c['pearson'], 3)} (p = {_num(c['pearson_p'], 3)}), Spearman ρ = {_num(c['spearman'], 3)} "
                     f"(p = {_num(c['spearman_p'], 3)}).")
    return "\n".join(lines)


def save_scatter(result: BenchmarkResult, path: str | Path) -> Path | None:
    """S_pri against attack PSNR for the correlation study's policies (PNG); None when it did not run."""
    rows = [r for r in result.rows if r.study == "correlation"]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    xs = [r.summary.get("privacy", math.nan) for r in rows]
    ax.scatter(xs, [r.summary["psnr_mean"] for r in rows], label="PSNR vs T(x)")
    ax.scatter(xs, [r.summary["psnr_original_mean"] for r in rows], marker="x", label="PSNR vs x")
    c = result.correlation["vs_transformed"]
    ax.set(xlabel="S_pri (lower = more private)", ylabel="attack PSNR (dB)",
           title=f"Does S_pri predict privacy? Pearson r = {_num(c['pearson'])}, n = {c['n']}")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def findings(result: BenchmarkResult) -> list[str]:
    """Plain statements of what the numbers show, computed from them (no hand-written claims)."""
    out = []
    table = {(r.policy, r.defense): r.summary for r in result.rows if r.study == "table"}
    base = table.get(("none", "none"))
    if base:
        for (policy, defense), s in table.items():
            if (policy, defense) == ("none", "none") or (policy != "none" and defense != "none"):
                continue
            what = f"policy {policy}" if defense == "none" else f"defense {defense}"
            out.append(f"{what}: PSNR vs T(x) {s['psnr_mean']:.2f} dB ({s['psnr_mean'] - base['psnr_mean']:+.2f} against "
                       f"no defense, {base['psnr_mean']:.2f}); vs x {s['psnr_original_mean'] - base['psnr_original_mean']:+.2f} dB; "
                       f"accuracy {100 * (s['accuracy'] - base['accuracy']):+.1f} points")
    aware = {r.policy: r.summary for r in result.rows if r.study == "aware"}
    for policy, s in aware.items():
        plain = table.get((policy, "none"))
        if plain:
            out.append(f"policy-aware attacker on {policy}: PSNR vs x {plain['psnr_original_mean']:.2f} → "
                       f"{s['psnr_original_mean']:.2f} dB ({s['psnr_original_mean'] - plain['psnr_original_mean']:+.2f}); "
                       f"no-defense baseline {base['psnr_original_mean']:.2f} dB" if base else "")
    if result.correlation:
        c = result.correlation["vs_transformed"]
        verdict = ("a significant positive correlation (p < 0.05)" if c["pearson"] > 0 and c["pearson_p"] < 0.05
                   else "no significant positive correlation at p < 0.05")
        out.append(f"S_pri vs attack PSNR (T(x)): Pearson r = {_num(c['pearson'], 3)}, p = {_num(c['pearson_p'], 3)}, "
                   f"n = {c['n']}: {verdict}; the paper claims r = {PAPER_CORRELATION}, the ReScience reproduction found none")
    return [line for line in out if line]


def write_report(result: BenchmarkResult, path: str | Path, *, command: str, device: str,
                 scatter: str | Path | None = None) -> Path:
    """The reproduction report (Markdown) for `result`, produced by `command`."""
    c = result.config
    r = c.recipe
    lines = [
        f"# Reproduction report: `{c.name}` preset",
        "",
        f"Produced by `{command}` on {device} with torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; {result.computed} of {len(result.rows)} cells computed in this run "
        f"({result.seconds / 60:.1f} min), the rest read from the results database.",
        "",
        "## Setup",
        "",
        f"* **Models:** {r.arch}, one per policy, trained by `ats.train` with recipe `{r.name}`: {r.epochs} epochs, "
        f"{'the full' if r.data_fraction >= 1 else f'{r.data_fraction:.0%} of the'} CIFAR-100 train split, SGD-Nesterov "
        f"lr {r.lr}, batch {r.batch_size}, 0.5·CE, crop → flip → policy. The paper: ResNet20-4, 200 epochs.",
        f"* **Attack:** `{c.attack.name}` (Inverting Gradients with the ATS config: cosine, signed Adam lr 0.1, TV 1e-4, "
        f"boxed, labels known) for {c.attack.iterations} iterations on CIFAR-100 test images 0–{c.images - 1}, one image "
        f"per gradient. The paper: 4,800 iterations on images 0–99.",
        "* **Defenses** are applied to the shared gradient at attack time; the model is the one trained with the policy "
        "(the paper's Table 3 accuracies come from models trained with the defense, which this protocol does not do).",
        "* **PSNR** against T(x) is the paper's convention; against x is what a person cares about.",
        "",
        "## Policies and defenses (paper Tables 1 and 3)",
        "",
        markdown_table(result),
        "",
        "## The policy-aware attacker",
        "",
        "`aware` knows the policy: it starts each restart from one hypothesis about the policy's random shift signs and "
        "the flip, and learns the translation jointly with the image, which it reconstructs *untransformed*.",
        "",
        markdown_aware(result),
        "",
        "## Does S_pri predict privacy?",
        "",
        f"{c.correlation} random policies, S_pri on the shipped tiny-data model (`{c.score.name}` score preset), attacked "
        "on the `none` model with the policy applied by the client.",
        "",
        markdown_correlation(result),
    ]
    if scatter:
        lines += ["", f"![S_pri against attack PSNR]({Path(scatter).name})"]
    lines += ["", "## What the numbers show", ""] + [f"* {line}" for line in findings(result)]
    lines += [
        "",
        "## Caveats",
        "",
        "* The laptop models are trained for minutes, not GPU hours, and the attack runs a fraction of the paper's "
        "iterations on a fraction of its images; absolute PSNRs are not comparable with the paper's, only the "
        "comparisons within a column are.",
        "* With few images the standard deviations are wide; differences below about one standard deviation are noise.",
        "",
        "## The paper preset (GPU)",
        "",
        "```",
        "ats benchmark --preset paper --db paper.db --out runs/paper --report docs/reproduction-paper.md --device cuda",
        "```",
        "",
        "It trains ResNet20-4 for 200 epochs per policy (4 paper policies, 10 random ones) and attacks 100 images with "
        "4,800 iterations per cell under all 8 defenses: days of GPU time. It resumes where it stopped.",
        "",
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path
