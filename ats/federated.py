"""The federated client: what leaves a participant, and what a server can read from it.

Gao et al. (CVPR 2021, §3): a client transforms its private images with a policy T, computes the
gradient of the training loss over all model parameters, g = ∇θ ½·CE(f(T(x)), y) (the original
code's "half" loss), and shares it, optionally through a gradient defense (§5.1, Table 3): per-layer
pruning of the smallest entries, or Gaussian / Laplacian noise; and, for comparison, DP-SGD
(Abadi et al., CCS 2016: per-example clipping and calibrated noise, `ats.privacy`). Unlike the
original, the defense is applied to the very gradient the attacker sees.

The threat models the paper left out (issue 14) are options of the same client: a FedAvg client
(`local_steps`, `local_batches`, `lr`: `ats.fedavg`) shares the weight difference after its local
training instead of a gradient, and a client can keep its labels (`share_labels=False`), which a
server then estimates per class from the last layer (`infer_label_counts`), repeated labels included.

What leaves the client is typed apart from what stays with it: `client_update` returns a
`ClientRound` of the `SharedUpdate` a server receives (attacks read only that) and the
`ClientSecrets` it never sees (T(x), the true labels, the policy), which only evaluation reads.

Label inference from the update (`ats.labels`, re-exported here) follows iDLG (Zhao et al., 2020): with softmax cross-entropy the
classifier's bias gradient, softmax − onehot, is negative only at the true label.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ats.fedavg import FEDAVG_LR, LocalTraining, weight_difference
from ats.labels import infer_label_counts, infer_labels  # noqa: F401 (re-exported: the server's label inference)
from ats.limits import NOISE_SCALE, PRUNE_PERCENT
from ats.policy import Hybrid, Policy, as_policy
from ats.privacy import DP_CLIP, DP_NOISE, dp_sgd

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "half-ce": lambda logits, y: 0.5 * F.cross_entropy(logits, y),  # the original code's loss
    "ce": F.cross_entropy,
}


@dataclass(frozen=True)
class SharedUpdate:
    """What a server receives from a client: its (defended) gradient and what the server knows.

    `gradients` follow `model.named_parameters()` order (`names`); with `per_example` each has a
    leading batch dimension (B, *param.shape), one gradient per image as if each were its own client.
    `image_shape` (C, H, W) is the model's input shape, which the server knows. `labels` (B,) are
    there only when the threat model says labels leak (`client_update(share_labels=True)`), else None.
    `local` is None for a FedSGD gradient; for a FedAvg client it says how it trained locally (the
    server sets E, K and η), and `gradients` then hold its weight difference θ_end − θ_0.
    """

    gradients: tuple[Tensor, ...]
    names: tuple[str, ...]
    batch_size: int
    per_example: bool
    loss: str
    defense: str
    image_shape: tuple[int, int, int]
    labels: Tensor | None  # (B,) leaked labels, or None
    local: LocalTraining | None = None  # FedAvg: the local training behind a weight difference

    def to(self, device: torch.device | str) -> SharedUpdate:
        """The same update with every tensor on `device`."""
        labels = None if self.labels is None else self.labels.to(device)
        return replace(self, gradients=tuple(g.to(device) for g in self.gradients), labels=labels)


@dataclass(frozen=True)
class ClientSecrets:
    """What never leaves the client: kept only to score reconstructions (`ats.evaluation`).

    `transformed` holds T(x), (B, 3, H, W), which the paper's PSNR is measured against; `labels`
    the true labels (B,); `policy` and `crop_flip` the transform that made T(x). A policy-aware
    attacker is told the policy separately, as its threat model says (`ats.attacks.reconstruct`).
    """

    labels: Tensor  # (B,)
    transformed: Tensor  # (B, 3, H, W)
    policy: Policy | Hybrid
    crop_flip: bool  # whether a random crop and flip came before the policy


class ClientRound(NamedTuple):
    """One client step: `shared, private = client_update(...)`."""

    shared: SharedUpdate
    private: ClientSecrets


def loss_gradients(model: nn.Module, x: Tensor, y: Tensor, *, loss: str = "half-ce",
                   per_example: bool = False) -> tuple[Tensor, ...]:
    """∇θ loss(model(x), y) for every parameter, in `named_parameters()` order.

    With `per_example`, one gradient per image (leading dim B) from a single `vmap(grad(...))`.
    The gradients stay differentiable with respect to `x`.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} is not one of {', '.join(LOSSES)}")
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if per_example and model.training and batchnorm:
        raise ValueError("per-example gradients need model.eval(): BatchNorm in training mode mixes a batch's images")
    criterion = LOSSES[loss]
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss_of(params: dict[str, Tensor], buffers: dict[str, Tensor], images: Tensor, labels: Tensor) -> Tensor:
        return criterion(functional_call(model, (params, buffers), (images,)), labels)

    if per_example:
        def one(params: dict[str, Tensor], image: Tensor, label: Tensor) -> dict[str, Tensor]:
            return grad(loss_of)(params, buffers, image[None], label[None])
        grads = vmap(one, in_dims=(None, 0, 0))(params, x, y)  # each (B, *shape)
    else:  # buffers passed in, not captured: BatchNorm in training mode updates its statistics
        grads = grad(loss_of)(params, buffers, x, y)
    return tuple(grads[name] for name in params)


