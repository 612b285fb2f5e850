"""Image-quality scores for reconstructions, per image.

Gao et al. (CVPR 2021, §5.1) report PSNR (peak 1.0) between the attacker's reconstruction and the
*transformed* image T(x); the original code also saves the pixel MSE and the MSE of the model's
logits ("feat_mse"). We add SSIM and scores against the original x. Joint reconstructions of a
batch come back in arbitrary order, so `pair_reconstructions` matches them to the originals first.
A NaN reconstruction (a failed attack) scores NaN; it never raises. LPIPS is computed when its
pretrained backbone is on the machine and left empty (NaN, noted once) otherwise.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

MIN_MSE = 1e-10  # identical images score 10·log10(1 / 1e-10) = 100 dB instead of infinity
PSNR_CAP = -10 * math.log10(MIN_MSE)  # 100 dB: what identical images score (at peak 1)


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.dim() != 4 or a.shape != b.shape:
        raise ValueError(f"expected two (B, C, H, W) batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error per image, (B,)."""
    _check_pair(a, b)
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


def psnr(a: Tensor, b: Tensor, peak: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, (B,); the MSE is clamped at 1e-10 (≤ 100 dB at peak 1)."""
    return 10 * torch.log10(peak**2 / mse(a, b).clamp(min=MIN_MSE))


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Structural similarity per image (torchmetrics, Gaussian window 11, data range 1), (B,).

    The SSIM map is averaged over the whole image, borders included (scikit-image's score drops a
    5-pixel border, and reads about 0.03 higher on noisy 32×32 images).

    Computed in float64: in float32 the local variances of flat regions round to a few 1e-7 and
    identical flat images score 0.9996 instead of 1.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(a, b)
    return structural_similarity_index_measure(a.double(), b.double(), data_range=1.0, reduction="none").float()


@torch.no_grad()
def feature_mse(model: nn.Module, a: Tensor, b: Tensor) -> Tensor:
    """MSE between the model's logits for `a` and for `b`, per image, (B,)."""
    _check_pair(a, b)
    return (model(a) - model(b)).float().pow(2).mean(1)


def pair_reconstructions(recon: Tensor, originals: Tensor) -> Tensor:
    """The permutation `order` with `recon[order][i]` matching `originals[i]`, (B,).

    Optimal one-to-one matching by MSE (Hungarian algorithm); NaN reconstructions go last.
    """
    from scipy.optimize import linear_sum_assignment

    if recon.shape != originals.shape or recon.dim() != 4:
        raise ValueError(f"cannot pair {tuple(recon.shape)} reconstructions with {tuple(originals.shape)} originals")
    a = originals.detach().cpu().double().flatten(1)  # (B, D)
    b = recon.detach().cpu().double().flatten(1)  # (B, D)
    cost = (a[:, None, :] - b[None, :, :]).pow(2).mean(-1)  # (B originals, B recons)
    cost = torch.nan_to_num(cost, nan=1e30, posinf=1e30)
    _, columns = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(columns, dtype=torch.long)


def image_scores(recon: Tensor, original: Tensor, transformed: Tensor) -> dict[str, Tensor]:
    """PSNR, SSIM and MSE of `recon` against the original x and against T(x), each (B,) on the CPU.

    Every key says what it compares with: "_x" the original x, "_tx" the transformed T(x).
    """
    recon, original, transformed = (t.detach().cpu().float() for t in (recon, original, transformed))
    return {
        "psnr_x": psnr(recon, original),
        "psnr_tx": psnr(recon, transformed),
        "ssim_x": ssim(recon, original),
        "ssim_tx": ssim(recon, transformed),
        "mse_x": mse(recon, original),
        "mse_tx": mse(recon, transformed),
    }


# --- LPIPS (Zhang et al., CVPR 2018) through torchmetrics, only when its backbone is on the machine -------

LPIPS_NOTE = ("LPIPS left empty: torchvision's AlexNet weights are not in {path} and ats never downloads them "
              "(load them once with torchvision.models.alexnet(weights='DEFAULT') to fill the column)")
_lpips = {"net": None, "noted": False}


def lpips_weights() -> Path:
    """Where torchvision keeps the AlexNet weights LPIPS needs (the torch hub cache)."""
    from torchvision.models import AlexNet_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(AlexNet_Weights.DEFAULT.url).name


def lpips(a: Tensor, b: Tensor) -> Tensor:
    """LPIPS (AlexNet, torchmetrics' linear heads) per image, (B,); lower is more similar. NaN for
    every image, with one warning a process, when the backbone's weights are not on this machine.
    Images smaller than 64 px are upsampled (bilinear) first, as AlexNet needs."""
    _check_pair(a, b)
    if _lpips["net"] is None:
        if not lpips_weights().is_file():
            if not _lpips["noted"]:
                warnings.warn(LPIPS_NOTE.format(path=lpips_weights().parent), stacklevel=2)
                _lpips["noted"] = True
            return torch.full((a.shape[0],), float("nan"))
        from torchmetrics.functional.image.lpips import _NoTrainLpips

        _lpips["net"] = _NoTrainLpips(net="alex").eval()
    a, b = (t.detach().cpu().float().nan_to_num(0.5).clamp(0, 1) for t in (a, b))
    if a.shape[-1] < 64:
        a, b = (torch.nn.functional.interpolate(t, size=64, mode="bilinear", align_corners=False) for t in (a, b))
    with torch.no_grad():
        return _lpips["net"](a, b, normalize=True).reshape(-1)
