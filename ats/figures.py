"""The benchmark's figures: S_pri against PSNR, leakage over training, and reconstruction grids.

Figures are matplotlib PNGs rendered from a `BenchmarkResult` (Gao et al., CVPR 2021, Fig. 2 is
the S_pri scatter). The grids show, for the same first images of the attack set, x, then per
policy T(x), the plain attack's reconstruction and the policy-aware attacker's, each captioned
with its PSNR against x and its aligned PSNR. They are built from the reconstructions the
benchmark keeps per cell (`ats.benchmark.grid_path`) and the test images themselves, so they are
written next to a report, not shipped: they show CIFAR-100 test images.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ats.benchmark import BenchmarkResult, grid_path
from ats.cells import CellKey
from ats.evidence import stage_rows
from ats.store import BenchmarkRow


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def save_scatter(result: BenchmarkResult, path: str | Path) -> Path | None:
    """S_pri against attack PSNR (median per policy) for the correlation study; None when it did not run."""
    rows = [r for r in result.rows if r.study == "correlation"]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    xs = [r.summary.get("privacy", math.nan) for r in rows]
    ax.scatter(xs, [r.summary.get("psnr_tx_median", math.nan) for r in rows], label="PSNR vs T(x)")
    ax.scatter(xs, [r.summary.get("psnr_x_median", math.nan) for r in rows], marker="x", label="PSNR vs x")
    c = result.correlation["vs_transformed"]
    ax.set(xlabel="S_pri (lower = more private)", ylabel="attack PSNR, median over images (dB)",
           title=f"S_pri vs PSNR(T(x)): r = {c['pearson']:.2f} "
                 f"[{c.get('pearson_ci_low', math.nan):.2f}, {c.get('pearson_ci_high', math.nan):.2f}], n = {c['n']}")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def save_stages(result: BenchmarkResult, path: str | Path) -> Path | None:
    """Median PSNR against x (95 % interval) and the mean-colour baseline per training stage."""
    rows = stage_rows(result.rows)
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    for policy in dict.fromkeys(r.policy for r in rows):
        mine = [r for r in rows if r.policy == policy]
        stages = [r.summary["stage"] for r in mine]
        median = [r.summary["psnr_x_median"] for r in mine]
        low = [m - r.summary.get("psnr_x_ci_low", m) for m, r in zip(median, mine)]
        high = [r.summary.get("psnr_x_ci_high", m) - m for m, r in zip(median, mine)]
        ax.errorbar(stages, median, yerr=[low, high], marker="o", capsize=3, label=f"{policy}: attack")
        ax.plot(stages, [r.summary["baseline_mean_colour_median"] for r in mine], ls="--", lw=1,
                label=f"{policy}: mean-colour baseline")
    ax.set(xlabel="training stage (epochs)", ylabel="PSNR vs x, median over images (dB)",
           title="Leakage over training (95 % bootstrap intervals)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def grid_rows(result: BenchmarkResult, workdir: str | Path, x: torch.Tensor, study: str = "table"
              ) -> list[tuple[str, torch.Tensor, list[str]]]:
    """The rows of one study's grid: (label, images (n, 3, H, W) in [0, 1], captions). `x` holds the
    attack set's first images; cells whose reconstructions were not kept are left out."""
    n = min(result.config.grid_images, result.config.images, x.shape[0])
    out = [("x", x[:n].float().cpu(), ["" for _ in range(n)])]
    by_key = {(r.study, r.policy, r.defense): r for r in result.rows if r.study != "threat"}
    if study == "table":
        wanted = [(p, by_key.get(("table", p, "none")), by_key.get(("aware", p, "none")))
                  for p in result.config.table_policies(0)]
    else:  # every cell of the study, a threat cell named by its threat, a regime by its model and stage
        wanted = [(_grid_label(r), r, None) for r in result.rows if r.study == study]
    for policy, plain, aware in wanted:
        kept = _kept(plain, workdir)
        if kept is None:
            continue
        if plain.policy != "none":  # with no policy the client shares the gradient of x itself: T(x) = x
            out.append((f"T(x) {policy}", kept["transformed"][:n].float() / 255, ["" for _ in range(n)]))
        out.append((f"{plain.attack} {policy}", kept["recon"][:n].float() / 255, _captions(plain, n)))
        kept_aware = _kept(aware, workdir)
        if kept_aware is not None:
            out.append((f"{aware.attack} {policy}", kept_aware["recon"][:n].float() / 255, _captions(aware, n)))
    return out


def _grid_label(row: BenchmarkRow) -> str:
    """A grid row's name beyond the table: its threat ("batch-4 none") or its model and stage ("resnet20 e0 none")."""
    if row.study == "threat":
        return f"{row.summary.get('threat')} {row.policy}"
    if row.study == "regime":
        return f"{row.summary.get('arch')} e{row.summary.get('stage')} {row.policy}"
    return row.policy


def _kept(row: BenchmarkRow | None, workdir: str | Path) -> dict | None:
    if row is None:
        return None
    path = grid_path(workdir, CellKey(*row.key))
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged file costs its row of the grid, not the report
        return None


def _captions(row: BenchmarkRow, n: int) -> list[str]:
    out = []
    for image in row.per_image[:n]:
        plain, aligned = image.get("psnr_x"), image.get("psnr_x_aligned")
        out.append("–" if plain is None else f"{plain:.1f}" + ("" if aligned is None else f" / {aligned:.1f}"))
    return out


def save_grid(rows: list[tuple[str, torch.Tensor, list[str]]], path: str | Path, title: str = "") -> Path | None:
    """One grid: a row per (label, images, captions); captions are "PSNR vs x / aligned PSNR" in dB."""
    if len(rows) < 2:
        return None
    plt = _pyplot()
    n = rows[0][1].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 1.4, 1.25 * len(rows)), dpi=110, squeeze=False)
    for r, (label, images, captions) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(images[c].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if captions[c]:
                ax.set_xlabel(captions[c], fontsize=6, labelpad=1)
            if c == 0:
                ax.set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    top = 1.0
    if title:  # tight_layout ignores the title: keep a strip of 0.3 inch above the first row for it
        fig.suptitle(title, fontsize=8)
        top -= 0.3 / fig.get_figheight()
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, top))
    return _save(fig, path)
