"""Trivial baselines and alignment-aware scores: what a reconstruction's PSNR against x means.

Gao et al. (CVPR 2021, §5.1) score reconstructions by PSNR against the transformed image T(x).
Against the original x, PSNR alone misleads at 32×32: a flat grey image scores about 12 dB, the
image's own mean colour about 14 dB, and a perfectly recognisable copy of x shifted by 4 px with a
black border also about 12 dB. So every score is reported beside trivial guesses on the same images
(`baseline_scores`, including T(x) itself: what perfect recovery of T(x) scores against x), and at
the best flip, integer shift and small rotation of the reconstruction (`aligned_scores`) that the
client's crop and policy can produce (`alignment_for`), which separates "hidden" from "moved".

Shift convention: `shift` (dx, dy) says the (un-flipped, un-rotated) reconstruction is x moved
right by dx and down by dy, `recon[..., i + dy, j + dx] ≈ x[..., i, j]`; each shift is scored on the
overlap of the two images only (no padding, no wrapping), so an exact shift of x with any border
scores as x does (100 dB when identical there). `flipped` means the reconstruction is flipped
horizontally before it is rotated and shifted: a crop-then-flip T(x) of the client reads as
flipped=True with the crop's shift.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ats.aware import shift_hypotheses
from ats.metrics import MIN_MSE, psnr, ssim
from ats.policy import Hybrid, Policy, as_policy

BASELINES = ("grey", "mean_colour", "tx")
MAX_SHIFT = 8  # beyond this the overlap is small, and SSIM needs 11 px of it
MAX_ANGLE = 30.0  # degrees; the pool's largest rotation
_SSIM_WINDOW = 11
_CROP_PAD = 4  # the client's random crop pads by 4 (`ats.ops.random_crop_flip`)


def _check_images(x: Tensor, other: Tensor, what: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3 or other.shape != x.shape:
        raise ValueError(f"expected x and {what} as two (B, 3, H, W) batches of one shape, "
                         f"got {tuple(x.shape)} and {tuple(other.shape)}")


def baseline_images(x: Tensor, transformed: Tensor) -> dict[str, Tensor]:
    """The trivial guesses (B, 3, H, W) on the CPU: "grey" all 0.5, "mean_colour" each image's own
    per-channel mean colour, "tx" the transformed image T(x) itself."""
    _check_images(x, transformed, "T(x)")
    x = x.detach().cpu().float()
    return {"grey": torch.full_like(x, 0.5),
            "mean_colour": x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone(),
            "tx": transformed.detach().cpu().float()}


def baseline_scores(x: Tensor, transformed: Tensor) -> dict[str, Tensor]:
    """PSNR against x per image (B,) of each guess of `baseline_images`: `baseline_grey`,
    `baseline_mean_colour`, `baseline_tx` (what perfect recovery of T(x) would score against x)."""
    guesses = baseline_images(x, transformed)
    x = x.detach().cpu().float()
    return {f"baseline_{name}": psnr(guess, x) for name, guess in guesses.items()}


def alignment_for(policy: Policy | Hybrid | str, crop_flip: bool, *, size: int = 32) -> dict:
    """The `aligned_scores` arguments covering what the client's transform can do to `size`-px images.

    Covered: the crop (shift 4) and flip when `crop_flip`; the policy's translateX/Y, summed within
    a policy (for a hybrid, the largest policy), rounded up to whole pixels; max_shift is capped at
    8, so the pool's larger translations (up to 14.5 px) are only partly undone. Each rotate op adds
    ±its angle and each shear op ±atan(m) in degrees (a rotation only roughly undoes a shear),
    capped at 30°; composed rotations are not summed. Photometric ops are not undone.
    """
    parsed = as_policy(policy)
    shift, angles = _CROP_PAD if crop_flip else 0, set()
    reach = float(shift_hypotheses(parsed, False, 1, size)[0].max())  # the aware attacker's own reach
    for part in parsed.policies if isinstance(parsed, Hybrid) else (parsed,):
        for op in part.ops:
            if op.name == "rotate" and op.magnitude:
                angles.add(round(min(op.magnitude, MAX_ANGLE), 3))
            elif op.name in ("shearX", "shearY") and op.magnitude:
                angles.add(round(min(math.degrees(math.atan(op.magnitude)), MAX_ANGLE), 3))
    signed = sorted({s * a for a in angles for s in (1, -1)})
    return {"max_shift": min(MAX_SHIFT, shift + math.ceil(reach - 1e-9)), "flip": bool(crop_flip),
            "angles": tuple(signed)}


def _check_alignment(recon: Tensor, x: Tensor, max_shift: int, flip: bool, angles) -> tuple[float, ...]:
    _check_images(x, recon, "the reconstructions")
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or not 0 <= max_shift <= MAX_SHIFT:
        raise ValueError(f"max_shift={max_shift!r} must be a whole number in 0–{MAX_SHIFT}")
    if not isinstance(flip, bool):
        raise ValueError(f"flip={flip!r} must be True or False")
    h, w = x.shape[-2:]
    if min(h, w) - max_shift < _SSIM_WINDOW:
        raise ValueError(f"max_shift={max_shift} leaves a {h - max_shift}×{w - max_shift} overlap of the "
                         f"{h}×{w} images; SSIM needs at least {_SSIM_WINDOW} px")
    try:
        values = tuple(float(a) for a in angles)
    except (TypeError, ValueError):
        raise ValueError(f"angles={angles!r} must be a sequence of degrees") from None
    if not all(math.isfinite(a) and abs(a) <= MAX_ANGLE for a in values):
        raise ValueError(f"angles={angles!r} must be finite degrees within ±{MAX_ANGLE:g}")
    return (0.0,) + tuple(sorted({a for a in values if a != 0.0}))


def _candidates(recon: Tensor, flip: bool, angles: tuple[float, ...]) -> list[tuple[bool, float, Tensor, Tensor]]:
    """(flipped, angle, image (B, 3, H, W), valid-pixel mask (1, 1, H, W)) per flip and angle."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import rotate

    ones = torch.ones(1, 1, *recon.shape[-2:], dtype=recon.dtype)
    out = []
    for flipped in (False, True) if flip else (False,):
        source = recon.flip(-1) if flipped else recon
        for angle in angles:
            if angle == 0.0:
                out.append((flipped, angle, source, ones))
                continue
            image = rotate(source, angle, interpolation=InterpolationMode.NEAREST, fill=0.0)
            mask = rotate(ones, angle, interpolation=InterpolationMode.NEAREST, fill=0.0)
            out.append((flipped, angle, image, mask))
    return out


