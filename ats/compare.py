"""Compare mode: up to four what-if settings (policy, defense, attack) on one image and one model.

A *setting* is what a person varies to ask whether a defense hides an image: the client's policy T
(Gao et al., CVPR 2021), its gradient defense, and the attack preset (`ats.attacks.PRESETS`, the
policy-aware attacker among them). Each setting gets its own client step from its own generator
seeded with the run's seed, as one `ats attack` run would. Settings that share an attack (and, for
the aware attacker, the policy it is told) are then attacked in **one** call: their per-example
updates are stacked as the groups of one `SharedUpdate`, which `iter_reconstruct` attacks image
by image in one batched pass, and each setting starts from the very points a run of its own
would draw. Settings that cannot share a call run one after another (`plan` says which).

A batched call computes every setting's gradients in one pass, whose float rounding differs
from a call of its own in the last bits (about 1e-6 relative). IG's Adam steps on the gradient's
sign and shrugs that off: a batched IG setting ends within about 1e-3 dB of its own run. L-BFGS
(iDLG, DLG) amplifies it: after tens of iterations a batched iDLG setting can end dB apart from
its own run, both valid runs of the same attack from the same start, not one run. `compare`
itself is deterministic on a device, so its numbers reproduce exactly. It returns what the app
shows and a notebook plots: every setting's scores beside its image's trivial baselines
(`ats.evaluation`), the live curves, the images, and rows for JSON and CSV.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from ats.attacks import PRESETS, AttackConfig, Reconstruction, iter_reconstruct
from ats.evaluation import ImageResult, evaluate_reconstruction
from ats.federated import ClientRound, SharedUpdate, client_update, parse_defense
from ats.metrics import psnr
from ats.objective import Problem
from ats.policy import Policy, as_policy
from ats.runtime import make_generator

MAX_SETTINGS = 4


@dataclass(frozen=True)
class Setting:
    """One what-if: the client's `policy` and gradient `defense`, and the `attack` preset."""

    policy: str = "none"
    defense: str = "none"
    attack: str = "idlg"

    def __post_init__(self) -> None:  # canonical spellings, so equal settings compare equal
        object.__setattr__(self, "policy", str(as_policy(self.policy)))
        object.__setattr__(self, "defense", str(parse_defense(self.defense)))
        if self.attack not in PRESETS:
            raise ValueError(f"attack {self.attack!r} is not one of {', '.join(PRESETS)}")

    def __str__(self) -> str:
        return f"{self.policy} · {self.defense} · {self.attack}"

    @property
    def crop_flip(self) -> bool:
        """A random crop and flip come with a policy, not without one (as `ats attack`)."""
        return self.policy != str(Policy.none())

    def config(self, iterations: int) -> AttackConfig:
        return replace(AttackConfig.preset(self.attack), iterations=iterations)


def plan(settings: Sequence[Setting]) -> list[tuple[int, ...]]:
    """The calls a comparison makes: settings sharing an attack (and, for the aware attacker, the
    policy it is told, which fixes its shift hypotheses) share one batched call, in first-seen order."""
    calls: dict[tuple, list[int]] = {}
    for i, setting in enumerate(settings):
        told = setting.policy if AttackConfig.preset(setting.attack).aware else None
        calls.setdefault((setting.attack, told), []).append(i)
    return [tuple(members) for members in calls.values()]


@dataclass(frozen=True)
class Frame:
    """A snapshot of one call of a comparison: the reconstructions of its settings so far.

    `psnr_tx` compares with T(x) what `evaluate_reconstruction` does: the reconstruction, or for the
    policy-aware attacker its own estimate of T(x) (it reconstructs x, not T(x)).
    """

    call: int  # which of `calls`
    calls: tuple[tuple[int, ...], ...]  # every call's settings (`plan`)
    snapshot: Reconstruction  # of this call's settings, in their order
    transformed: Tensor  # (S, 3, H, W) every setting's T(x), known before the attack
    psnr_x: Tensor  # (s,) this call's settings against x
    psnr_tx: Tensor  # (s,) against their T(x)
    results: tuple[ImageResult, ...] = ()  # when the call is done: its settings' scores

    @property
    def settings(self) -> tuple[int, ...]:
        return self.calls[self.call]


