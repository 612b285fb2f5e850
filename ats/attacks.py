"""Gradient-inversion attacks: the server reconstructs private images from a shared gradient.

Implements, on one batched engine:

* Inverting Gradients (Geiping et al., NeurIPS 2020) with the ATS evaluation config (Gao et al.,
  CVPR 2021, `benchmark/comm.py::create_config`): cosine cost over all layers, Adam on the signed
  image gradient, lr 0.1 decayed ×0.1 at 3/8, 5/8 and 7/8 of the run, TV 1e-4, boxed, randn init.
* Deep Leakage from Gradients (Zhu et al., NeurIPS 2019): L-BFGS on an L2 cost, labels optimized
  jointly; and iDLG (Zhao et al., 2020), which first reads the label off the last layer's gradient.
* The paper's Table 2 variants: Adam+L1, Adam+L2, L-BFGS+cosine, SGD+cosine.
* A policy-aware attacker ("aware"): IG that also learns the translation the client's policy
  (and its random crop) applied, and, over pairs of restarts, whether it flipped the image. It
  reconstructs the *untransformed* image, the threat the paper left out and the 2022 ReScience
  reproduction found undoes most of the translations' protection.

Every attack optimizes N *candidates* at once, one per (target, restart). For independent attacks
each candidate holds one image and matches that image's own gradient; for a joint attack each
candidate holds the whole batch and matches the one aggregated gradient. Per-candidate gradients
come from a single `torch.func.vmap(grad_and_value(...))` call, never a Python loop. Adam and SGD
act elementwise, so batching them changes nothing; L-BFGS is implemented batched here, with a
history per candidate. A candidate whose loss turns NaN or infinite is frozen at its last finite
state and reported as failed; the run goes on.

Optimization happens in the model's normalized input space, as in the original, so that the
learning rates, TV weight and box mean the same; results are returned in pixel space [0, 1].
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, vmap

from ats.federated import SharedUpdate, infer_labels

COSTS = ("cosine", "l2", "l1")
OPTIMIZERS = ("adam", "sgd", "lbfgs")
LABEL_MODES = ("known", "infer", "joint")
INITS = ("randn", "rand", "zeros")
DIVERGED = 10.0  # a final cost this many times the first one marks the attack as diverged


@dataclass(frozen=True)
class AttackConfig:
    """How the attacker optimizes. Presets are classmethods; override with `dataclasses.replace`."""

    name: str = "ig"
    cost: str = "cosine"
    optimizer: str = "adam"
    lr: float = 0.1
    iterations: int = 4800
    lr_decay: bool = True  # ×0.1 at 3/8, 5/8 and 7/8 of the iterations
    signed: bool = True  # step on the sign of the image gradient
    boxed: bool = True  # clamp to the image of [0, 1] after every step
    tv: float = 1e-4
    init: str = "randn"
    restarts: int = 1
    labels: str = "known"  # known (leaked), infer (iDLG / bias rule) or joint (DLG soft labels)
    momentum: float = 0.9  # sgd only
    history: int = 100  # lbfgs only: curvature pairs kept
    inner: int = 20  # lbfgs only: evaluations per iteration (torch's max_iter)
    aware: bool = False  # also learn the policy's translation (and flip, over restart pairs)

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.cost, COSTS, "cost"),
            (self.optimizer, OPTIMIZERS, "optimizer"),
            (self.labels, LABEL_MODES, "labels"),
            (self.init, INITS, "init"),
        ):
            if value not in allowed:
                raise ValueError(f"attack {what} {value!r} is not one of {', '.join(allowed)}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if self.restarts < 1:
            raise ValueError(f"restarts must be at least 1, got {self.restarts}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.aware and self.labels == "joint":
            raise ValueError("the policy-aware attacker needs known or inferred labels, not joint ones")

    @classmethod
    def ig(cls) -> AttackConfig:
        """Inverting Gradients as ATS evaluated it ("Adam+Cosine", the paper's default)."""
        return cls()

    @classmethod
    def dlg(cls) -> AttackConfig:
        """DLG: L-BFGS (lr 1) on the L2 gradient distance, image and soft label optimized jointly."""
        return cls(name="dlg", cost="l2", optimizer="lbfgs", lr=1.0, iterations=300, lr_decay=False,
                   signed=False, boxed=False, tv=0.0, labels="joint")

    @classmethod
    def idlg(cls) -> AttackConfig:
        """iDLG: the label is read off the last layer's gradient, then DLG on the image alone."""
        return replace(cls.dlg(), name="idlg", labels="infer")

    @classmethod
    def adam_l1(cls) -> AttackConfig:
        return cls(name="adam-l1", cost="l1")

    @classmethod
    def adam_l2(cls) -> AttackConfig:
        return cls(name="adam-l2", cost="l2")

    @classmethod
    def lbfgs_cos(cls) -> AttackConfig:
        """Table 2's LBFGS+Cosine (`inversed-LBFGS-sim`): lr 1e-4, 16 restarts, 300 iterations."""
        return cls(name="lbfgs-cos", optimizer="lbfgs", lr=1e-4, iterations=300, lr_decay=False,
                   signed=False, restarts=16)

    @classmethod
    def sgd_cos(cls) -> AttackConfig:
        """Table 2's SGD+Cosine: the original hard-codes lr 0.01, Nesterov momentum 0.9."""
        return cls(name="sgd-cos", optimizer="sgd", lr=0.01)

    @classmethod
    def aware_ig(cls) -> AttackConfig:
        """IG that knows the policy: it learns the translation, starting from the policy's own shift.

        The signs of the policy's shifts and the flip are random per image, so restarts try the
        hypotheses in turn (restart r: flipped if bit 0 of r, x shift negative if bit 1, y shift
        negative if bit 2), and the one with the lowest cost wins; 4 restarts cover the flip and
        the x sign. See `shift_hypotheses`.
        """
        return cls(name="aware", aware=True, restarts=4)

    @classmethod
    def preset(cls, name: str) -> AttackConfig:
        """The preset called `name` (see `PRESETS`)."""
        if name not in PRESETS:
            raise ValueError(f"attack {name!r} is not one of {', '.join(PRESETS)}")
        return PRESETS[name]()


PRESETS = {
    "ig": AttackConfig.ig,
    "dlg": AttackConfig.dlg,
    "idlg": AttackConfig.idlg,
    "adam-l1": AttackConfig.adam_l1,
    "adam-l2": AttackConfig.adam_l2,
    "lbfgs-cos": AttackConfig.lbfgs_cos,
    "sgd-cos": AttackConfig.sgd_cos,
    "aware": AttackConfig.aware_ig,
}


@dataclass(frozen=True)
class Reconstruction:
    """A snapshot of an attack (or its end, when `done`). Tensors are detached, on the CPU.

    `images` holds one reconstruction per target image in pixel space, from the best restart so
    far; for a joint attack they come in the attacker's order (pair them with
    `ats.metrics.pair_reconstructions`). `loss` and `status` are per group: per image for
    independent attacks, one for a joint attack.
    """

    images: Tensor  # (B, 3, H, W) in [0, 1]
    labels: Tensor  # (B,) the labels the attacker used or recovered
    loss: Tensor  # (G,) the gradient-matching cost of the best restart
    status: tuple[str, ...]  # (G,) "ok" or why the group failed
    iteration: int
    iterations: int
    seconds: float
    done: bool
    config: AttackConfig = field(repr=False)
    history: tuple[tuple[int, tuple[float, ...]], ...] = field(default=(), repr=False)
    # policy-aware attacks only: the reconstruction passed through the learned transform (an
    # estimate of T(x)), the learned shift in pixels (B, 2) and flip (B,)
    transformed: Tensor | None = None
    shifts: Tensor | None = None
    flips: Tensor | None = None

    @property
    def failed(self) -> bool:
        return any(s != "ok" for s in self.status)


def reconstruct(model: nn.Module, update: SharedUpdate, config: AttackConfig | None = None, *,
                generator: torch.Generator | None = None, init: Tensor | None = None,
                joint: bool | None = None) -> Reconstruction:
    """Run the attack to the end and return its final `Reconstruction`."""
    last = None
    for last in iter_reconstruct(model, update, config, generator=generator, init=init,
                                 joint=joint, every=0):
        pass
    return last


def iter_reconstruct(model: nn.Module, update: SharedUpdate, config: AttackConfig | None = None, *,
                     generator: torch.Generator | None = None, init: Tensor | None = None,
                     joint: bool | None = None, every: int = 50) -> Iterator[Reconstruction]:
    """Attack `update`, yielding a snapshot every `every` iterations (0: only the final one).

    The attacker reads only what a server sees: the model, the gradients, the batch size, and
    the labels when `config.labels == "known"`. A per-example update is attacked image by image
    (independently, batched); an aggregated one jointly (`joint` defaults to that choice).
    `init` fixes the starting points, (B·R, 3, H, W) in normalized space, target-major.
    """
    config = config or AttackConfig.ig()
    started = time.perf_counter()
    problem = _Problem.build(model, update, config, joint=update.batch_size > 1 and not update.per_example
                             if joint is None else joint)
    z = problem.initial(generator, init)  # (N, D)
    best = _Best.start(problem, z)
    step = _make_stepper(problem, config, z)
    history: list[tuple[int, tuple[float, ...]]] = []
    every = config.iterations if every <= 0 else every
    for iteration in range(1, config.iterations + 1):
        before = z.detach().clone()  # the costs below are those of this state
        best.track(before, step(iteration))
        if iteration % every == 0 or iteration == config.iterations or best.all_failed:
            final = iteration == config.iterations or best.all_failed
            if final:
                best.rescore(problem, z)
            snapshot = best.snapshot(problem, iteration, config, time.perf_counter() - started, final)
            history.append((iteration, tuple(snapshot.loss.tolist())))
            yield replace(snapshot, history=tuple(history))
            if final:
                return


# --- the problem: who is attacked, with which targets ----------------------------------------

@dataclass
class _Problem:
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

    @classmethod
    def build(cls, model: nn.Module, update: SharedUpdate, config: AttackConfig, *, joint: bool) -> _Problem:
        model.eval()
        device = next(model.parameters()).device
        update = update.to(device)
        names = [name for name, _ in model.named_parameters()]
        if tuple(names) != tuple(update.names):
            raise ValueError("the shared update was not computed on this model's parameters")
        batch = update.batch_size
        if update.per_example and joint:
            raise ValueError("a per-example update holds one gradient per image: attack it independently")
        if not update.per_example and batch > 1 and not joint:
            raise ValueError(f"an aggregated update of {batch} images can only be attacked jointly")
        groups, k = (1, batch) if joint else (batch, 1)
        targets = tuple(g if update.per_example else g.unsqueeze(0) for g in update.gradients)
        if config.labels == "known":
            labels = update.labels.to(device)
        elif config.labels == "infer":
            labels = infer_labels(update, model).to(device)
        else:
            labels = torch.zeros(batch, dtype=torch.long, device=device)
        mean, std = _input_stats(model, device)
        reach, starts, flips = shift_hypotheses(update.policy, update.crop_flip, config.restarts,
                                                update.transformed.shape[-1])
        reach, starts, flips = reach.to(device), starts.repeat(groups, 1).to(device), flips.repeat(groups).to(device)
        return cls(
            model=model,
            params={n: p.detach() for n, p in model.named_parameters()},
            buffers={n: b.detach() for n, b in model.named_buffers()},
            config=config,
            targets=targets,
            labels=labels.reshape(groups, k),
            groups=groups,
            k=k,
            shape=tuple(update.transformed.shape[1:]),
            mean=mean,
            std=std,
            num_classes=_num_classes(model),
            half=update.loss == "half-ce",
            reach=reach,
            starts=starts,
            flips=flips,
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
        return self.groups * self.config.restarts

    def group_of(self) -> Tensor:
        """The group (target) of each candidate, target-major: (N,)."""
        return torch.arange(self.groups, device=self.mean.device).repeat_interleave(self.config.restarts)

    def initial(self, generator: torch.Generator | None, init: Tensor | None) -> Tensor:
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

    def warp(self, pixels: Tensor, shift: Tensor, flip: Tensor) -> Tensor:
        """The aware attacker's guess of the transform: flip, then shift by `shift` px (x, y), black fill."""
        pixels = torch.where(flip, pixels.flip(-1), pixels)
        h, w = self.shape[-2:]
        xs = (torch.arange(w, device=pixels.device) * 2 + 1) / w - 1  # pixel centres, align_corners=False
        ys = (torch.arange(h, device=pixels.device) * 2 + 1) / h - 1
        grid_x = (xs - 2 * shift[0] / w).expand(h, w)
        grid_y = (ys - 2 * shift[1] / h)[:, None].expand(h, w)
        grid = torch.stack([grid_x, grid_y], dim=-1).expand(pixels.shape[0], h, w, 2)
        return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def to_pixels(self, z: Tensor) -> Tensor:
        """Candidates' normalized images -> pixel space, (N, k, C, H, W)."""
        images = z.detach()[:, : self.image_size].reshape(-1, self.k, *self.shape)
        return images * self.std + self.mean

    def bounds(self) -> tuple[Tensor, Tensor]:
        return (0 - self.mean) / self.std, (1 - self.mean) / self.std

    def candidate_cost(self, v: Tensor, target: tuple[Tensor, ...], labels: Tensor, flip: Tensor,
                       with_tv: bool = True) -> Tensor:
        """Gradient-matching cost of one candidate (+ TV): the attack's objective."""
        images, logits = self.unpack(v)
        pixels = images * self.std + self.mean
        if self.config.aware:
            pixels = self.warp(pixels, v[-2:], flip)

        def loss_of(params: dict[str, Tensor]) -> Tensor:
            out = functional_call(self.model, (params, self.buffers), (pixels,))
            logp = torch.log_softmax(out, dim=-1)
            if logits is None:
                loss = -logp.gather(1, labels[:, None]).mean()
            else:
                loss = -(torch.softmax(logits, dim=-1) * logp).sum(-1).mean()
            return 0.5 * loss if self.half else loss

        trial = grad(loss_of)(self.params)
        cost = _COST[self.config.cost](tuple(trial.values()), target)
        if with_tv and self.config.tv > 0:
            cost = cost + self.config.tv * total_variation(images)
        return cost

    def costs_and_grads(self, z: Tensor, with_tv: bool = True) -> tuple[Tensor, Tensor]:
        """All candidates' costs (N,) and their gradients w.r.t. the variables (N, D), batched."""
        index = self.group_of()
        targets = tuple(t[index] for t in self.targets)
        labels = self.labels[index]
        fn = grad_and_value(lambda v, t, y, f: self.candidate_cost(v, t, y, f, with_tv))
        grads, costs = vmap(fn)(z.detach(), targets, labels, self.flips)
        return costs, grads


def shift_hypotheses(policy: str, crop_flip: bool, restarts: int, size: int = 32) -> tuple[Tensor, Tensor, Tensor]:
    """What an attacker who knows `policy` assumes about its geometry, per restart.

    Returns the reach (2,), the largest |shift| in pixels (x, y) the policy plus a padding-4 crop
    can apply (for a hybrid, the largest over its policies); the starting shift of each restart
    (R, 2): the policy's own total shift (of its largest-shifting policy), signed by bits 1 and 2
    of the restart index; and whether each restart assumes a flipped image (R,), bit 0, when a
    crop and flip came first. The crop's ±4 px are left to the optimizer.
    """
    from ats.policy import Hybrid, parse_policy

    parsed = parse_policy(policy)
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


def _cosine_cost(trial: tuple[Tensor, ...], target: tuple[Tensor, ...]) -> Tensor:
    """1 − ⟨g, g*⟩ / (‖g‖‖g*‖) over all layers at once (inversefed's "sim")."""
    dot = sum((a * b).sum() for a, b in zip(trial, target))
    norm_a = sum(a.pow(2).sum() for a in trial).sqrt()
    norm_b = sum(b.pow(2).sum() for b in target).sqrt()
    return 1 - dot / (norm_a * norm_b).clamp_min(1e-30)


def _l2_cost(trial: tuple[Tensor, ...], target: tuple[Tensor, ...]) -> Tensor:
    return sum((a - b).pow(2).sum() for a, b in zip(trial, target))


def _l1_cost(trial: tuple[Tensor, ...], target: tuple[Tensor, ...]) -> Tensor:
    return sum((a - b).abs().sum() for a, b in zip(trial, target))


_COST = {"cosine": _cosine_cost, "l2": _l2_cost, "l1": _l1_cost}


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic TV as in Inverting Gradients: mean|Δx| + mean|Δy| over (…, H, W)."""
    dx = (x[..., :, :-1] - x[..., :, 1:]).abs().mean()
    dy = (x[..., :-1, :] - x[..., 1:, :]).abs().mean()
    return dx + dy


def _input_stats(model: nn.Module, device: torch.device) -> tuple[Tensor, Tensor]:
    """The mean and std of the model's first-layer normalization, (C, 1, 1) each (0 and 1 if none)."""
    for module in model.modules():
        if type(module).__name__ == "Normalize":
            return (module.mean.detach().reshape(-1, 1, 1).to(device),
                    module.std.detach().reshape(-1, 1, 1).to(device))
    return torch.zeros(1, 1, 1, device=device), torch.ones(1, 1, 1, device=device)


def _num_classes(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no final nn.Linear layer to read the number of classes from")
    return linears[-1].out_features


# --- optimizers --------------------------------------------------------------------------------

def _make_stepper(problem: _Problem, config: AttackConfig, z: Tensor):
    """A function `step(iteration) -> costs (N,)` advancing every candidate by one iteration.

    The costs returned are those of the candidates before the step (NaN where non-finite).
    """
    if config.optimizer == "lbfgs":
        return _BatchedLBFGS(problem, config, z).step
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam([z], lr=config.lr)
    else:
        optimizer = torch.optim.SGD([z], lr=config.lr, momentum=config.momentum, nesterov=True)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=lr_milestones(config), gamma=0.1)
    alive = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)

    def step(iteration: int) -> Tensor:
        costs, grads = problem.costs_and_grads(z)
        finite = torch.isfinite(costs) & torch.isfinite(grads).all(dim=1)
        alive.logical_and_(finite)
        grads = torch.where(alive[:, None], grads, torch.zeros_like(grads))
        z.grad = grads.sign() if config.signed else grads
        optimizer.step()
        scheduler.step()
        if config.boxed:
            _clamp(problem, z)
        return torch.where(alive, costs.detach(), torch.full_like(costs, float("nan")))

    return step


def lr_milestones(config: AttackConfig) -> list[int]:
    """Iterations after which the lr drops ×0.1: about 3/8, 5/8 and 7/8 of the run.

    Computed exactly as Inverting Gradients does (`iterations // 2.667`, `// 1.6`, `// 1.142`):
    1799, 3000 and 4203 for 4,800 iterations.
    """
    if not config.lr_decay:
        return []
    return [int(config.iterations // f) for f in (2.667, 1.6, 1.142)]


def _clamp(problem: _Problem, z: Tensor) -> None:
    low, high = problem.bounds()
    with torch.no_grad():
        images = z[:, : problem.image_size].view(-1, problem.k, *problem.shape)
        images.copy_(torch.maximum(torch.minimum(images, high), low))
        if problem.config.aware:
            z[:, -2:].copy_(torch.maximum(torch.minimum(z[:, -2:], problem.reach), -problem.reach))


class _BatchedLBFGS:
    """torch.optim.LBFGS (no line search) run for N independent problems at once.

    One iteration is one `LBFGS.step()`: up to `config.inner` gradient evaluations and updates
    (torch's `max_iter`, 20 by default), as DLG counts its 300 iterations. Each candidate keeps
    its own curvature history and torch's stopping rules: a non-descent direction or a vanishing
    gradient stops it for good; a negligible step or change of loss ends its current iteration.
    """

    def __init__(self, problem: _Problem, config: AttackConfig, z: Tensor):
        self.problem, self.config, self.z = problem, config, z
        n, d, m = z.shape[0], z.shape[1], config.history
        self.s = torch.zeros(n, m, d, device=z.device)
        self.y = torch.zeros(n, m, d, device=z.device)
        self.rho = torch.zeros(n, m, device=z.device)  # 0 marks an unused slot: a no-op in the recursion
        self.h_diag = torch.ones(n, device=z.device)
        self.prev_grad: Tensor | None = None
        self.prev_step = torch.zeros(n, d, device=z.device)
        self.alive = torch.ones(n, dtype=torch.bool, device=z.device)  # not failed, not converged
        self.finite = torch.ones(n, dtype=torch.bool, device=z.device)
        self.count = 0

    def step(self, iteration: int) -> Tensor:
        active = self.alive.clone()
        first_costs = None
        previous = torch.full((self.z.shape[0],), float("inf"), device=self.z.device)
        for _ in range(self.config.inner):
            costs, g = self.problem.costs_and_grads(self.z)
            finite = torch.isfinite(costs) & torch.isfinite(g).all(dim=1)
            self.finite &= finite
            self.alive &= finite
            if first_costs is None:
                first_costs = torch.where(self.finite, costs.detach(), torch.full_like(costs, float("nan")))
            g = torch.where(self.alive[:, None], g, torch.zeros_like(g))
            self.alive &= g.abs().amax(dim=1) > 1e-7  # torch's tolerance_grad
            active &= self.alive & ((costs - previous).abs() >= 1e-9)  # tolerance_change on the loss
            previous = costs.detach()
            if not bool(active.any()):
                break
            if self.prev_grad is None:
                direction = -g
                t = (1.0 / g.abs().sum(dim=1).clamp_min(1e-30)).clamp(max=1.0) * self.config.lr
            else:
                self._remember(g - self.prev_grad, self.prev_step, active)
                direction = self._two_loop(-g)
                t = torch.full_like(costs, self.config.lr)
            descent = (g * direction).sum(dim=1) < -1e-9  # torch stops on a non-descent direction
            self.alive &= descent | ~active
            active &= descent
            step = torch.where(active[:, None], t[:, None] * direction, torch.zeros_like(direction))
            self.prev_grad = torch.where(active[:, None], g, self.prev_grad if self.prev_grad is not None else g)
            self.prev_step = torch.where(active[:, None], step, self.prev_step)
            with torch.no_grad():
                self.z += step
            if self.config.boxed:
                _clamp(self.problem, self.z)
            active &= step.abs().amax(dim=1) > 1e-9
        return first_costs

    def _remember(self, y: Tensor, s: Tensor, active: Tensor) -> None:
        ys = (y * s).sum(dim=1)  # (N,)
        ok = (ys > 1e-10) & active
        slot = self.count % self.config.history
        self.count += 1
        keep = ok[:, None]
        self.s[:, slot] = torch.where(keep, s, self.s[:, slot])
        self.y[:, slot] = torch.where(keep, y, self.y[:, slot])
        self.rho[:, slot] = torch.where(ok, 1.0 / ys.clamp_min(1e-10), self.rho[:, slot] * 0)
        yy = (y * y).sum(dim=1).clamp_min(1e-30)
        self.h_diag = torch.where(ok, ys / yy, self.h_diag)

    def _two_loop(self, q: Tensor) -> Tensor:
        m = self.config.history
        newest = (self.count - 1) % m
        order = [(newest - i) % m for i in range(min(self.count, m))]
        alphas = {}
        for i in order:
            alphas[i] = (self.s[:, i] * q).sum(dim=1) * self.rho[:, i]
            q = q - alphas[i][:, None] * self.y[:, i]
        r = q * self.h_diag[:, None]
        for i in reversed(order):
            beta = (self.y[:, i] * r).sum(dim=1) * self.rho[:, i]
            r = r + self.s[:, i] * (alphas[i] - beta)[:, None]
        return r


# --- keeping the best restart --------------------------------------------------------------------

@dataclass
class _Best:
    """Per candidate: the last finite state and cost; per group: which restart is best."""

    last_good: Tensor  # (N, D)
    cost: Tensor  # (N,)
    failed_at: Tensor  # (N,) iteration of the first non-finite loss, 0 if none
    initial: Tensor  # (N,) the first cost, to tell divergence
    iteration: int = 0

    @classmethod
    def start(cls, problem: _Problem, z: Tensor) -> _Best:
        n = z.shape[0]
        inf = torch.full((n,), float("inf"), device=z.device)
        return cls(z.detach().clone(), inf, torch.zeros(n, dtype=torch.long, device=z.device), inf.clone())

    @property
    def all_failed(self) -> bool:
        return bool((self.failed_at > 0).all())

    def track(self, z: Tensor, cost: Tensor) -> None:
        self.iteration += 1
        finite = torch.isfinite(cost)
        newly = ~finite & (self.failed_at == 0)
        self.failed_at[newly] = self.iteration
        ok = finite & (self.failed_at == 0)
        self.last_good[ok] = z.detach()[ok]
        self.cost = torch.where(ok, cost, self.cost)
        if self.iteration == 1:
            self.initial = torch.where(ok, cost, self.initial)

    def rescore(self, problem: _Problem, z: Tensor) -> None:
        """Score every candidate's final state by its cost without TV (IG's 'loss' scoring)."""
        with torch.no_grad():
            ok = self.failed_at == 0
            self.last_good[ok] = z.detach()[ok]
        costs, _ = problem.costs_and_grads(self.last_good, with_tv=False)
        self.cost = torch.where(torch.isfinite(costs) & (self.failed_at == 0), costs.detach(), self.cost)

    def snapshot(self, problem: _Problem, iteration: int, config: AttackConfig, seconds: float,
                 done: bool) -> Reconstruction:
        r = config.restarts
        cost = self.cost.view(problem.groups, r)
        usable = torch.where(torch.isfinite(cost), cost, torch.full_like(cost, float("inf")))
        pick = usable.argmin(dim=1)  # (G,)
        chosen = torch.arange(problem.groups, device=pick.device) * r + pick
        pixels = problem.to_pixels(self.last_good[chosen]).clamp(0, 1)  # (G, k, C, H, W)
        images = pixels.reshape(-1, *problem.shape)
        labels = problem.labels.reshape(-1)
        if config.labels == "joint":
            logits = self.last_good[chosen, problem.image_size:].view(-1, problem.num_classes)
            labels = logits.argmax(dim=1)
        transformed = shifts = flips = None
        if config.aware:
            shifts = self.last_good[chosen, -2:]
            flips = problem.flips[chosen]
            warped = vmap(problem.warp)(pixels, shifts, flips)  # (G, k, C, H, W)
            transformed = warped.reshape(-1, *problem.shape).clamp(0, 1).detach().cpu()
            shifts, flips = shifts.detach().cpu(), flips.detach().cpu()
        best_cost = cost.gather(1, pick[:, None]).squeeze(1)
        start = self.initial.view(problem.groups, r).gather(1, pick[:, None]).squeeze(1)
        status = []
        for g in range(problem.groups):
            failed = self.failed_at.view(problem.groups, r)[g]
            if bool((failed > 0).all()):
                status.append(f"failed: non-finite loss at iteration {int(failed.min())} in every restart")
            elif done and float(best_cost[g]) > DIVERGED * float(start[g]):
                status.append(f"diverged: the cost rose from {float(start[g]):.3g} to {float(best_cost[g]):.3g}")
            else:
                status.append("ok")
        return Reconstruction(
            images=images.detach().cpu(),
            labels=labels.detach().cpu(),
            loss=best_cost.detach().cpu(),
            status=tuple(status),
            iteration=iteration,
            iterations=config.iterations,
            seconds=seconds,
            done=done,
            config=config,
            transformed=transformed,
            shifts=shifts,
            flips=flips,
        )
