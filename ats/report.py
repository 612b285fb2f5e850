"""The benchmark's outputs: the CSV table, the Markdown tables beside the published numbers, the
findings, the S_pri scatter plot and the reproduction report (Gao et al., CVPR 2021, Tables 1 and 3).

Everything is rendered from one `BenchmarkResult`: its rows, and its own config for the setup and
the caveats, so a report says what its run did at whatever scale; the paper's numbers come from
`ats.published`. Nothing is hand-written about the results: `findings` computes its statements.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import torch

from ats import attacks
from ats.benchmark import BenchmarkConfig, BenchmarkResult
from ats.indices import ATTACK_SET
from ats.published import (PAPER_ARCH, PAPER_CORRELATION, PAPER_EPOCHS, PAPER_IMAGES, PAPER_ITERATIONS,
                           RESCIENCE_AWARE)
from ats.scores import default_score_checkpoint
from ats.store import LEGACY_SUMMARY_KEYS

# "_x" columns score the reconstruction against the original x, "_tx" ones against T(x) (the paper's).
CSV_COLUMNS = ("study", "policy", "defense", "attack", "images", "iterations", "psnr_tx_mean", "psnr_tx_std",
               "psnr_x_mean", "psnr_x_std", "ssim_tx_mean", "ssim_x_mean", "label_accuracy",
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
                     f"| {_pm(flat['psnr_tx_mean'], flat['psnr_tx_std'])} "
                     f"| {_pm(flat['psnr_x_mean'], flat['psnr_x_std'])} | {_num(flat['ssim_tx_mean'], 3)} "
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
        lines.append(f"| {row.policy} | {_pm(base['psnr_x_mean'], base['psnr_x_std'])} "
                     f"| {_pm(s['psnr_x_mean'], s['psnr_x_std'])} "
                     f"| {_pm(base['psnr_tx_mean'], base['psnr_tx_std'])} | {_pm(s['psnr_tx_mean'], s['psnr_tx_std'])} "
                     f"| {f'{ref[0]} / {ref[1]}' if ref else '–'} |")
    return "\n".join(lines)


def markdown_correlation(result: BenchmarkResult) -> str:
    if not result.correlation:
        return "The correlation study was not run (`correlation=0`)."
    rows = [r for r in result.rows if r.study == "correlation"]
    lines = ["| policy | S_pri | PSNR vs T(x) | PSNR vs x |", "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r.summary.get("privacy", math.nan)):
        lines.append(f"| {r.policy} | {_num(r.summary.get('privacy'), 3)} | {_num(r.summary['psnr_tx_mean'])} "
                     f"| {_num(r.summary['psnr_x_mean'])} |")
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
    ax.scatter(xs, [r.summary["psnr_tx_mean"] for r in rows], label="PSNR vs T(x)")
    ax.scatter(xs, [r.summary["psnr_x_mean"] for r in rows], marker="x", label="PSNR vs x")
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
            out.append(f"{what}: PSNR vs T(x) {s['psnr_tx_mean']:.2f} dB "
                       f"({s['psnr_tx_mean'] - base['psnr_tx_mean']:+.2f} against no defense, "
                       f"{base['psnr_tx_mean']:.2f}); vs x {s['psnr_x_mean'] - base['psnr_x_mean']:+.2f} dB; "
                       f"accuracy {100 * (s['accuracy'] - base['accuracy']):+.1f} points")
    aware = {r.policy: r.summary for r in result.rows if r.study == "aware"}
    for policy, s in aware.items():
        plain = table.get((policy, "none"))
        if plain:
            out.append(f"policy-aware attacker on {policy}: PSNR vs x {plain['psnr_x_mean']:.2f} → "
                       f"{s['psnr_x_mean']:.2f} dB ({s['psnr_x_mean'] - plain['psnr_x_mean']:+.2f}); "
                       f"no-defense baseline {base['psnr_x_mean']:.2f} dB" if base else "")
    if result.correlation:
        c = result.correlation["vs_transformed"]
        verdict = ("a significant positive correlation (p < 0.05)" if c["pearson"] > 0 and c["pearson_p"] < 0.05
                   else "no significant positive correlation at p < 0.05")
        out.append(f"S_pri vs attack PSNR (T(x)): Pearson r = {_num(c['pearson'], 3)}, p = {_num(c['pearson_p'], 3)}, "
                   f"n = {c['n']}: {verdict}; the paper claims r = {PAPER_CORRELATION}, the ReScience reproduction found none")
    return [line for line in out if line]


# --- the reproduction report ------------------------------------------------------------------------

def _describe_attack(attack: attacks.AttackConfig) -> str:
    """"Inverting Gradients with the ATS config: cosine, signed Adam lr 0.1, TV 1e-4, boxed, labels known"."""
    optimizer = {"adam": "Adam", "sgd": "SGD", "lbfgs": "L-BFGS"}.get(attack.optimizer, attack.optimizer)
    tv = f"TV {attack.tv:.0e}".replace("e-0", "e-") if attack.tv else "no TV"
    parts = [attack.cost, f"{'signed ' if attack.signed else ''}{optimizer} lr {attack.lr:g}", tv,
             *(["boxed"] if attack.boxed else []), f"labels {attack.labels}",
             *([f"{attack.restarts} restarts"] if attack.restarts > 1 else []), *(["policy-aware"] if attack.aware else [])]
    is_ig = replace(attack, iterations=attacks.AttackConfig.ig().iterations) == attacks.AttackConfig.ig()
    return ("Inverting Gradients with the ATS config: " if is_ig else "") + ", ".join(parts)


def _setup(result: BenchmarkResult) -> list[str]:
    """The Setup section's bullets: what this run trained and attacked, beside the paper's scale."""
    c, r = result.config, result.config.recipe
    share = "the full" if r.data_fraction >= 1 else f"{r.data_fraction:.0%} of the"
    optimizer = "SGD-Nesterov" if r.nesterov else "SGD"
    loss = "0.5·CE" if r.loss == "half-ce" else "CE"
    first, last = ATTACK_SET[0], ATTACK_SET[c.images - 1]
    return [
        f"* **Models:** {r.arch}, one per policy, trained by `ats.train` with recipe `{r.name}`: {r.epochs} epochs, "
        f"{share} CIFAR-100 train split, {optimizer} lr {r.lr}, batch {r.batch_size}, {loss}, "
        f"{'crop → flip → policy' if r.crop_flip else 'policy (no crop and flip)'}. "
        f"The paper: {PAPER_ARCH}, {PAPER_EPOCHS} epochs.",
        f"* **Attack:** `{c.attack.name}` ({_describe_attack(c.attack)}) for {c.attack.iterations} iterations on "
        f"CIFAR-100 test images {first}–{last}, one image per gradient. The paper: {PAPER_ITERATIONS:,} iterations on "
        f"images 0–{PAPER_IMAGES - 1}.",
        "* **Defenses** are applied to the shared gradient at attack time; the model is the one trained with the policy "
        "(the paper's Table 3 accuracies come from models trained with the defense, which this protocol does not do).",
        "* **PSNR** against T(x) is the paper's convention; against x is what a person cares about.",
    ]


def _score_model(result: BenchmarkResult) -> str:
    path = Path(result.score_checkpoint) if result.score_checkpoint else default_score_checkpoint()
    shipped = path.resolve() == default_score_checkpoint().resolve()
    return "the shipped tiny-data model" if shipped else f"the model `{path.name}`"


def _caveats(result: BenchmarkResult) -> list[str]:
    """How this run's scale falls short of the paper's, and what that means for reading it."""
    c, r = result.config, result.config.recipe
    gaps = []
    if r.arch.lower() != PAPER_ARCH.lower() or r.epochs < PAPER_EPOCHS or r.data_fraction < 1:
        share = f" on {r.data_fraction:.1%} of the train split" if r.data_fraction < 1 else ""
        gaps.append(f"The `{c.name}` models are {r.arch} trained for {r.epochs} epochs{share}, not the paper's "
                    f"{PAPER_ARCH} trained for {PAPER_EPOCHS}")
    if c.attack.iterations < PAPER_ITERATIONS or c.images < PAPER_IMAGES:
        gaps.append(f"{'the' if gaps else 'The'} attack runs {c.attack.iterations:,} iterations on {c.images} images, "
                    f"not {PAPER_ITERATIONS:,} on {PAPER_IMAGES}")
    out = [f"* {', and '.join(gaps)}; absolute PSNRs are not comparable with the paper's, only the comparisons "
           "within a column are."] if gaps else []
    if c.images < PAPER_IMAGES:
        out.append(f"* With {c.images} images per cell the standard deviations are wide; differences below about "
                   "one standard deviation are noise.")
    else:
        out.append("* Differences below about one standard deviation are noise.")
    return out


def _paper_preset() -> list[str]:
    """How to run the paper's scale, from the `paper` preset itself."""
    p = BenchmarkConfig.paper()
    return [
        "```",
        "ats benchmark --preset paper --db paper.db --out runs/paper --report docs/reproduction-paper.md --device cuda",
        "```",
        "",
        f"It trains {PAPER_ARCH} for {p.recipe.epochs} epochs per policy ({len(p.policies)} paper policies, {p.random} "
        f"random ones) and attacks {p.images} images with {p.attack.iterations:,} iterations per cell under all "
        f"{len(p.defenses)} defenses: days of GPU time. It resumes where it stopped.",
    ]