@dataclass(frozen=True)
class Comparison:
    """The outcome of `compare`: per setting its T(x), reconstruction, scores and seconds."""

    settings: tuple[Setting, ...]
    iterations: int
    seed: int
    label: int
    x: Tensor  # (3, H, W)
    transformed: Tensor  # (S, 3, H, W)
    reconstructions: Tensor  # (S, 3, H, W)
    results: tuple[ImageResult, ...]
    seconds: tuple[float, ...]  # of each setting's call
    calls: tuple[tuple[int, ...], ...]
    curves: tuple[dict, ...] = field(repr=False, default=())  # setting, iteration, loss, psnr_x, psnr_tx

    def rows(self) -> list[dict]:
        """One flat record per setting (a CSV row): the setting, its call, seconds and scores."""
        call_of = {i: c for c, members in enumerate(self.calls) for i in members}
        return [{"setting": i, "policy": s.policy, "defense": s.defense, "attack": s.attack,
                 "iterations": self.iterations, "seed": self.seed, "call": call_of[i],
                 "seconds": round(self.seconds[i], 3), **self.results[i].to_dict()}
                for i, s in enumerate(self.settings)]

    def to_dict(self) -> dict:
        """Everything but the images, for JSON."""
        return {"iterations": self.iterations, "seed": self.seed, "label": self.label,
                "calls": [list(c) for c in self.calls], "settings": self.rows(), "curves": list(self.curves)}

    def grid_rows(self) -> list[Tensor]:
        """Rows for `ats.viz.image_grid`, one column per setting: x, T(x), the reconstruction."""
        count = len(self.settings)
        return [self.x.expand(count, *self.x.shape), self.transformed, self.reconstructions]


READINGS = {
    "recovers x": "above what x's own mean colour scores",
    "moved": "x comes back only once shifted or flipped: moved, not hidden",
    "recovers T(x)": "T(x) came back, and x only as far as T(x) shows it",
    "hidden": "no better than the mean colour of x, or of T(x)",
}


def reading(result: ImageResult, transformed_mean_colour: float, margin: float = 1.0) -> str:
    """What one setting's scores say, read against trivial guesses on the same image (a key of
    `READINGS`): PSNR vs x above x's mean colour by `margin` dB, else aligned PSNR so, else PSNR vs
    T(x) above T(x)'s own mean colour (`transformed_mean_colour`), else hidden. One image: a
    reading, not a test (`ats.evidence` tests leakage over many)."""
    mean = result.baseline_mean_colour
    if result.psnr_x > mean + margin:
        return "recovers x"
    if result.psnr_x_aligned > mean + margin:
        return "moved"
    if result.psnr_tx > transformed_mean_colour + margin:
        return "recovers T(x)"
    return "hidden"


def _clients(model: nn.Module, x: Tensor, y: int, settings: Sequence[Setting],
             seed: int) -> list[tuple[ClientRound, torch.Generator]]:
    """Each setting's client step on x, with its own generator seeded `seed` (left where it stopped)."""
    device = next(model.parameters()).device
    images, labels = x.reshape(1, *x.shape[-3:]).to(device), torch.tensor([int(y)], device=device)
    out = []
    for setting in settings:
        generator = make_generator(seed, device)
        out.append((client_update(model, images, labels, setting.policy, setting.defense,
                                  crop_flip=setting.crop_flip, generator=generator, per_example=True), generator))
    return out


def _stack(updates: Sequence[SharedUpdate]) -> SharedUpdate:
    """Per-example updates of one image each -> one per-example update of their groups."""
    first = updates[0]
    labels = None if first.labels is None else torch.cat([u.labels for u in updates])
    return replace(first, gradients=tuple(torch.cat(g) for g in zip(*(u.gradients for u in updates))),
                   batch_size=len(updates), labels=labels, defense=", ".join(u.defense for u in updates))


def _call(model: nn.Module, clients: list, settings: Sequence[Setting], members: tuple[int, ...],
          iterations: int, every: int) -> Iterator[Reconstruction]:
    """The engine's snapshots of one call; each setting starts where a run of its own would."""
    config = settings[members[0]].config(iterations)
    (shared, private), generator = clients[members[0]]
    told = {"policy": private.policy, "crop_flip": private.crop_flip}
    if len(members) == 1:  # exactly the run `ats attack` makes
        return iter_reconstruct(model, shared, config, generator=generator, every=every, **told)
    starts = []
    for i in members:  # each setting's own starting points, drawn as the engine draws them
        (update, _), own = clients[i]
        problem = Problem.build(model, update, config, joint=False, **told)
        starts.append(problem.initial(own, None).detach()[:, : problem.image_size])
    stacked = _stack([clients[i][0].shared for i in members])
    return iter_reconstruct(model, stacked, config, generator=generator, init=torch.cat(starts), every=every,
                            **told)


def _one(recon: Reconstruction, i: int) -> Reconstruction:
    """Group `i` of a per-example reconstruction, as a reconstruction of its own."""
    pick = slice(i, i + 1)
    own = {k: getattr(recon, k)[pick] for k in ("transformed", "shifts", "flips") if getattr(recon, k) is not None}
    return replace(recon, images=recon.images[pick], labels=recon.labels[pick], loss=recon.loss[pick],
                   status=recon.status[pick], history=(), **own)


