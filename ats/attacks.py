"""Gradient-inversion attacks: the server reconstructs private images from a shared gradient.

Implements, on one batched engine:

* Inverting Gradients (Geiping et al., NeurIPS 2020) with the ATS evaluation config (Gao et al.,
  CVPR 2021, `benchmark/comm.py::create_config`): cosine cost over all layers, Adam on the signed
  image gradient, lr 0.1 decayed ×0.1 at 3/8, 5/8 and 7/8 of the run, TV 1e-4, boxed, randn init.
* Deep Leakage from Gradients (Zhu et al., NeurIPS 2019): L-BFGS on an L2 cost, labels optimized
  jointly; and iDLG (Zhao et al., 2020), which first reads the label off the last layer's gradient.
* The paper's Table 2 variants: Adam+L1, Adam+L2, L-BFGS+cosine, SGD+cosine.
* A policy-aware attacker ("aware"): IG that is told the client's policy, as its threat model
  says, and also learns the translation the policy (and its random crop) applied, and, over pairs
  of restarts, whether it flipped the image. It reconstructs the *untransformed* image, the threat
  the paper left out and the 2022 ReScience reproduction found undoes most of the translations'
  protection.

Against a FedAvg update (`ats.fedavg`) every attack matches the weight difference its candidates
produce under the client's simulated local steps; with `labels="counts"` a batch's labels are
counted per class from the last layer first (`ats.labels`), repeated labels included.

Every attack optimizes N *candidates* at once, one per (target, restart). For independent attacks
each candidate holds one image and matches that image's own gradient; for a joint attack each
candidate holds the whole batch and matches the one aggregated gradient. This module holds the
configurations, the result and the loop; the parts live beside it:

* `ats.objective`: the candidates as arrays and their cost (one batched pass, `ats.persample`);
* `ats.optim`: Adam, SGD and a batched L-BFGS, the lr schedule and the box;
* `ats.aware`: the policy-aware attacker's hypotheses and differentiable warp;
* `ats.restarts`: each candidate's last finite state and the best restart per target.

A candidate whose loss turns NaN or infinite is frozen at its last finite state and reported as
failed; the run goes on. Results are returned in pixel space [0, 1].
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from ats.aware import shift_hypotheses, warp
from ats.federated import SharedUpdate
from ats.objective import Problem, total_variation
from ats.optim import Stepper, lr_milestones, make_stepper
from ats.policy import Hybrid, Policy
from ats.restarts import DIVERGED, RestartTracker
from ats.runtime import PRECISIONS, precision

__all__ = ["AttackConfig", "COSTS", "DIVERGED", "INITS", "LABEL_MODES", "OPTIMIZERS", "PRESETS",
           "Reconstruction", "iter_reconstruct", "lr_milestones", "reconstruct", "shift_hypotheses",
           "total_variation"]

COSTS = ("cosine", "l2", "l1")
OPTIMIZERS = ("adam", "sgd", "lbfgs")
LABEL_MODES = ("known", "infer", "joint", "counts")
INITS = ("randn", "rand", "zeros")


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
    labels: str = "known"  # known (leaked), infer (iDLG / bias rule), joint (DLG soft labels) or counts
    # (per-class counts from the last layer, repeated labels included: `ats.federated.infer_label_counts`)
    momentum: float = 0.9  # sgd only
    history: int = 100  # lbfgs only: curvature pairs kept
    inner: int = 20  # lbfgs only: evaluations per iteration (torch's max_iter)
    aware: bool = False  # also learn the policy's translation (and flip, over restart pairs)
    screen: int = 0  # restarts > 1: after this many iterations only each target's cheapest restart goes on
    precision: str = "float32"  # float32 (TF32 off) or tf32 (CUDA only): ats.runtime.precision

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.cost, COSTS, "cost"),
            (self.optimizer, OPTIMIZERS, "optimizer"),
            (self.labels, LABEL_MODES, "labels"),
            (self.init, INITS, "init"),
            (self.precision, PRECISIONS, "precision"),
        ):
            if value not in allowed:
                raise ValueError(f"attack {what} {value!r} is not one of {', '.join(allowed)}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if self.restarts < 1:
            raise ValueError(f"restarts must be at least 1, got {self.restarts}")
        if self.screen < 0:
            raise ValueError(f"screen must be 0 (off) or a number of iterations, got {self.screen}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.aware and self.labels == "joint":
            raise ValueError("the policy-aware attacker needs known or inferred labels, not joint ones")

    @property
    def screened(self) -> bool:
        """Whether `screen` takes effect: several restarts, screened before the last iteration."""
        return self.restarts > 1 and 0 < self.screen < self.iterations

    @property
    def restart_iterations(self) -> int:
        """Restart-iterations one target costs: R·T, or R·s + T − s when screened."""
        if self.screened:
            return self.restarts * self.screen + self.iterations - self.screen
        return self.restarts * self.iterations

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
        negative if bit 2), and the one with the lowest cost wins; the 8 restarts cover every
        flip × x-sign × y-sign hypothesis. See `shift_hypotheses`.
        """
        return cls(name="aware", aware=True, restarts=8)

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
                joint: bool | None = None, policy: Policy | Hybrid | str | None = None,
                crop_flip: bool | None = None) -> Reconstruction:
    """Run the attack to the end and return its final `Reconstruction` (see `iter_reconstruct`)."""
    last = None
    for last in iter_reconstruct(model, update, config, generator=generator, init=init, joint=joint,
                                 policy=policy, crop_flip=crop_flip, every=0):
        pass
    return last