# --- gradient defenses ---------------------------------------------------------------------------

def _identity(g: Tensor, amount: float, generator: torch.Generator | None, per_example: bool) -> Tensor:
    return g


def _prune(g: Tensor, amount: float, generator: torch.Generator | None, per_example: bool) -> Tensor:
    """Zero the ⌊p %·numel⌋ smallest-magnitude entries of the tensor (of each example's slice)."""
    rows = g.reshape(g.shape[0] if per_example else 1, -1)  # (R, N)
    k = math.floor(amount * rows.shape[1] / 100)
    if k == 0:
        return g
    smallest = rows.abs().topk(k, dim=1, largest=False).indices  # (R, k)
    return rows.scatter(1, smallest, 0.0).reshape(g.shape)


def _gauss(g: Tensor, amount: float, generator: torch.Generator | None, per_example: bool) -> Tensor:
    return g + amount * torch.randn(g.shape, generator=generator, device=g.device, dtype=g.dtype)


def _laplace(g: Tensor, amount: float, generator: torch.Generator | None, per_example: bool) -> Tensor:
    """Adds b·Laplace(0, 1), drawn as the difference of two Exp(1) variables."""
    e1 = torch.empty_like(g).exponential_(1.0, generator=generator)
    e2 = torch.empty_like(g).exponential_(1.0, generator=generator)
    return g + amount * (e1 - e2)


_KERNELS: dict[str, Callable[[Tensor, float, torch.Generator | None, bool], Tensor]] = {
    "none": _identity, "prune": _prune, "gauss": _gauss, "lap": _laplace,
}
_ALIASES = {"prune": "prune", "gauss": "gauss", "gaussian": "gauss", "lap": "lap", "laplace": "lap", "laplacian": "lap"}
_NEEDS_GENERATOR = ("gauss", "lap")
DEFENSES = ("none", "prune-70", "prune-95", "prune-99", "gauss-1e-3", "gauss-1e-2", "lap-1e-3", "lap-1e-2")
_FORMS = ("'none', 'prune-P' (P 0.1..99.9), 'gauss-S' or 'gaussian-S' (S 1e-6..10), 'lap-B', 'laplace-B' or "
          "'laplacian-B' (B 1e-6..10), 'dp-C-σ' (DP-SGD: clip C 1e-6..1000, noise multiplier σ 0..100)")
# the ranges of `ats.limits` (PRUNE_PERCENT, NOISE_SCALE) and `ats.privacy` (DP_CLIP, DP_NOISE)


def _format_amount(value: float) -> str:
    """70 -> '70', 0.5 -> '0.5', 0.001 -> '1e-3': short, and `float()` reads it back exactly."""
    number = Decimal(repr(float(value))).normalize()
    return format(number, "e" if value < 0.1 else "f")


_RANGES = {"prune": PRUNE_PERCENT, "gauss": NOISE_SCALE, "lap": NOISE_SCALE, "dp": DP_NOISE}