def write_report(result: BenchmarkResult, path: str | Path, *, command: str, device: str,
                 scatter: str | Path | None = None) -> Path:
    """The reproduction report (Markdown) for `result`, produced by `command`."""
    c = result.config
    lines = [
        f"# Reproduction report: `{c.name}` preset", "",
        f"Produced by `{command}` on {device} with torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; {result.computed} of {len(result.rows)} cells computed in this run "
        f"({result.seconds / 60:.1f} min), the rest read from the results database.", "",
        "## Setup", "", *_setup(result), "",
        "## Policies and defenses (paper Tables 1 and 3)", "", markdown_table(result), "",
        "## The policy-aware attacker", "",
        "`aware` knows the policy: it starts each restart from one hypothesis about the policy's random shift signs and "
        "the flip, and learns the translation jointly with the image, which it reconstructs *untransformed*.", "",
        markdown_aware(result), "",
        "## Does S_pri predict privacy?", "",
        f"{c.correlation} random policies, S_pri on {_score_model(result)} (`{c.score.name}` score preset), attacked "
        "on the `none` model with the policy applied by the client.", "",
        markdown_correlation(result),
    ]
    if scatter:
        lines += ["", f"![S_pri against attack PSNR]({Path(scatter).name})"]
    lines += ["", "## What the numbers show", ""] + [f"* {line}" for line in findings(result)]
    lines += ["", "## Caveats", "", *_caveats(result), "", "## The paper preset (GPU)", "", *_paper_preset(), ""]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


# --- reading a table back ----------------------------------------------------------------------

# The columns of `CSV_COLUMNS` that a benchmark table must hold to be shown (the app's benchmark page).
REQUIRED_COLUMNS = ("policy", "defense", "psnr_tx_mean", "psnr_tx_std", "psnr_x_mean", "ssim_tx_mean", "accuracy")


def normalize_columns(columns: Iterable[str]) -> list[str]:
    """`columns` with the names of tables written by older versions renamed to the current ones
    (`psnr_mean` → `psnr_tx_mean`, `psnr_original_mean` → `psnr_x_mean`, …; `LEGACY_SUMMARY_KEYS`)."""
    columns = list(columns)
    return [LEGACY_SUMMARY_KEYS.get(c, c) if LEGACY_SUMMARY_KEYS.get(c) not in columns else c for c in columns]


def check_columns(columns: Iterable[str]) -> None:
    """ValueError naming the columns of `REQUIRED_COLUMNS` that a benchmark table lacks."""
    missing = [c for c in REQUIRED_COLUMNS if c not in set(columns)]
    if missing:
        raise ValueError(f"the benchmark table lacks the columns {', '.join(missing)}; "
                         f"expected {', '.join(REQUIRED_COLUMNS)}")
