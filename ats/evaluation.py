"""Scoring an attack: each reconstruction against the original image and the transformed one.

The paper (Gao et al., CVPR 2021, §5.1) reports PSNR against the *transformed* image T(x); what a
person cares about is the original x, so both are reported. Joint reconstructions come back in
the attacker's order and are paired to the originals first (optimal matching by MSE).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ats.attacks import Reconstruction
from ats.baselines import aligned_scores, alignment_for, baseline_scores
from ats.federated import ClientSecrets
from ats.metrics import image_scores, lpips, pair_reconstructions


# the per-image scores that `summarize` aggregates: against x, against T(x), aligned to x (the best
# over the flips and shifts the client's transform can make), and what trivial guesses score against x
SCORED = ("psnr_x", "psnr_tx", "ssim_x", "ssim_tx", "psnr_x_aligned", "ssim_x_aligned",
          "baseline_grey", "baseline_mean_colour", "baseline_tx", "lpips_x")


@dataclass(frozen=True)
class ImageResult:
    """One attacked image, as `ats attack --json` prints it: "_x" scores compare with the original
    x, "_tx" scores with the transformed T(x) (the paper's convention), "_x_aligned" with x at the
    best flip and shift the client's transform can produce (a moved image is not a hidden one).
    `baseline_*` are the PSNRs against x of trivial guesses on the same image: flat grey, the
    image's own mean colour, and T(x) itself (see `ats.baselines`)."""

    index: int
    label: int
    label_recovered: bool
    psnr_x: float
    psnr_tx: float
    ssim_x: float
    ssim_tx: float
    mse_x: float
    iterations: int
    status: str
    psnr_x_aligned: float = math.nan
    ssim_x_aligned: float = math.nan
    baseline_grey: float = math.nan
    baseline_mean_colour: float = math.nan
    baseline_tx: float = math.nan
    lpips_x: float = math.nan  # LPIPS against x (lower is closer); NaN without the backbone's weights

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def evaluate_reconstruction(recon: Reconstruction, private: ClientSecrets, originals: Tensor,
                            indices: list[int] | tuple[int, ...] | None = None) -> list[ImageResult]:
    """Score `recon` against `originals` (B, 3, H, W) and the client's own T(x) and true labels,
    aligned to x over what the client's policy and crop can move, beside the trivial baselines."""
    originals = originals.detach().cpu().float()
    transformed = private.transformed.detach().cpu().float()
    images, labels = recon.images, recon.labels
    joint = len(recon.status) == 1 and images.shape[0] > 1
    if joint:
        order = pair_reconstructions(images, transformed)  # recon order[i] matches target i
        images, labels = images[order], labels[order]
    scores = image_scores(images, originals, transformed)
    if recon.transformed is not None:  # a policy-aware attack: its own estimate of T(x) against T(x)
        own = image_scores(recon.transformed, originals, transformed)
        scores.update({k: own[k] for k in ("psnr_tx", "ssim_tx", "mse_tx")})
    scores.update(baseline_scores(originals, transformed))
    scores["lpips_x"] = lpips(images, originals)
    alignment = alignment_for(private.policy, private.crop_flip)
    scores.update(aligned_scores(images.detach().cpu().float(), originals, **alignment))
    true = private.labels.detach().cpu()
    indices = list(indices) if indices is not None else list(range(images.shape[0]))
    results = []
    for i in range(images.shape[0]):
        status = recon.status[0 if joint else i]
        results.append(ImageResult(
            index=int(indices[i]),
            label=int(true[i]),
            label_recovered=bool(labels[i] == true[i]),
            psnr_x=float(scores["psnr_x"][i]),
            psnr_tx=float(scores["psnr_tx"][i]),
            ssim_x=float(scores["ssim_x"][i]),
            ssim_tx=float(scores["ssim_tx"][i]),
            mse_x=float(scores["mse_x"][i]),
            iterations=recon.iteration,
            status=status,
            **{key: float(scores[key][i]) for key in SCORED[4:]},
        ))
    return results


def summarize(results: list[ImageResult]) -> dict[str, float]:
    """Mean, std and median of the PSNRs and SSIMs over finished images (`psnr_x_mean`, `psnr_tx_std`,
    `ssim_x_median`, …), and the label accuracy."""
    ok = [r for r in results if r.status == "ok"]
    summary = {"images": len(results), "failed": len(results) - len(ok)}
    for key in SCORED:
        values = torch.tensor([getattr(r, key) for r in ok], dtype=torch.float64)
        values = values[torch.isfinite(values)]
        if len(values):
            summary[f"{key}_mean"] = float(values.mean())
            summary[f"{key}_std"] = float(values.std()) if len(values) > 1 else 0.0
            summary[f"{key}_median"] = float(values.quantile(0.5))
    summary["label_accuracy"] = sum(r.label_recovered for r in results) / max(1, len(results))
    return summary
