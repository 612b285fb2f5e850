"""DP-SGD as a comparison defense: per-example clipping, Gaussian noise, and the ε it buys.

Abadi et al. ("Deep Learning with Differential Privacy", CCS 2016) clip each example's gradient
to L2 norm at most C (over all parameters at once), sum the clipped gradients, add Gaussian noise
of standard deviation σ·C to the sum, and divide by the batch size. The shared update is then
(Σ_i clip(g_i) + N(0, σ²C²·I)) / B: the average gradient the attacker expects, clipped and noised.
Unlike the paper's gradient defenses (`ats.federated.Defense`: pruning, noise of a fixed scale),
its noise is calibrated to a privacy budget: (ε, δ)-differential privacy for given δ, sampling
rate q and number of steps, from the Rényi-DP accountant of the sampled Gaussian mechanism
(Mironov et al. 2019) as Opacus implements it (`dp_epsilon`; Opacus is imported only there).

In `ats` DP is the defense string `dp-C-σ` (e.g. `dp-1-1.1`), parsed by
`ats.federated.parse_defense`; `client_update` computes per-example gradients for it.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

DP_DELTA = 1e-5  # δ when none is given (the usual choice for data sets of ~10^4–10^5 examples)
DP_CLIP = (1e-6, 1e3)  # C, the per-example L2 norm bound
DP_NOISE = (0.0, 100.0)  # σ, the noise multiplier (0: clipping only, no privacy guarantee)


def per_example_norms(gradients: tuple[Tensor, ...]) -> Tensor:
    """Each example's gradient norm over all parameters, (B,), from per-example gradients (B, *shape)."""
    return torch.cat([g.flatten(1) for g in gradients], dim=1).norm(dim=1)


def clip_per_example(gradients: tuple[Tensor, ...], clip: float) -> tuple[Tensor, ...]:
    """Per-example gradients (B, *shape) scaled to L2 norm at most `clip`, as Abadi et al.'s
    g_i / max(1, ‖g_i‖ / C); gradients already within the bound are left as they are."""
    scale = (clip / per_example_norms(gradients).clamp_min(1e-30)).clamp(max=1.0)  # (B,)
    return tuple(g * scale.reshape(-1, *([1] * (g.dim() - 1))) for g in gradients)


def dp_sgd(gradients: tuple[Tensor, ...], clip: float, noise_multiplier: float,
           generator: torch.Generator | None, *, aggregate: bool) -> tuple[Tensor, ...]:
    """DP-SGD's update from per-example gradients (B, *shape): clipped to `clip`, noised with σ·C.

    `aggregate`: one update for the batch, (Σ_i clip(g_i) + N(0, σ²C²)) / B, shaped like a
    parameter. Otherwise every example is its own client with a batch of one: clip(g_i) + N(0, σ²C²)
    each, still (B, *shape). Noise comes from `generator`, on the gradients' device.
    """
    if noise_multiplier > 0 and generator is None:
        raise ValueError("DP-SGD draws noise: pass a torch.Generator")
    clipped = clip_per_example(gradients, clip)
    batch = clipped[0].shape[0]
    out = []
    for g in clipped:
        summed = g.sum(0) if aggregate else g
        if noise_multiplier > 0:
            summed = summed + noise_multiplier * clip * torch.randn(
                summed.shape, generator=generator, device=summed.device, dtype=summed.dtype)
        out.append(summed / batch if aggregate else summed)
    return tuple(out)


def dp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float = DP_DELTA) -> float:
    """ε of DP-SGD with noise multiplier σ, Poisson sampling rate q and `steps` steps, at `delta`.

    Opacus's RDP accountant (`opacus.accountants.RDPAccountant`'s orders and analysis: Rényi DP of the sampled Gaussian
    mechanism, Mironov et al. 2019, converted to (ε, δ) by Balle et al. 2020's bound). ∞ without
    noise. Needs the `opacus` package (`pip install ats[dp]`).
    """
    if not 0 < sample_rate <= 1:
        raise ValueError(f"the sampling rate must be in (0, 1], got {sample_rate}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if noise_multiplier < 0:
        raise ValueError(f"the noise multiplier must be non-negative, got {noise_multiplier}")
    if noise_multiplier == 0:
        return math.inf
    try:
        from opacus.accountants import RDPAccountant
        from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    except ImportError as error:
        raise ImportError("dp_epsilon needs the opacus package: pip install 'ats[dp]'") from error
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=orders)
    with warnings.catch_warnings():  # "optimal order is the largest (smallest) alpha": a looser bound, still a bound
        warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
        epsilon, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(epsilon)


def update_epsilon(noise_multiplier: float, delta: float = DP_DELTA) -> float:
    """ε of one DP-SGD update that surely holds the image (sampling rate 1, one step), at `delta`.

    This bounds what the one shared update an attacker inverts can reveal about an image in it,
    with no amplification by sampling (the attacker knows the client used the image).
    """
    return dp_epsilon(noise_multiplier, 1.0, 1, delta)


def training_steps(images: int, batch_size: int, epochs: int) -> int:
    """The steps of `epochs` passes over `images` in batches of `batch_size` (the last batch partial)."""
    if images < 1 or batch_size < 1 or epochs < 0:
        raise ValueError(f"images={images}, batch_size={batch_size} must be at least 1, epochs={epochs} not negative")
    return epochs * -(-images // batch_size)


def training_epsilon(noise_multiplier: float, batch_size: int, images: int, epochs: int,
                     delta: float = DP_DELTA) -> float:
    """ε of DP-SGD training for `epochs` epochs over `images` in batches of `batch_size`, at `delta`.

    The sampling rate is batch_size / images and the steps `training_steps`; 0 epochs spend no
    budget (ε = 0). `ats.train` shuffles and takes fixed-size batches, where the RDP analysis
    assumes Poisson sampling: the usual approximation (Opacus's own default data loader makes it
    too), not a proof for the batches actually drawn.
    """
    if epochs == 0:
        return 0.0
    return dp_epsilon(noise_multiplier, min(1.0, batch_size / images), training_steps(images, batch_size, epochs),
                      delta)


def noise_for_epsilon(epsilon: float, *, sample_rate: float = 1.0, steps: int = 1, delta: float = DP_DELTA) -> float:
    """The noise multiplier σ at which DP-SGD spends `epsilon` (Opacus's `get_noise_multiplier`, RDP)."""
    if not 0 < epsilon < math.inf:
        raise ValueError(f"the target ε must be positive and finite, got {epsilon}")
    try:
        from opacus.accountants.utils import get_noise_multiplier
    except ImportError as error:
        raise ImportError("noise_for_epsilon needs the opacus package: pip install 'ats[dp]'") from error
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant="rdp"))
