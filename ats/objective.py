"""The gradient-inversion objective: candidates as flat variables, and the cost each one pays.

A `Problem` lays an attack out as arrays: N = groups × restarts candidates, each a flat variable
of k normalized images (+ k label logits for DLG's joint labels, + a learned shift for the
policy-aware attacker, `ats.aware`). A candidate's cost is the distance between the gradient its
images produce and the target gradient the client shared:

* cosine, 1 − ⟨g, g*⟩ / (‖g‖‖g*‖) over all layers at once: Inverting Gradients (Geiping et al.,
  NeurIPS 2020), as Gao et al. (CVPR 2021) evaluate it, plus a total-variation prior;
* squared L2: Deep Leakage from Gradients (Zhu et al., NeurIPS 2019) and iDLG (Zhao et al., 2020);
* L1: the Adam+L1 variant of Gao et al.'s Table 2.

Against a FedAvg client (`ats.fedavg`) the "trial gradient" is the weight difference the
candidate's images produce under the client's local training, simulated step by step and
differentiated through (Geiping et al. §6; Dimitrov et al., TMLR 2022); the costs are the same.

Several candidates' trial gradients come from one batched pass through the model with the
per-example gradients taken by hand (`ats.persample`), when the model is made of layers it covers
and the attack is not against FedAvg; otherwise from one
`torch.func.vmap(grad_and_value(...))`, about 1.6× slower on ResNet20 at 32 candidates. A single
candidate (one image, one restart: what the app and most notebook cells attack) takes plain
autograd, the path of the original Inverting Gradients loop, which costs about half of what `vmap`
does at N = 1 (`bench/attack_speed.py`). All three give the same cost and gradient to float
rounding. Images live in the model's normalized input space, as in the original, so that the learning
rates, TV weight and box mean the same; `to_pixels` maps them back to [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, vmap

from ats.aware import shift_hypotheses, warp
from ats.fedavg import LocalTraining, weight_difference
from ats.federated import SharedUpdate
from ats.labels import infer_label_counts, infer_labels
from ats.models import input_stats, num_classes
from ats.persample import Unsupported, batch_size, per_example_gradients, unsupported
from ats.policy import Hybrid, Policy

if TYPE_CHECKING:
    from ats.attacks import AttackConfig


@dataclass
class Problem:
    """The attack as arrays: N = groups × restarts candidates of k images each."""

    model: nn.Module
    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    config: AttackConfig
    targets: tuple[Tensor, ...]  # per parameter (G, *shape)
    labels: Tensor  # (G, k) known or inferred; unused for joint labels
    groups: int
    k: int
    shape: tuple[int, int, int]
    mean: Tensor  # (3, 1, 1) the model's input normalization
    std: Tensor
    num_classes: int
    half: bool
    reach: Tensor  # (2,) the largest |shift| in pixels (x, y) the aware attacker considers
    starts: Tensor  # (N, 2) per candidate: the shift it starts from (aware attacks)
    flips: Tensor  # (N,) bool, per candidate: does it assume a flipped image (aware attacks)
    restarts: int  # candidates per group: the config's restarts, 1 once screened (`narrow`)
    leaves: dict[str, Tensor]  # the parameters as autograd leaves, for the one-candidate path
    direct: bool  # the leaves are the model's own parameters: the one-candidate path calls the model itself
    gathered: Tensor | None = None  # each candidate's target gradient, flattened: (N, P), made once
    local: LocalTraining | None = None  # a FedAvg update: the client's local training, simulated
    by_hand: bool = False  # several candidates' trial gradients come from `ats.persample`, not `vmap`
    target_norms: Tensor | None = None  # ‖g*‖² of each candidate's target, (N,), made with `gathered`

    @classmethod
    def build(cls, model: nn.Module, update: SharedUpdate, config: AttackConfig, *, joint: bool,
              policy: Policy | Hybrid | str = Policy.none(), crop_flip: bool = False) -> Problem:
        """Attack `update` on `model`: jointly (one group of the whole batch) or image by image.

        `policy` and `crop_flip`: what the attacker knows of the client's transform, from which
        the policy-aware attacker's shift hypotheses come (unused by the other attacks).
        """
        model.eval()
        device = next(model.parameters()).device
        update = update.to(device)
        _check_update(model, update, joint)
        batch = update.batch_size
        groups, k = (1, batch) if joint else (batch, 1)
        targets = tuple(g if update.per_example else g.unsqueeze(0) for g in update.gradients)
        labels = _attack_labels(model, update, config, device)
        mean, std = (t.reshape(-1, 1, 1).to(device) for t in input_stats(model))
        reach, starts, flips = shift_hypotheses(policy, crop_flip, config.restarts, update.image_shape[-1])
        own = dict(model.named_parameters())
        direct = all(p.requires_grad for p in own.values())  # autograd.grad leaves their .grad alone
        return cls(
            model=model,
            params={n: p.detach() for n, p in model.named_parameters()},
            buffers={n: b.detach() for n, b in model.named_buffers()},
            config=config,
            targets=targets,
            labels=labels.reshape(groups, k),
            groups=groups,
            k=k,
            shape=tuple(update.image_shape),
            mean=mean,
            std=std,
            num_classes=num_classes(model),
            half=update.loss == "half-ce",
            reach=reach.to(device),
            starts=starts.repeat(groups, 1).to(device),
            flips=flips.repeat(groups).to(device),
            restarts=config.restarts,
            leaves=own if direct else {n: p.detach().requires_grad_(True) for n, p in own.items()},
            direct=direct,
            local=update.local,
            by_hand=update.local is None and unsupported(model) is None,
        )

    @property
    def image_size(self) -> int:
        return self.k * math.prod(self.shape)

    @property
    def size(self) -> int:
        """Length of one candidate's variable: its images (+ its label logits, for joint labels)."""
        extra = self.k * self.num_classes if self.config.labels == "joint" else 0
        return self.image_size + extra + (2 if self.config.aware else 0)

    @property
    def candidates(self) -> int:
        return self.groups * self.restarts

    def group_of(self) -> Tensor:
        """The group (target) of each candidate, target-major: (N,)."""
        return torch.arange(self.groups, device=self.mean.device).repeat_interleave(self.restarts)

    def narrow(self, chosen: Tensor) -> Problem:
        """The same problem with one candidate per group left: `chosen` (G,), a candidate index each."""
        return replace(self, starts=self.starts[chosen], flips=self.flips[chosen], restarts=1, gathered=None,
                       target_norms=None)

    def initial(self, generator: torch.Generator | None, init: Tensor | None) -> Tensor:
        """The starting variables (N, D): `init`'s images or the config's random ones, leaf tensors."""
        n, device = self.candidates, self.mean.device
        if init is not None:
            if init.numel() != n * self.image_size:
                raise ValueError(f"init has {init.numel()} values, expected {n} candidates × {self.image_size}")
            images = init.to(device, torch.float32).reshape(n, self.image_size)
        elif self.config.init == "randn":
            images = torch.randn(n, self.image_size, generator=generator, device=device)
        elif self.config.init == "rand":
            images = torch.rand(n, self.image_size, generator=generator, device=device)
        else:
            images = torch.zeros(n, self.image_size, device=device)
        if self.config.labels == "joint":
            logits = torch.randn(n, self.size - self.image_size, generator=generator, device=device)
            images = torch.cat([images, logits], dim=1)
        if self.config.aware:  # each candidate starts from its hypothesis' shift
            images = torch.cat([images, self.starts], dim=1)
        return images.clone().requires_grad_(True)

    def unpack(self, v: Tensor) -> tuple[Tensor, Tensor | None]:
        """One candidate's variable -> (normalized images (k, C, H, W), label logits (k, classes) or None)."""
        images = v[: self.image_size].reshape(self.k, *self.shape)
        logits = (v[self.image_size: self.image_size + self.k * self.num_classes].reshape(self.k, self.num_classes)
                  if self.config.labels == "joint" else None)
        return images, logits

    def to_pixels(self, z: Tensor) -> Tensor:
        """Candidates' normalized images -> pixel space, (N, k, C, H, W)."""
        images = z.detach()[:, : self.image_size].reshape(-1, self.k, *self.shape)
        return images * self.std + self.mean

    def bounds(self) -> tuple[Tensor, Tensor]:
        """The image of the pixel box [0, 1] in normalized space: (low, high)."""
        return (0 - self.mean) / self.std, (1 - self.mean) / self.std

    def candidate_cost(self, v: Tensor, target: Tensor, labels: Tensor, flip: Tensor,
                       with_tv: bool = True, plain: bool = False, create_graph: bool = True,
                       norm: Tensor | None = None) -> Tensor:
        """Gradient-matching cost of one candidate (+ TV): the attack's objective.

        The trial gradient comes from `torch.func.grad` (composable with `vmap`), or, with `plain`,
        from `torch.autograd.grad(..., create_graph=True)` on the parameters as leaves. It is
        flattened into one vector and compared with the flat `target` (P,) in a few operations,
        not a handful per parameter tensor: at one candidate on ResNet20 (65 tensors) the
        per-tensor sums and their double backward cost several milliseconds a step. On models whose
        tensors are large (`_WIDE`: ResNet20-4, ConvNet), copying millions of entries into that
        vector costs more, and the plain path's cosine goes piece by piece (`_CosineRows`, given
        `norm`, ‖target‖²) with one fused pass for its gradient. Against a
        FedAvg update the trial is the simulated weight difference (`ats.fedavg.weight_difference`,
        through `torch.func` on either path).
        """
        images, logits = self.unpack(v)
        pixels = images * self.std + self.mean
        if self.config.aware:
            pixels = warp(pixels, v[-2:], flip)

        def loss_of(params: dict[str, Tensor], batch: slice = slice(None)) -> Tensor:
            if params is self.leaves and self.direct:
                out = self.model(pixels[batch])  # no functional_call: its reparametrization costs ~10 % at N = 1
            else:
                out = functional_call(self.model, (params, self.buffers), (pixels[batch],))
            logp = torch.log_softmax(out, dim=-1)
            if logits is None:
                loss = -logp.gather(1, labels[batch][:, None]).mean()
            else:
                loss = -(torch.softmax(logits[batch], dim=-1) * logp).sum(-1).mean()
            return 0.5 * loss if self.half else loss

        if self.local is not None:  # FedAvg: the candidate's own local training, simulated
            trial = tuple(weight_difference(loss_of, self.params, self.k, self.local).values())
        elif plain:
            trial = torch.autograd.grad(loss_of(self.leaves), tuple(self.leaves.values()),
                                        create_graph=create_graph, materialize_grads=True)
        else:
            trial = tuple(grad(loss_of)(self.params).values())
        if plain and norm is not None and self.local is None and self.config.cost == "cosine" and _wide(trial):
            rows = [t.reshape(1, -1) for t in trial]
            pieces = target[None].split([t.shape[1] for t in rows], dim=1)
            cost = _CosineRows.apply(pieces, norm[None], *rows)[0]
        else:
            cost = _COST[self.config.cost](torch.cat([t.reshape(-1) for t in trial]), target)
        if with_tv and self.config.tv > 0:
            cost = cost + self.config.tv * total_variation(images)
        return cost

    def costs_and_grads(self, z: Tensor, with_tv: bool = True,
                        rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Candidates' costs (N,) and their gradients w.r.t. the variables (N, D).

        `rows` (indices) evaluates only those candidates: (len(rows),) and (len(rows), D). Several
        candidates go through one batched pass (`ats.persample`) or one `vmap`; a single one
        through plain autograd.
        """
        index, z = self.group_of(), z.detach()
        flips = self.flips
        targets, norms = self._gather()
        if rows is not None and rows.numel() < len(index):  # (all of them: no copy of every target)
            index, z, flips, targets, norms = index[rows], z[rows], flips[rows], targets[rows], norms[rows]
        labels = self.labels[index]
        if z.shape[0] > 1 and self.by_hand:
            try:
                return self._costs_by_hand_in_chunks(z, targets, norms, labels, flips, with_tv)
            except Unsupported:  # the model's forward uses its layers unusually: `vmap` from now on
                self.by_hand = False
        if z.shape[0] == 1:
            with torch.enable_grad():
                v = z[0].clone().requires_grad_(True)
                cost = self.candidate_cost(v, targets[0], labels[0], flips[0], with_tv, plain=True, norm=norms[0])
                (g,) = torch.autograd.grad(cost, v)
            return cost.detach()[None], g[None]
        fn = grad_and_value(lambda v, t, y, f: self.candidate_cost(v, t, y, f, with_tv))
        grads, costs = vmap(fn)(z, targets, labels, flips)
        return costs, grads


    def costs(self, z: Tensor, with_tv: bool = True) -> Tensor:
        """Every candidate's cost (N,) as `costs_and_grads` gives it, without its gradient: one
        backward pass instead of two (how the restarts are scored at the end)."""
        index, z = self.group_of(), z.detach()
        (targets, norms), labels = self._gather(), self.labels[index]
        if z.shape[0] > 1 and self.by_hand:
            try:
                return self._costs_by_hand_in_chunks(z, targets, norms, labels, self.flips, with_tv, gradients=False)[0]
            except Unsupported:
                self.by_hand = False
        with torch.enable_grad():
            if z.shape[0] == 1:
                cost = self.candidate_cost(z[0], targets[0], labels[0], self.flips[0], with_tv, plain=True,
                                           create_graph=False, norm=norms[0])
                return cost.detach()[None]
            return vmap(lambda v, t, y, f: self.candidate_cost(v, t, y, f, with_tv))(z, targets, labels,
                                                                                      self.flips).detach()

    def _gather(self) -> tuple[Tensor, Tensor]:
        """Each candidate's flat target (N, P) and its squared norm (N,), made on first use."""
        if self.gathered is None:
            index = self.group_of()
            self.gathered = torch.cat([t[index].reshape(len(index), -1) for t in self.targets], dim=1)
            self.target_norms = self.gathered.pow(2).sum(1)
        return self.gathered, self.target_norms

    def _costs_by_hand_in_chunks(self, z: Tensor, targets: Tensor, norms: Tensor, labels: Tensor, flips: Tensor,
                                 with_tv: bool, gradients: bool = True) -> tuple[Tensor, Tensor | None]:
        """`_costs_by_hand` in nearly equal chunks of at most `ats.persample.batch_size` candidates."""
        n, most = z.shape[0], batch_size(self.model, z.device) or z.shape[0]
        if n <= most:
            return self._costs_by_hand(z, targets, norms, labels, flips, with_tv, gradients)
        chunks = math.ceil(n / most)
        parts = [self._costs_by_hand(z[rows], targets[rows], norms[rows], labels[rows], flips[rows], with_tv,
                                     gradients) for rows in torch.arange(n, device=z.device).tensor_split(chunks)]
        costs = torch.cat([c for c, _ in parts])
        return costs, torch.cat([g for _, g in parts]) if gradients else None

    def _costs_by_hand(self, z: Tensor, targets: Tensor, norms: Tensor, labels: Tensor, flips: Tensor,
                       with_tv: bool, gradients: bool = True) -> tuple[Tensor, Tensor | None]:
        """`costs_and_grads` of several candidates through one batched pass (`ats.persample`);
        without `gradients`, their costs alone (and None)."""
        n, k = z.shape[0], self.k
        with torch.enable_grad():
            v = z.clone().requires_grad_(True)
            images = v[:, : self.image_size].reshape(n * k, *self.shape)
            logits = (v[:, self.image_size: self.image_size + k * self.num_classes].reshape(n * k, self.num_classes)
                      if self.config.labels == "joint" else None)

            def total_loss(out: Tensor) -> Tensor:  # Σ over candidates of each one's mean loss
                logp = torch.log_softmax(out, dim=-1)
                if logits is None:
                    losses = -logp.gather(1, labels.reshape(-1, 1))
                else:
                    losses = -(torch.softmax(logits, dim=-1) * logp).sum(-1)
                return losses.sum() / (2 * k if self.half else k)

            pixels = images * self.std + self.mean
            if self.config.aware:  # each candidate's own shift and flip hypothesis
                pixels = warp(pixels.reshape(n, k, *self.shape), v[:, -2:], flips).reshape(n * k, *self.shape)
            trial = per_example_gradients(self.model, pixels, total_loss, n, graph=gradients)
            trial = [t.reshape(n, -1) for t in trial]
            pieces = torch.split(targets, [t.shape[1] for t in trial], dim=1)
            if self.config.cost == "cosine":
                costs = _CosineRows.apply(pieces, norms, *trial)
            elif self.config.cost == "l2":
                costs = sum((t - p).pow(2).sum(1) for t, p in zip(trial, pieces))
            else:
                costs = sum((t - p).abs().sum(1) for t, p in zip(trial, pieces))
            if with_tv and self.config.tv > 0:
                costs = costs + self.config.tv * total_variation(images.reshape(n, k, *self.shape), rows=True)
            if not gradients:
                return costs.detach(), None
            (g,) = torch.autograd.grad(costs.sum(), v)
        return costs.detach(), g


class _CosineRows(torch.autograd.Function):
    """Each row's 1 − ⟨g, g*⟩ / (‖g‖‖g*‖), g given per parameter as (N, P_l) pieces: `_cosine_cost` per
    candidate without concatenating the pieces, and with one fused pass for its gradient
    (a·g* + b·g per piece). First derivatives only."""

    @staticmethod
    def forward(ctx, targets: tuple[Tensor, ...], target_norms: Tensor, *trial: Tensor) -> Tensor:
        dot = sum((t * p).sum(1) for t, p in zip(trial, targets))
        squares = sum(t.pow(2).sum(1) for t in trial)
        norms = (squares * target_norms).sqrt().clamp_min(1e-30)
        ctx.save_for_backward(dot, squares, norms, *trial)
        ctx.targets = targets
        return 1 - dot / norms

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, upstream: Tensor) -> tuple[Tensor | None, ...]:
        dot, squares, norms, *trial = ctx.saved_tensors
        a = (-upstream / norms)[:, None]  # ∂/∂g of −⟨g, g*⟩/(‖g‖‖g*‖) is −g*/(‖g‖‖g*‖) + ⟨g, g*⟩ g/(‖g‖³‖g*‖)
        b = (upstream * dot / (norms * squares.clamp_min(1e-30)))[:, None]
        return (None, None, *(torch.addcmul(p * a, t, b) for t, p in zip(trial, ctx.targets)))