def iter_reconstruct(model: nn.Module, update: SharedUpdate, config: AttackConfig | None = None, *,
                     generator: torch.Generator | None = None, init: Tensor | None = None,
                     joint: bool | None = None, policy: Policy | Hybrid | str | None = None,
                     crop_flip: bool | None = None, every: int = 50) -> Iterator[Reconstruction]:
    """Attack `update`, yielding a snapshot every `every` iterations (0: only the final one).

    The attacker reads only what a server sees, the `SharedUpdate`: the model, the gradients, the
    batch size, and the labels when `config.labels == "known"` (a ValueError if the client kept
    them). The policy-aware attacker (`config.aware`) is also told the client's `policy` and
    `crop_flip`, as its threat model says; it needs both (a ValueError otherwise), and the other
    attacks ignore them. A per-example update is attacked image by image (independently, batched);
    an aggregated one jointly (`joint` defaults to that choice). `init` fixes the starting points,
    (B·R, 3, H, W) in normalized space, target-major. With `config.screen`, every restart runs
    that many iterations, then only each target's cheapest goes on (`config.restart_iterations`).
    """
    config = config or AttackConfig.ig()
    started = time.perf_counter()
    if joint is None:
        joint = update.batch_size > 1 and not update.per_example
    problem = Problem.build(model, update, config, joint=joint, **_known_transform(config, policy, crop_flip))
    z = problem.initial(generator, init)  # (N, D): every restart of every target
    best = RestartTracker.start(z)
    stepper = make_stepper(problem, config, z)
    history: list[tuple[int, tuple[float, ...]]] = []
    every = config.iterations if every <= 0 else every
    for iteration in range(1, config.iterations + 1):
        before = z.detach().clone()  # the costs `step` returns are those of this state
        with precision(config.precision):  # per step: nothing leaks out between yields
            costs = stepper.step(iteration)
        best.track(before, costs)
        final = iteration == config.iterations or best.all_failed
        if config.screened and iteration == config.screen and not final:
            problem, best, z = _screen(problem, best, stepper)
        if iteration % every == 0 or final:
            if final:
                with precision(config.precision):
                    best.rescore(problem, z)  # pick the restart by its cost without TV
            snapshot = _snapshot(problem, best, iteration, time.perf_counter() - started, final)
            history.append((iteration, tuple(snapshot.loss.tolist())))
            yield replace(snapshot, history=tuple(history))
            if final:
                return


def _screen(problem: Problem, best: RestartTracker, stepper: Stepper) -> tuple[Problem, RestartTracker, Tensor]:
    """Successive halving in one round: each target keeps its cheapest restart so far, with its
    optimizer state, and only that one goes on. Every hypothesis is tried, for `screen` iterations."""
    chosen, _, _ = best.choose(problem.groups, problem.restarts, False)
    narrowed = problem.narrow(chosen)
    return narrowed, best.narrow(chosen), stepper.narrow(chosen, narrowed)


def _known_transform(config: AttackConfig, policy: Policy | Hybrid | str | None,
                     crop_flip: bool | None) -> dict:
    """The client's transform as the attacker knows it: told to the aware attacker, else none."""
    if not config.aware:
        return {"policy": Policy.none(), "crop_flip": False}
    if policy is None or crop_flip is None:
        raise ValueError("the policy-aware attacker must be told the client's transform: "
                         "reconstruct(model, update, config, policy=..., crop_flip=...)")
    return {"policy": policy, "crop_flip": bool(crop_flip)}


def _snapshot(problem: Problem, best: RestartTracker, iteration: int, seconds: float,
              done: bool) -> Reconstruction:
    """The best restart of each target so far, as a `Reconstruction` on the CPU."""
    config = problem.config
    chosen, loss, status = best.choose(problem.groups, problem.restarts, done)
    state = best.last_good[chosen]  # (G, D)
    pixels = problem.to_pixels(state).clamp(0, 1)  # (G, k, C, H, W)
    labels = problem.labels.reshape(-1)
    if config.labels == "joint":
        labels = state[:, problem.image_size:].reshape(-1, problem.num_classes).argmax(dim=1)
    transformed = shifts = flips = None
    if config.aware:
        shifts, flips = state[:, -2:], problem.flips[chosen]
        warped = warp(pixels, shifts, flips)  # (G, k, C, H, W): the estimate of T(x)
        transformed = warped.reshape(-1, *problem.shape).clamp(0, 1).detach().cpu()
        shifts, flips = shifts.detach().cpu(), flips.detach().cpu()
    return Reconstruction(
        images=pixels.reshape(-1, *problem.shape).detach().cpu(),
        labels=labels.detach().cpu(),
        loss=loss.detach().cpu(),
        status=status,
        iteration=iteration,
        iterations=config.iterations,
        seconds=seconds,
        done=done,
        config=config,
        transformed=transformed,
        shifts=shifts,
        flips=flips,
    )