@dataclass(frozen=True)
class Defense:
    """A gradient defense: `kind` (none, prune, gauss, lap, dp) with its `amount` (p %, σ, b, or
    DP-SGD's noise multiplier σ) and, for dp only, the per-example `clip` norm C."""

    kind: str = "none"
    amount: float = 0.0
    clip: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in (*_KERNELS, "dp"):
            raise ValueError(f"defense kind {self.kind!r} is not one of {', '.join((*_KERNELS, 'dp'))}")
        low, high = _RANGES.get(self.kind, (0, 0))
        valid = self.amount == 0 if self.kind == "none" else low <= self.amount <= high
        clip_valid = DP_CLIP[0] <= self.clip <= DP_CLIP[1] if self.kind == "dp" else self.clip == 0
        if not (valid and clip_valid):
            raise ValueError(f"defense amount {self.amount!r} (clip {self.clip!r}) does not suit {self.kind!r}; "
                             f"accepted: {_FORMS}")

    def __str__(self) -> str:
        if self.kind == "dp":
            return f"dp-{_format_amount(self.clip)}-{_format_amount(self.amount) if self.amount else '0'}"
        return "none" if self.kind == "none" else f"{self.kind}-{_format_amount(self.amount)}"

    def apply(self, gradients: tuple[Tensor, ...], generator: torch.Generator | None, *,
              per_example: bool = False) -> tuple[Tensor, ...]:
        """The defended gradients; noise comes from `generator` (on the gradients' device).

        DP-SGD clips each example's gradient, so it takes per-example gradients only (each
        example then is its own client); `client_update` aggregates a batch under it.
        """
        if self.kind == "dp":
            if not per_example:
                raise ValueError(f"defense {self} clips each example's gradient: it needs per-example gradients "
                                 "(client_update computes them; an aggregated gradient cannot be clipped per example)")
            return dp_sgd(gradients, self.clip, self.amount, generator, aggregate=False)
        if self.kind in _NEEDS_GENERATOR and generator is None:
            raise ValueError(f"defense {self} draws noise: pass a torch.Generator")
        kernel = _KERNELS[self.kind]
        return tuple(kernel(g, self.amount, generator, per_example) for g in gradients)


_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[-+]?[0-9]{1,3})?")  # plain ASCII decimals only


def parse_defense(text: str | Defense | None) -> Defense:
    """'none', 'prune-70', 'gauss-1e-3' (or 'gaussian-'), 'lap-1e-2' (or 'laplace-', 'laplacian-'),
    'dp-1-1.1' (DP-SGD with clip C = 1 and noise multiplier σ = 1.1).

    The amount is a plain ASCII decimal ("70", "0.5", "1e-3"; no "7_0", no other scripts' digits)
    within `ats.limits.PRUNE_PERCENT` for prune and `NOISE_SCALE` for the noises; DP's C and σ
    within `ats.privacy.DP_CLIP` and `DP_NOISE`.
    """
    if text is None or isinstance(text, Defense):
        return text or Defense()
    cleaned = str(text).strip(" ").lower()
    shown = repr(text) if len(str(text)) <= 40 else f"{str(text)[:30]!r}… ({len(str(text)):,} characters)"
    if cleaned == "none":
        return Defense()
    if cleaned.startswith("dp-"):
        return _parse_dp(cleaned, shown)
    match = re.fullmatch(r"([a-z]+)-(.+)", cleaned)
    if match is None or match.group(1) not in _ALIASES:
        raise ValueError(f"defense {shown} is not understood; accepted: {_FORMS}")
    number = match.group(2)
    if len(number) > 24 or not _NUMBER.fullmatch(number):
        raise ValueError(f"defense {shown} has no plain number after the dash; accepted: {_FORMS}")
    kind, amount = _ALIASES[match.group(1)], float(number)
    low, high = PRUNE_PERCENT if kind == "prune" else NOISE_SCALE
    if not low <= amount <= high:
        raise ValueError(f"defense {shown}: {kind} must be {low:g}..{high:g}, got {amount:g}; accepted: {_FORMS}")
    return Defense(kind, amount)


def _parse_dp(cleaned: str, shown: str) -> Defense:
    """'dp-C-σ' -> Defense("dp", σ, clip=C), each number plain and in its range."""
    match = re.fullmatch(rf"dp-({_NUMBER.pattern})-({_NUMBER.pattern})", cleaned) if len(cleaned) <= 50 else None
    if match is None:
        raise ValueError(f"defense {shown} is not 'dp-C-σ' with two plain non-negative numbers; accepted: {_FORMS}")
    clip, sigma = float(match.group(1)), float(match.group(2))
    for name, value, (low, high) in (("clip C", clip, DP_CLIP), ("noise multiplier σ", sigma, DP_NOISE)):
        if not low <= value <= high:
            raise ValueError(f"defense {shown}: the {name} must be {low:g}..{high:g}, got {value:g}; accepted: {_FORMS}")
    return Defense("dp", sigma, clip=clip)