_WIDE = 16384  # mean entries per parameter tensor from which one candidate's cosine goes piece by piece


def _wide(trial: tuple[Tensor, ...]) -> bool:
    """Are the tensors large enough that concatenating them costs more than summing them one by one?

    Whole one-image IG attacks on a 2-core CPU (bench/profile.md, "Wide models"), ms an iteration
    piece by piece against concatenated: ResNet20-4 (66,936 entries a tensor) 107 against 133,
    ConvNet (91,541) 161 against 186, ResNet20-2 (16,740) 52 against 53; ResNet20 (4,282) 24
    against 21.
    """
    return sum(t.numel() for t in trial) >= _WIDE * len(trial)


def _check_update(model: nn.Module, update: SharedUpdate, joint: bool) -> None:
    """A ValueError unless `update` was computed on `model` and can be attacked this way."""
    names = [name for name, _ in model.named_parameters()]
    if tuple(names) != tuple(update.names):
        raise ValueError("the shared update was not computed on this model's parameters")
    batch = update.batch_size
    if update.per_example and joint:
        raise ValueError("a per-example update holds one gradient per image: attack it independently")
    if not update.per_example and batch > 1 and not joint:
        raise ValueError(f"an aggregated update of {batch} images can only be attacked jointly")


def _attack_labels(model: nn.Module, update: SharedUpdate, config: AttackConfig, device: torch.device) -> Tensor:
    """The labels the attacker uses (B,): leaked, inferred (iDLG / bias rule), counted per class
    (repeats included), or placeholders (joint)."""
    if config.labels == "known":
        if update.labels is None:
            raise ValueError("labels='known' needs the labels in the shared update, but this client kept them "
                             "(share_labels=False); attack with labels='infer' or 'joint'")
        return update.labels.to(device)
    if config.labels == "infer":
        return infer_labels(update, model).to(device)
    if config.labels == "counts":
        return infer_label_counts(update, model).to(device)
    return torch.zeros(update.batch_size, dtype=torch.long, device=device)


