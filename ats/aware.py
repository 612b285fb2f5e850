"""The policy-aware attacker's geometry: which transforms it hypothesizes, and how it applies them.

Gao et al. (CVPR 2021) attack only the transformed image T(x). An attacker who knows the client's
policy can instead reconstruct the untransformed x through a differentiable guess of T: the
threat the paper left out, which the 2022 ReScience reproduction of ATS found undoes most of the
translations' protection. The attacker (`ats.attacks.AttackConfig.aware_ig`) learns a shift in
pixels per candidate, starting from the policy's own translation, and tries the random signs of
the policy's shifts and the crop's flip over restarts (see `shift_hypotheses`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ats.policy import Hybrid, Policy, as_policy


def shift_hypotheses(policy: Policy | Hybrid | str, crop_flip: bool, restarts: int,
                     size: int = 32) -> tuple[Tensor, Tensor, Tensor]:
    """What an attacker who knows `policy` assumes about its geometry, per restart.

    Returns the reach (2,), the largest |shift| in pixels (x, y) the policy plus a padding-4 crop
    can apply (for a hybrid, the largest over its policies); the starting shift of each restart
    (R, 2): the policy's own total shift (of its largest-shifting policy), signed by bits 1 and 2
    of the restart index; and whether each restart assumes a flipped image (R,), bit 0, when a
    crop and flip came first. The crop's ±4 px are left to the optimizer.
    """
    parsed = as_policy(policy)
    reach, typical = torch.zeros(2), torch.zeros(2)
    for part in parsed.policies if isinstance(parsed, Hybrid) else (parsed,):
        shift = torch.zeros(2)
        for op in part.ops:
            if op.name in ("translateX", "translateY"):
                shift[int(op.name == "translateY")] += op.magnitude * size
        if shift.sum() > typical.sum():
            typical = shift
        reach = torch.maximum(reach, shift)
    r = torch.arange(restarts)
    flips = (r % 2 == 1) & crop_flip
    signs = torch.stack([1 - 2 * (r // 2 % 2), 1 - 2 * (r // 4 % 2)], dim=1).float()
    return reach + (4.0 if crop_flip else 0.0), signs * typical, flips


def warp(pixels: Tensor, shift: Tensor, flip: Tensor) -> Tensor:
    """The aware attacker's guess of the transform on (k, C, H, W) pixels: flip, then shift.

    `shift` (2,) is in pixels (x, y), fractional and differentiable (bilinear sampling); uncovered
    pixels are black, as the policy's translations leave them. `flip` is a bool scalar. Several
    candidates at once: pixels (N, k, C, H, W), shift (N, 2), flip (N,).
    """
    lead = shift.shape[:-1]  # () or (N,)
    k, c, h, w = pixels.shape[-4:]
    pixels = torch.where(flip.reshape(*lead, 1, 1, 1, 1), pixels.flip(-1), pixels)
    xs = (torch.arange(w, device=pixels.device) * 2 + 1) / w - 1  # pixel centres, align_corners=False
    ys = (torch.arange(h, device=pixels.device) * 2 + 1) / h - 1
    grid_x = (xs - 2 * shift[..., 0:1] / w)[..., None, :].expand(*lead, h, w)
    grid_y = (ys - 2 * shift[..., 1:2] / h)[..., :, None].expand(*lead, h, w)
    grid = torch.stack([grid_x, grid_y], dim=-1)[..., None, :, :, :].expand(*lead, k, h, w, 2)
    out = F.grid_sample(pixels.reshape(-1, c, h, w), grid.reshape(-1, h, w, 2), mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return out.reshape(pixels.shape)