def _shift_mse(image: Tensor, mask: Tensor, x: Tensor, s: int) -> Tensor:
    """MSE on the overlap for every shift at once, (B, (2s+1)²), index (dy + s)·(2s+1) + (dx + s).

    The zero-padded reconstruction is unfolded into its (2s+1)² windows of x's size; the padding's
    mask is zero, so only the overlap counts. Images go in chunks of about 2·10⁷ values.
    """
    b, c, h, w = x.shape
    pad = (s, s, s, s)
    valid = F.unfold(F.pad(mask.expand(1, c, h, w), pad), (h, w))  # (1, C·H·W, (2s+1)²)
    count = valid.sum(1)  # (1, (2s+1)²)
    step = max(1, int(2e7 // valid.numel()))
    out = []
    for i in range(0, b, step):
        windows = F.unfold(F.pad(image[i:i + step], pad), (h, w))  # (b', C·H·W, (2s+1)²)
        diff = windows.sub_(x[i:i + step].flatten(1)[:, :, None]).mul_(valid)  # in place: memory-bound
        out.append(diff.square_().sum(1) / count)
    return torch.cat(out)


def _shift_order(s: int) -> Tensor:
    """Flat indices of the (2s+1)² shifts, smallest first, so that ties go to the smallest shift."""
    shifts = [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)]
    ranked = sorted(range(len(shifts)), key=lambda k: (max(map(abs, shifts[k])), sum(map(abs, shifts[k]))))
    return torch.as_tensor(ranked, dtype=torch.long)


def _overlap(a: Tensor, b: Tensor, dx: int, dy: int) -> tuple[Tensor, Tensor]:
    """`a` (read as `b` moved by (dx, dy)) and `b`, both cropped to where they overlap."""
    h, w = a.shape[-2:]
    a = a[..., max(0, dy): h + min(0, dy), max(0, dx): w + min(0, dx)]
    b = b[..., max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)]
    return a, b


