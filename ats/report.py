"""The benchmark's outputs: the CSV (one row per cell, with its evidence) and the reproduction
report (Gao et al., CVPR 2021, Tables 1 and 3), from one `BenchmarkResult`.

The report says what its run did at whatever scale, from the run's own config (setup, why this
setting, caveats); its tables and findings come from `ats.tables` (re-exported here), its figures
from `ats.figures`, the paper's numbers from `ats.published`. Nothing about the results is
hand-written: `findings` states only what the paired tests support.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import torch

from ats import attacks, cells
from ats.benchmark import BenchmarkConfig, BenchmarkResult
from ats.tables import (evidence_table, findings, markdown_aware, markdown_baselines,  # noqa: F401  (the report's API)
                        markdown_correlation, markdown_stages, markdown_table, markdown_threats)
from ats.indices import ATTACK_SET
from ats.published import PAPER_ARCH, PAPER_EPOCHS, PAPER_IMAGES, PAPER_ITERATIONS
from ats.scores import default_score_checkpoint
from ats.store import LEGACY_SUMMARY_KEYS

# One row per cell. "_x" columns score the reconstruction against the original x, "_tx" ones against
# T(x) (the paper's), "_x_aligned" against x at the best flip and shift; `baseline_*` are what trivial
# guesses score against x on the same images; `leaks` says whether the cell scores significantly
# above the mean-colour baseline; `diff_*` and `p_adjusted` compare it with its reference (no defense,
# or the plain attack for the aware attacker), paired on the same images, Holm-adjusted.
CSV_COLUMNS = ("study", "policy", "defense", "threat", "attack", "stage", "arch", "images", "iterations",
               "psnr_x_median", "psnr_x_ci_low", "psnr_x_ci_high", "psnr_x_mean", "psnr_x_std",
               "psnr_x_aligned_median", "psnr_tx_median", "psnr_tx_mean", "psnr_tx_std",
               "ssim_x_median", "ssim_x_mean", "ssim_x_aligned_median", "ssim_tx_mean", "lpips_x_median",
               "baseline_grey_median", "baseline_mean_colour_median", "baseline_tx_median",
               "leaks", "leak_margin", "leak_ci_low", "leak_ci_high", "reference", "diff_median", "diff_ci_low",
               "diff_ci_high", "diff_aligned_median", "p", "p_adjusted", "label_accuracy", "failed",
               "accuracy", "privacy", "epsilon_update", "epsilon_train", "delta", "paper_psnr", "paper_accuracy",
               "rescience_psnr")


def write_csv(result: BenchmarkResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for flat in evidence_table(result):
            writer.writerow({k: _csv_value(flat.get(k)) for k in CSV_COLUMNS})
    return path


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 4)
    return "" if value is None else value


def save_scatter(result: BenchmarkResult, path: str | Path) -> Path | None:
    """S_pri against attack PSNR (see `ats.figures.save_scatter`)."""
    from ats.figures import save_scatter as scatter

    return scatter(result, path)


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
    schedule = f"lr ×{r.gamma} at epochs {r.milestone_epochs()}" if r.milestones else "constant lr"
    first, last = ATTACK_SET[0], ATTACK_SET[c.images - 1]
    regimes = "; ".join(f"{a} at {s} epochs attacked by {k} × {i}" for a, k, i, s in c.regimes) or "none"
    aware = cells.aware_attack(c.attack, c.aware_restarts, c.aware_screen)
    if aware.screened:
        cost = (f"each for {aware.screen} iterations, then only each image's cheapest (by its gradient-matching "
                f"cost) on to {aware.iterations}: about {aware.restart_iterations / aware.iterations:.1f}× "
                "the plain attack's cost")
    else:
        cost = f"each to the end, {aware.restarts}× the plain attack's cost"
    return [
        f"* **Models:** {r.arch}, one per policy, trained by `ats.train` with recipe `{r.name}`: {share} CIFAR-100 "
        f"train split, {optimizer} lr {r.lr} ({schedule}), batch {r.batch_size}, {loss}, "
        f"{'crop → flip → policy' if r.crop_flip else 'policy (no crop and flip)'}. The table attacks them after "
        f"{c.stage} epochs; stages {', '.join(str(s) for s in sorted({c.stage, *c.stages}))} (epochs; 0 is the seeded "
        f"initialisation, each stage its own training run) for the leakage-over-training study. "
        f"The paper: {PAPER_ARCH}, {PAPER_EPOCHS} epochs.",
        f"* **Attack:** `{c.attack.name}` ({_describe_attack(c.attack)}) for {c.attack.iterations} iterations on "
        f"CIFAR-100 test images {first}–{last} (n = {c.images} per cell), one image per gradient. The paper: IG, "
        f"{PAPER_ITERATIONS:,} iterations on images 0–{PAPER_IMAGES - 1}.",
        f"* **Policy-aware attacker:** `{aware.name}` ({_describe_attack(aware)}): every flip × x-sign × y-sign "
        f"hypothesis, {cost}.",
        "* **Defenses** are applied to the shared gradient at attack time"
        + ("" if c.defense_policies is None else
           f", on the {_policy_list(c.defense_policies)} polic{'y' if len(c.defense_policies) == 1 else 'ies'} "
           "only (the paper's Table 3 defends the undefended model; the other policies are attacked undefended)")
        + (", and each defense's model is trained with that defense on every training step (Table 3 as the paper "
           "ran it), so the accuracy of a defense row is that model's." if c.train_defense else
           "; the model is the one trained with the policy (pass `--train-defense` for the paper's Table 3 models)."),
        f"* **Regimes** (undefended, to see whether other settings leak at this scale): {regimes}.",
        *([f"* **Threat models** beyond one FedSGD gradient, undefended, on {_policy_list(c.threat_policies)}: "
           f"{', '.join(f'`{t}`' for t in c.threats)}."] if c.threats else []),
        *(["* **DP-SGD** (`dp-C-σ`: each example's gradient clipped to C, noise σ·C on the sum) rows give ε at "
           "δ = 1e-5 from Opacus's RDP accountant: of the one update the attacker inverts (sampling rate 1, one "
           "step) and, for a model trained under it, of its whole training (sampling rate batch/images, fixed-size "
           "shuffled batches read as Poisson sampling, the usual approximation)."]
          if any(d.startswith("dp-") for d in c.defenses) else []),
        "* **Scores:** PSNR against x, against T(x) (the paper's convention) and aligned (the best over the flips and "
        "integer shifts the crop and the policy can make, on the overlap); beside them, on the same images, what "
        "flat grey, each image's own mean colour and T(x) itself score against x. Medians with 95 % percentile "
        "bootstrap intervals (2,000 resamples); comparisons are paired on the same images (median difference, its "
        "bootstrap interval, Wilcoxon signed-rank), with Holm's correction over all comparisons of the run. A cell "
        "leaks when it is significantly above its mean-colour baseline (interval above 0, p < 0.05).",
    ]


def _policy_list(policies) -> str:
    return ", ".join(f"`{p}`" for p in policies)


def _score_model(result: BenchmarkResult) -> str:
    path = Path(result.score_checkpoint) if result.score_checkpoint else default_score_checkpoint()
    shipped = path.resolve() == default_score_checkpoint().resolve()
    return "the shipped tiny-data model" if shipped else f"the model `{path.name}`"


def _caveats(result: BenchmarkResult) -> list[str]:
    """How this run's scale falls short of the paper's, and what that means for reading it."""
    c, r = result.config, result.config.recipe
    out = []
    if r.arch.lower() != PAPER_ARCH.lower() or c.stage < PAPER_EPOCHS or r.data_fraction < 1:
        out.append(f"* The `{c.name}` models are {r.arch} after {c.stage} epochs, not the paper's {PAPER_ARCH} "
                   f"after {PAPER_EPOCHS}: absolute PSNRs and accuracies are not comparable with the paper's, only "
                   "the paired comparisons within this run are.")
    if c.attack.name != "ig" or c.attack.iterations < PAPER_ITERATIONS:
        out.append(f"* The table's attack is `{c.attack.name}` × {c.attack.iterations:,}, not the paper's IG × "
                   f"{PAPER_ITERATIONS:,}; the regimes above show how IG fares at this scale.")
    if c.correlation and c.correlation_budget < c.attack.iterations:
        out.append(f"* The correlation study attacks with {c.correlation_budget} of the table's "
                   f"{c.attack.iterations} iterations: its PSNRs measure how far the attack gets at that budget, "
                   "lower than a full attack's, and its r is about that.")
    if c.images < PAPER_IMAGES:
        out.append(f"* n = {c.images} images per cell (the paper: {PAPER_IMAGES}); the intervals say what that buys.")
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
        f"{len(p.defenses)} defenses, and at stages {', '.join(map(str, p.stages))}: days of GPU time. It resumes "
        "where it stopped.",
    ]


# Why each preset's setting, measured when it was chosen (CIFAR-100 test images 0–31 unless said).
RATIONALE = {
    "laptop": (
        "**Why this setting.** The table must first show an attack that leaks, or no defense can be shown to help "
        "(the previous laptop report's ResNet20 after 3 epochs scored 9.9 dB against x, below a flat grey image). "
        "Measured on a 2-core CPU before choosing: the paper's IG (cosine, signed Adam) on ResNet20 at "
        "initialisation reaches 11.1 dB in 200 iterations and 14.1 dB in 1,000 (8 images; 14 ms per image and "
        "iteration), and on the paper's 8-layer ConvNet 20.2 dB in 200 iterations but at 131 ms per image and "
        "iteration (about 14 minutes a cell of 32 images); IG on DLG's sigmoid LeNet stays at 8–11 dB whatever "
        "its learning rate, TV weight or budget (up to 5,000 iterations), and so does Adam on the L2 distance: "
        "on this model only L-BFGS works. DLG's L-BFGS on the L2 distance with the label read off the gradient "
        "(iDLG) reconstructs the LeNet at 27.7 dB untrained and 24.0 dB after five epochs of training, in about "
        "90–130 s a cell of 32 images (100 iterations of up to 20 evaluations each, as torch's L-BFGS counts "
        "them; 160–225 s before the batched L-BFGS computed its direction in closed form; "
        "its median PSNR is still rising there: 8.5 dB after 10 iterations, 15.4 after 50, 23.6 after 100). "
        "So the laptop table attacks the LeNet with iDLG, and keeps the paper's IG as "
        "regimes, against the same baselines, rather than hiding that it does not leak at this budget. The LeNet "
        "is trained with the paper's SGD at lr 0.05 without decay (lr 0.1 or more leaves it at chance); it "
        "reaches about 9 % after 5 epochs, far from the paper's 70–77 %, so accuracy differences here say little "
        "about the paper's. The paper's own setting (ResNet20-4 trained 200 epochs, IG × 4,800) is the `paper` "
        "preset. The policy-aware attacker tries all 8 flip × x-sign × y-sign hypotheses, but run to the end "
        "each costs 8 plain cells (its first full run, 8 restarts on 32 images, had not finished after 28 "
        "minutes); so each hypothesis runs 10 of the 100 iterations and only each image's cheapest by the "
        "gradient-matching cost goes on, about 2× a plain cell (231 s against 116 s). On 4 images of the "
        "hybrid at initialisation that screen chose the full search's hypothesis for 2 of 4 images and matched "
        "its PSNR against x within 1.1 dB (3.7–8.4 dB against 3.7–8.5 dB): on this LeNet, L-BFGS on the joint "
        "image and shift does not reach the 8–12 dB the plain attack's aligned score reaches, whatever the "
        "hypothesis. To fit an hour (the run before these cuts, without the aware cell and with 11 correlation "
        "policies, took 98 minutes; with them, 86 minutes before the L-BFGS speed-up and 51 minutes after): the "
        "two gradient defenses attack the undefended policy only (the paper's Table 3 does the same; a policy "
        "and a defense together were 5.2–5.4 dB here, below every baseline), leakage over training is measured "
        "without a policy, and the correlation study's 30 policies are attacked with 40 of the 100 iterations "
        "(28 minutes here, S_pri included; at 100 they alone would take about an hour): the same budget for "
        "every policy, so their ranking is "
        "comparable, though each PSNR is lower than a full attack would reach."),
}


def _timing(result: BenchmarkResult, timing: dict | None) -> str:
    cells_seconds = sum(r.seconds for r in result.rows)
    text = (f"The {len(result.rows)} cells took {cells_seconds / 60:.1f} min of attack time in all "
            f"({result.computed} computed by the last invocation).")
    if timing:
        text += (f" Measured over {timing['invocations']} invocation(s) of the command: {timing['seconds'] / 60:.1f} "
                 f"min wall time, training included, and {timing['peak_mib']:,.0f} MiB peak memory.")
    return text


def write_report(result: BenchmarkResult, path: str | Path, *, command: str, device: str,
                 scatter: str | Path | None = None, workdir: str | Path | None = None,
                 images: torch.Tensor | None = None, timing: dict | None = None, intro: str = "") -> Path:
    """The reproduction report (Markdown) for `result`, produced by `command`. With `workdir` (the
    benchmark's --out) and `images` (the attack set's first images), the reconstruction grids are
    drawn next to the report; `timing` (`invocations`, `seconds`, `peak_mib`) is the measured cost."""
    from ats import figures

    c, path = result.config, Path(path)
    stages_png = figures.save_stages(result, path.parent / "figures" / f"{path.stem}-stages.png")
    lines = [
        f"# Reproduction report: `{c.name}` preset", "",
        f"Produced by `{command}` on {device} with torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. "
        + _timing(result, timing), "",
        *([intro, ""] if intro else []),
        *([RATIONALE[c.name], ""] if c.name in RATIONALE else []),
        "## Setup", "", *_setup(result), "",
        "## Does the undefended attack leak? (baselines)", "",
        "Nothing below means anything unless the undefended attack beats what a trivial guess scores on the same "
        "images.", "", markdown_baselines(result), "",
        "## Policies and defenses (paper Tables 1 and 3)", "", markdown_table(result), "",
        "## The policy-aware attacker", "",
        "`aware` knows the policy: each restart starts from one hypothesis about the flip and the signs of the "
        "policy's shifts, and learns the translation jointly with the image, which it reconstructs *untransformed*.",
        "", markdown_aware(result), "",
        "## Leakage over training", "", markdown_stages(result), "",
    ]
    if c.threats:
        lines += ["## Beyond one gradient: other threat models", "",
                  "The paper attacks one image's FedSGD gradient. Here the same images are dealt to clients that "
                  "share one gradient of a batch of B images with their labels kept (`batch-B`: the attacker counts "
                  "the labels from the last layer and reconstructs the batch jointly), or the weight difference "
                  "after E local epochs over K one-image batches (`fedavg-E-K`: the attacker simulates the local "
                  "steps). Each is paired with the FedSGD attack on the same policy and images.", "",
                  markdown_threats(result), ""]
    if stages_png:
        lines += [f"![Leakage over training](figures/{stages_png.name})", ""]
    lines += ["## Does S_pri predict privacy?", "",
              f"{c.correlation} random policies, S_pri on {_score_model(result)} (`{c.score.name}` score preset), "
              "attacked on the `none` model with the policy applied by the client"
              + (f", with {c.correlation_budget} iterations of `{c.attack.name}` (the table's: "
                 f"{c.attack.iterations}; this study compares policies at one budget)"
                 if c.correlation_budget != c.attack.iterations else "")
              + ".", "", markdown_correlation(result)]
    if scatter:
        lines += ["", f"![S_pri against attack PSNR]({Path(scatter).relative_to(path.parent).as_posix()})"
                  if Path(scatter).is_relative_to(path.parent) else f"![S_pri against attack PSNR]({Path(scatter).name})"]
    lines += ["", "## Pictures", "", *_grids(result, path, workdir, images), ""]
    lines += ["## What the numbers show", ""] + [f"* {line}" for line in findings(result)]
    lines += ["", "## Caveats", "", *_caveats(result), "", "## The paper preset (GPU)", "", *_paper_preset(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def _grids(result: BenchmarkResult, path: Path, workdir, images) -> list[str]:
    """The grids' Markdown (and PNGs under figures/, which show test images and are not shipped)."""
    from ats import figures

    if workdir is None or images is None:
        return ["(No grids: the report was written without the benchmark's folder.)"]
    out = ["Each column is one test image; rows: x, then per policy T(x), the plain attack's reconstruction and "
           "the aware attacker's. Captions: PSNR vs x / aligned PSNR (dB). These pictures show CIFAR-100 test "
           "images, so they are written next to the report by the command and not kept in the repository.", ""]
    for study in ("table", "threat", "regime"):
        rows = figures.grid_rows(result, workdir, images, study)
        saved = figures.save_grid(rows, path.parent / "figures" / f"{path.stem}-grid-{study}.png",
                                  title=f"{study}: {result.config.name} preset")
        if saved is not None:
            out += [f"![{study} reconstructions](figures/{saved.name})", ""]
    return out


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