# --- the client -----------------------------------------------------------------------------------

def client_update(model: nn.Module, x: Tensor, y: Tensor, policy: Policy | Hybrid | str = Policy.none(),
                  defense: Defense | str | None = None, *, crop_flip: bool = False,
                  generator: torch.Generator | None = None, loss: str = "half-ce", per_example: bool = False,
                  share_labels: bool = True, local_steps: int = 0, local_batches: int = 1,
                  lr: float = FEDAVG_LR) -> ClientRound:
    """One step of a client on images `x` (B, 3, H, W) in [0, 1] with labels `y` (B,).

    `policy` is an `ats.policy.Policy`/`Hybrid` or its string ("3-1-7"), `Policy.none()` (the
    default) for none. `crop_flip` puts a random crop (pad 4) and horizontal flip before the policy
    (with a policy: the original's "aug" mode); with neither, the client shares the gradient of x
    itself ("normal" mode). `share_labels=False` keeps the labels off the shared update. The model
    is used in its current mode (callers put it in eval()). Randomness comes only from `generator`.

    FedSGD (`local_steps=0`, the default) shares the gradient. FedAvg (`local_steps=E` ≥ 1) shares
    the weight difference after E local epochs of SGD at `lr` over `local_batches` K mini-batches
    of T(x) (in order; `ats.fedavg`): the policy is applied once, and every batch is its share of
    T(x). A defense then acts on the difference; DP-SGD (`dp-C-σ`) acts on FedSGD gradients only.
    """
    if x.dim() != 4 or y.shape != (x.shape[0],):
        raise ValueError(f"images must be (B, C, H, W) with labels (B,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"images must lie in [0, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")
    policy = as_policy(policy)
    defense = parse_defense(defense)
    transformed = x
    if crop_flip or policy != Policy.none():
        if generator is None:
            raise ValueError("transforming images draws random numbers: pass a torch.Generator")
        transformed = policy.transform(x, generator, crop_flip=crop_flip)  # (B, 3, H, W)
    transformed = transformed.detach()
    local = LocalTraining(local_steps, local_batches, lr) if local_steps else None
    if local is not None:
        if per_example or defense.kind == "dp":
            raise ValueError("a FedAvg client shares one weight difference: no per-example updates and no DP-SGD "
                             "(which clips FedSGD gradients)")
        gradients = local_difference(model, transformed, y, local, loss=loss)
        gradients = defense.apply(gradients, generator)
    elif defense.kind == "dp":  # per-example gradients, clipped and noised, summed unless per-example
        gradients = loss_gradients(model, transformed, y, loss=loss, per_example=True)
        gradients = dp_sgd(gradients, defense.clip, defense.amount, generator, aggregate=not per_example)
    else:
        gradients = loss_gradients(model, transformed, y, loss=loss, per_example=per_example)
        gradients = defense.apply(gradients, generator, per_example=per_example)
    shared = SharedUpdate(
        gradients=tuple(g.detach() for g in gradients),
        names=tuple(name for name, _ in model.named_parameters()),
        batch_size=x.shape[0],
        per_example=per_example,
        loss=loss,
        defense=str(defense),
        image_shape=tuple(x.shape[1:]),
        labels=y.detach() if share_labels else None,
        local=local,
    )
    return ClientRound(shared, ClientSecrets(y.detach(), transformed, policy, bool(crop_flip)))


def local_difference(model: nn.Module, x: Tensor, y: Tensor, local: LocalTraining, *,
                     loss: str = "half-ce") -> tuple[Tensor, ...]:
    """A FedAvg client's weight difference θ_end − θ_0 after `local` training on (x, y), in
    `named_parameters()` order (`ats.fedavg.weight_difference`); the model itself is left as it was."""
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} is not one of {', '.join(LOSSES)}")
    criterion = LOSSES[loss]
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def batch_loss(params: dict[str, Tensor], batch: slice) -> Tensor:
        return criterion(functional_call(model, (params, buffers), (x[batch],)), y[batch])

    difference = weight_difference(batch_loss, params, x.shape[0], local)
    return tuple(difference[name] for name in params)