def _cosine_cost(trial: Tensor, target: Tensor) -> Tensor:
    """1 − ⟨g, g*⟩ / (‖g‖‖g*‖) over all layers at once (inversefed's "sim"), on flat gradients (P,)."""
    # elementwise products and `sum` (cascade summation), not `torch.dot`: on the CPU its float32
    # accumulation over ~10^5 terms errs by 1e-4 of 1 − cos, far more than the per-tensor sums
    dot, norms = (trial * target).sum(), (trial.pow(2).sum() * target.pow(2).sum()).sqrt()
    return 1 - dot / norms.clamp_min(1e-30)


def _l2_cost(trial: Tensor, target: Tensor) -> Tensor:
    return (trial - target).pow(2).sum()


def _l1_cost(trial: Tensor, target: Tensor) -> Tensor:
    return (trial - target).abs().sum()


_COST = {"cosine": _cosine_cost, "l2": _l2_cost, "l1": _l1_cost}


def total_variation(x: Tensor, rows: bool = False) -> Tensor:
    """Anisotropic TV as in Inverting Gradients: mean|Δx| + mean|Δy| over (…, H, W); with `rows`,
    one per row of x (N, …, H, W), (N,)."""
    dims = tuple(range(1, x.dim())) if rows else tuple(range(x.dim()))
    dx = (x[..., :, :-1] - x[..., :, 1:]).abs().mean(dims)
    dy = (x[..., :-1, :] - x[..., 1:, :]).abs().mean(dims)
    return dx + dy