def _ssim_at(images: list[Tensor], x: Tensor, k: Tensor, dx: Tensor, dy: Tensor, finite: Tensor) -> Tensor:
    """SSIM per image (B,) of candidate `images[k]` shifted by (dx, dy) against x, on the overlap crop."""
    out = torch.full((x.shape[0],), float("nan"))
    crops: dict[tuple[int, int], list[tuple[int, Tensor, Tensor]]] = {}  # by overlap size: one call each
    for i in torch.nonzero(finite).flatten().tolist():
        a, t = _overlap(images[int(k[i])][i], x[i], int(dx[i]), int(dy[i]))
        crops.setdefault(tuple(a.shape[-2:]), []).append((i, a, t))
    for group in crops.values():
        members, a, t = zip(*group)
        out[list(members)] = ssim(torch.stack(a), torch.stack(t))
    return out


@torch.no_grad()
def aligned_scores(recon: Tensor, x: Tensor, *, max_shift: int = 4, flip: bool = True,
                   angles: Sequence[float] = ()) -> dict[str, Tensor]:
    """Per image the best PSNR against x over the alignments of the reconstruction, on the CPU.

    Searched: horizontal flip or not (when `flip`), each rotation in `angles` (degrees,
    counter-clockwise, besides 0; nearest-neighbour like the pool's rotate, since bilinear
    resampling blurs a noisy reconstruction and flatters it by ~3 dB), and every integer shift
    |dx|, |dy| ≤ `max_shift` (≤ 8); each is scored on the overlap only (and, rotated, on the pixels
    the rotation covers). All PSNRs come from one vectorized pass; SSIM only at the winner, on the
    overlap crop (a rotated winner's uncovered corners are black in it). Returns `psnr_x_aligned`,
    `ssim_x_aligned` (B,), `shift` (B, 2) long (dx, dy, see the module docstring), `flipped` (B,)
    bool and `angle` (B,) degrees. A reconstruction with any NaN or infinite pixel scores NaN (at
    shift (0, 0), unflipped); nothing raises for it.
    """
    angles = _check_alignment(recon, x, max_shift, flip, angles)
    recon, x = recon.detach().cpu().float(), x.detach().cpu().float()
    s = max_shift
    finite = torch.isfinite(recon).flatten(1).all(1)  # (B,)
    recon = torch.where(finite[:, None, None, None], recon, torch.zeros_like(recon))
    candidates = _candidates(recon, flip, angles)
    order = _shift_order(s)
    errors = torch.stack([_shift_mse(image, mask, x, s)[:, order] for _, _, image, mask in candidates],
                         dim=1)  # (B, K, (2s+1)²)
    best = errors.flatten(1).argmin(1)  # first minimum: unflipped, unrotated, smallest shift on ties
    k, flat = best // order.numel(), order[best % order.numel()]
    dy, dx = flat // (2 * s + 1) - s, flat % (2 * s + 1) - s
    mse = errors.flatten(1).gather(1, best[:, None]).squeeze(1)
    nan = torch.tensor(float("nan"))
    psnr_aligned = torch.where(finite, 10 * torch.log10(1 / mse.clamp(min=MIN_MSE)), nan).float()
    ssim_aligned = _ssim_at([c[2] for c in candidates], x, k, dx, dy, finite)
    flipped = torch.tensor([candidates[int(i)][0] for i in k], dtype=torch.bool)
    angle = torch.tensor([candidates[int(i)][1] for i in k], dtype=torch.float32)
    return {"psnr_x_aligned": psnr_aligned, "ssim_x_aligned": ssim_aligned,
            "shift": torch.where(finite[:, None], torch.stack([dx, dy], dim=1), 0),
            "flipped": flipped & finite, "angle": torch.where(finite, angle, 0.0)}