def iter_compare(model: nn.Module, x: Tensor, y: int, settings: Sequence[Setting], *, iterations: int,
                 seed: int = 0, every: int = 1) -> Iterator[Frame]:
    """Attack image `x` (3, H, W) in [0, 1] with label `y` under every setting, call by call.

    Yields a `Frame` after the first iteration of each call (something to see at once), then every
    `every` iterations, and at the call's end with its settings' scores. `model` is used in eval
    mode on its own device.
    """
    if not 1 <= len(settings) <= MAX_SETTINGS:
        raise ValueError(f"compare 1 to {MAX_SETTINGS} settings, got {len(settings)}")
    model.eval()
    clients = _clients(model, x, y, settings, seed)
    transformed = torch.cat([private.transformed.cpu() for (_, private), _ in clients])  # (S, 3, H, W)
    original = x.reshape(1, *x.shape[-3:]).detach().cpu().float()
    calls = tuple(plan(settings))
    for number, members in enumerate(calls):
        wanted = transformed[list(members)]
        for snapshot in _call(model, clients, settings, members, iterations, every=1):
            if not (snapshot.iteration == 1 or snapshot.iteration % max(1, every) == 0 or snapshot.done):
                continue
            own = snapshot.transformed if snapshot.transformed is not None else snapshot.images
            results = ()
            if snapshot.done:
                results = tuple(evaluate_reconstruction(_one(snapshot, k), clients[i][0].private, original)[0]
                                for k, i in enumerate(members))
            yield Frame(number, calls, snapshot, transformed, psnr(snapshot.images, original.expand_as(wanted)),
                        psnr(own, wanted), results)


def compare(model: nn.Module, x: Tensor, y: int, settings: Sequence[Setting], *, iterations: int,
            seed: int = 0, every: int = 1, on_frame: Callable[[Frame], None] | None = None) -> Comparison:
    """Run `iter_compare` to its end (`on_frame` sees every frame) and gather the `Comparison`."""
    settings = tuple(settings)
    results: dict[int, ImageResult] = {}
    images: dict[int, Tensor] = {}
    seconds: dict[int, float] = {}
    curves, frame = [], None
    for frame in iter_compare(model, x, y, settings, iterations=iterations, seed=seed, every=every):
        snapshot = frame.snapshot
        for k, i in enumerate(frame.settings):
            curves.append({"setting": i, "iteration": snapshot.iteration, "loss": float(snapshot.loss[k]),
                           "psnr_x": float(frame.psnr_x[k]), "psnr_tx": float(frame.psnr_tx[k])})
            if snapshot.done:
                results[i], images[i], seconds[i] = frame.results[k], snapshot.images[k], snapshot.seconds
        if on_frame is not None:
            on_frame(frame)
    order = range(len(settings))
    return Comparison(settings, iterations, seed, int(y), x.reshape(*x.shape[-3:]).detach().cpu().float(),
                      frame.transformed, torch.stack([images[i] for i in order]), tuple(results[i] for i in order),
                      tuple(seconds[i] for i in order), frame.calls, tuple(curves))


@dataclass(frozen=True)
class Estimate:
    """How long a comparison takes on one device, per call, from timing its first two iterations."""

    first: tuple[float, ...]  # set-up and first iteration
    per_iteration: tuple[float, ...]  # the slower of the first two iterations
    scoring: tuple[float, ...]  # scoring its settings at the end

    def seconds(self, iterations: int) -> float:
        """About the seconds `compare` takes for `iterations` iterations."""
        return sum(f + (iterations - 1) * p + s for f, p, s in zip(self.first, self.per_iteration, self.scoring))


def estimate(model: nn.Module, x: Tensor, y: int, settings: Sequence[Setting], *, iterations: int,
             seed: int = 0) -> Estimate:
    """Time each call of `compare`'s plan on `model`'s device: its set-up and first two iterations (of a
    run of `iterations`), and its scoring. L-BFGS iterations vary with the inner steps they take, so
    `Estimate.seconds` is good to a few tens of per cent."""
    model.eval()
    settings = tuple(settings)
    clients = _clients(model, x, y, settings, seed)
    original = x.reshape(1, *x.shape[-3:]).detach().cpu().float()
    first, per_iteration, scoring = [], [], []
    for members in plan(settings):
        begun = time.perf_counter()
        steps = _call(model, clients, settings, members, max(2, iterations), every=1)
        snapshot = next(steps)
        first.append(time.perf_counter() - begun)
        next(steps)
        per_iteration.append(max(first[-1], time.perf_counter() - begun - first[-1]))
        steps.close()
        for _ in range(2):  # the first scoring of a process also loads its libraries: time the second
            begun = time.perf_counter()
            for k, i in enumerate(members):
                evaluate_reconstruction(_one(snapshot, k), clients[i][0].private, original)
        scoring.append(time.perf_counter() - begun)
    return Estimate(tuple(first), tuple(per_iteration), tuple(scoring))
