"""The two search scores of Automatic Transformation Search: privacy S_pri and accuracy S_acc.

Gao et al., "Privacy-preserving Collaborative Learning with Automatic Transformation Search"
(CVPR 2021), §4.2–4.3, as the code behind the paper computes them (`docs/method.md` §5.2 and §6.2,
and bugs 9–10 of its §9):

* S_pri (lower = more private), on a briefly trained model in eval mode: for each score image,
  T(x) is the client's view (crop, flip, policy) and z a uniform-noise image; along the straight
  path x_k = (k/K)·T(x) + (1 − k/K)·z, k = 0..K (K = 20), s_k is the cosine between the gradient
  of ½·CE at x_k and at T(x) *per parameter tensor*, averaged over the tensors; an image scores the
  trapezoid area (1/K) Σ_k (s_{k−1} + s_k)/2, and S_pri is the mean over images. All (K+1)·N
  per-sample gradients go through one `vmap(grad)` per chunk of images.
* S_acc (higher = better), Mellor et al.'s score of a random-init model in eval mode: for each
  window of test images (transformed, then cut to the first image of each label), the rows of
  the Jacobian of the summed logits w.r.t. the normalized input give a correlation matrix C,
  score_r = −Σ_i [log(λ_i + 1e-5) + 1/(λ_i + 1e-5)] over its eigenvalues; S_acc is the mean over
  windows. The original keeps a policy when S_acc ≥ −85 (CIFAR-100, windows of 100).

The "per-class" variant (the HEAD code) scores the first k test images of every class; the HEAD
search then ranks by α·minmax(mean) + (1 − α)·minmax(variance) of each policy's per-class means
(`PrivacyScore.class_means`; min-max across candidates, population variance, α = 0.7).

Random numbers come from separate generators for crops and flips, policy signs and noise starts,
all seeded from the caller's generator, so one seed gives every policy the same crops, flips and
noise (common random numbers).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ats.data import ImageSet
from ats.indices import PRIVACY_SET, accuracy_windows, dedupe_by_label, per_class_indices
from ats.federated import LOSSES
from ats.models import build_model, input_stats
from ats.ops import SEMANTICS, check_images
from ats.policy import Hybrid, Policy, as_policy, transform
from ats.runtime import asset_path, make_generator

ACCURACY_THRESHOLD = -85.0  # the original's S_acc threshold (CIFAR-100, windows of 100)
EPSILON = 1e-5  # Mellor et al.'s ε in log(λ + ε) + 1/(λ + ε)
VARIANTS = ("cvpr", "per-class")
DEFINITION_VERSION = "scores/1"  # bump when the computation changes what the numbers mean


@dataclass(frozen=True)
class ScoreConfig:
    """What the scores are computed on; `definition()` keys stored results."""

    name: str = "laptop"
    arch: str = "resnet20"  # the S_acc model (the S_pri model comes from its checkpoint)
    privacy_images: int = 100  # the first n of indices.PRIVACY_SET (200, 205, ..., 695)
    points: int = 21  # K + 1 points on the straight path, K = 20 bins
    variant: str = "cvpr"  # "cvpr" (fixed images) | "per-class" (per_class images of each class; HEAD code)
    per_class: int = 5
    accuracy_runs: int = 10  # windows of indices.accuracy_windows()
    accuracy_window: int = 100
    loss: str = "half-ce"
    semantics: str = "ats"
    chunk: int = 64  # per-sample gradients per vmap call, rounded down to whole images (memory bound;
    # 3 images × 21 points was fastest on a 2-core CPU, bigger chunks suit a GPU)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"score variant {self.variant!r} is not one of {', '.join(VARIANTS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.semantics not in SEMANTICS:
            raise ValueError(f"semantics {self.semantics!r} is not one of {', '.join(SEMANTICS)}")
        limits = {"privacy_images": (1, len(PRIVACY_SET)), "points": (2, None), "per_class": (1, None),
                  "accuracy_runs": (1, None), "accuracy_window": (2, None), "chunk": (1, None)}
        for key, (low, high) in limits.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                allowed = f"{low}–{high}" if high else f"a whole number ≥ {low}"
                raise ValueError(f"{key}={value!r} is not allowed; use {allowed}")

    @classmethod
    def smoke(cls) -> ScoreConfig:
        return cls(name="smoke", privacy_images=4, accuracy_runs=2)

    @classmethod
    def laptop(cls) -> ScoreConfig:
        return cls()

    @classmethod
    def paper(cls) -> ScoreConfig:
        return cls(name="paper", arch="resnet20-4", chunk=256)

    def definition(self) -> str:
        """A stable text key of everything that changes the numbers (not `name` or `chunk`)."""
        images = (f"per-class:{self.per_class}" if self.variant == "per-class" else f"cvpr:{self.privacy_images}")
        return (f"{DEFINITION_VERSION} arch={self.arch} pri={images}x{self.points} loss={self.loss} "
                f"semantics={self.semantics} acc={self.accuracy_runs}x{self.accuracy_window}")


@dataclass(frozen=True, eq=False)
class PrivacyScore:
    """S_pri of one policy: the mean of `per_image`, each the trapezoid area under its curve."""

    policy: str
    value: float
    per_image: Tensor  # (N,)
    curves: Tensor  # (N, points) similarity s_k per image and point
    labels: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))  # (N,)

    @property
    def curve(self) -> Tensor:
        """The mean similarity at each point, (points,), for plots."""
        return self.curves.mean(0)

    @property
    def class_means(self) -> Tensor:
        """Mean per-image score of each label present, in label order, (C,): the HEAD code's values."""
        if self.labels.numel() != self.per_image.numel():
            raise ValueError("this score has no labels; per-class means need them")
        classes, index = torch.unique(self.labels, return_inverse=True)
        sums = torch.zeros(len(classes), dtype=self.per_image.dtype).index_add_(0, index, self.per_image)
        return sums / torch.bincount(index, minlength=len(classes))  # (C,)


@dataclass(frozen=True, eq=False)
class AccuracyScore:
    """S_acc of one policy: the mean of `per_run`, on the scale of ACCURACY_THRESHOLD."""

    policy: str
    value: float
    per_run: Tensor  # (R,)
    sizes: tuple[int, ...]  # images kept per run after de-duplication by label
    normalized: float  # mean over runs of score_r / N_r: a per-image value other datasets can share

    @property
    def passes(self) -> bool:
        """True when S_acc ≥ ACCURACY_THRESHOLD (NaN never passes)."""
        return self.value >= ACCURACY_THRESHOLD


# --- helpers -------------------------------------------------------------------------------------

def _streams(generator: torch.Generator, n: int) -> list[torch.Generator]:
    """`n` independent generators seeded from `generator` (a fixed number of draws from it)."""
    seeds = torch.randint(0, 2**62, (n,), generator=generator, device=generator.device).tolist()
    return [make_generator(seed, generator.device) for seed in seeds]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (BatchNorm on running statistics), its mode restored afterwards."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


def _check_batch(x: Tensor, y: Tensor) -> None:
    if isinstance(x, Tensor) and x.ndim == 4 and x.shape[0] == 0:
        raise ValueError("no images to score: got an empty batch (0, 3, H, W)")
    check_images(x)
    if not isinstance(y, Tensor) or y.shape != (x.shape[0],):
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"labels must be a tensor ({x.shape[0]},) matching the images, got {shape}")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"images must lie in [0, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")


def _client_view(x: Tensor, policy: Policy | Hybrid, crops: torch.Generator, signs: torch.Generator,
                 semantics: str) -> Tensor:
    """Crop and flip from `crops` (always, as the original scores), then the policy with signs
    from `signs`: (B, 3, H, W)."""
    return policy.apply(transform(x, Policy.none(), crops, crop_flip=True), signs, semantics)


# --- S_pri ---------------------------------------------------------------------------------------

def privacy_inputs(policy: Policy | Hybrid | str, x: Tensor, generator: torch.Generator, *,
                   semantics: str = "ats") -> tuple[Tensor, Tensor]:
    """The transformed images T(x) and the uniform-noise starts z, both (N, 3, H, W) in [0, 1].

    Crops/flips, policy signs and noise come from three streams seeded from `generator`, so the
    same generator state gives the same crops, flips and noise for every policy. The noise is
    drawn in float32 and cast to `x.dtype`, so float32 and float64 runs start from the same z.
    """
    crops, signs, noise = _streams(generator, 3)
    images = _client_view(x, as_policy(policy), crops, signs, semantics)
    starts = torch.rand(x.shape, generator=noise, device=noise.device, dtype=torch.float32).to(x.dtype)
    return images, starts


def similarity_curves(model: nn.Module, images: Tensor, starts: Tensor, labels: Tensor, *, points: int = 21,
                      loss: str = "half-ce", chunk: int = 256) -> Tensor:
    """s_k for each image along the path from `starts` to `images`: (N, points), s at the last point 1.

    s_k = mean over parameter tensors l of cos(∇θ_l loss(x_k, y), ∇θ_l loss(T(x), y)). The model is
    used as it is (put it in eval mode). Per call of `vmap(grad)`: ⌊chunk / points⌋ images (at
    least one), all their points at once, the last point's gradient being the reference.
    """
    if points < 2:
        raise ValueError(f"points={points} must be at least 2 (the start and the image)")
    criterion = LOSSES[loss]
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    weights = torch.arange(points, device=images.device, dtype=images.dtype) / (points - 1)  # (P,)
    weights = weights.reshape(1, points, 1, 1, 1)

    def loss_of(params: dict[str, Tensor], image: Tensor, label: Tensor) -> Tensor:
        return criterion(functional_call(model, (params, buffers), (image[None],)), label[None])

    per_sample = vmap(grad(loss_of), in_dims=(None, 0, 0))
    group = max(1, chunk // points)
    curves = []
    for first in range(0, len(images), group):
        x, z, y = images[first:first + group], starts[first:first + group], labels[first:first + group]
        g = len(x)
        path = weights * x[:, None] + (1 - weights) * z[:, None]  # (G, P, 3, H, W); path[:, -1] == x
        grads = per_sample(params, path.flatten(0, 1), y.repeat_interleave(points))  # each (G·P, *shape)
        cosines = []
        for value in grads.values():
            flat = value.reshape(g, points, -1)  # (G, P, n)
            reference = flat[:, -1:]  # (G, 1, n)
            dot = (flat[:, :-1] * reference).sum(-1)  # (G, P-1)
            norms = flat[:, :-1].norm(dim=-1) * reference.norm(dim=-1)
            cosines.append(dot / norms.clamp_min(1e-30))
        s = torch.stack(cosines).mean(0)  # (G, P-1)
        curves.append(torch.cat([s, torch.ones_like(s[:, :1])], dim=1))  # s at the image itself is 1
    return torch.cat(curves).detach()  # (N, P)


def trapezoid_area(curves: Tensor) -> Tensor:
    """(1/K) Σ_k (s_{k−1} + s_k)/2 of each row of (N, K+1) curves: (N,), in [−1, 1]."""
    return (curves[:, :-1] + curves[:, 1:]).sum(1) / (2 * (curves.shape[1] - 1))


def privacy_score(model: nn.Module, policy: Policy | Hybrid | str, x: Tensor, y: Tensor, *,
                  generator: torch.Generator, config: ScoreConfig | None = None) -> PrivacyScore:
    """S_pri of `policy` on images `x` (N, 3, H, W) in [0, 1] with labels `y` (N,); lower = more private.

    `model` is the briefly trained model, used in eval mode; `generator` lives on the images' device.
    """
    config = config or ScoreConfig()
    _check_batch(x, y)
    policy = as_policy(policy)
    images, starts = privacy_inputs(policy, x, generator, semantics=config.semantics)
    with _eval_mode(model):
        curves = similarity_curves(model, images, starts, y, points=config.points, loss=config.loss,
                                   chunk=config.chunk).cpu()
    per_image = trapezoid_area(curves)
    return PrivacyScore(str(policy), float(per_image.mean()), per_image, curves, y.detach().cpu())


# --- S_acc ---------------------------------------------------------------------------------------

def input_jacobian(model: nn.Module, x: Tensor) -> Tensor:
    """Rows ∇_z Σ_c f_c(x_n) w.r.t. the normalized input z = (x − μ)/σ: (N, C·H·W).

    One backward of the logits summed over the batch; rows are per-image only in eval mode.
    """
    mean, std = (t.to(x.device, x.dtype) for t in input_stats(model))
    z = ((x - mean) / std).detach().requires_grad_(True)  # (N, C, H, W)
    (jacobian,) = torch.autograd.grad(model(z * std + mean).sum(), z)
    return jacobian.reshape(len(x), -1)


def jacobian_score(jacobian: Tensor) -> float:
    """−Σ_i [log(λ_i + ε) + 1/(λ_i + ε)] over the eigenvalues of the rows' correlation matrix (float64)."""
    correlation = torch.corrcoef(jacobian.detach().cpu().double()).reshape(len(jacobian), len(jacobian))  # (N, N)
    if not bool(torch.isfinite(correlation).all()):  # a constant row (dead network): a recorded NaN, no crash
        return float("nan")
    eigenvalues = torch.linalg.eigvalsh(correlation)
    return float(-(torch.log(eigenvalues + EPSILON) + 1 / (eigenvalues + EPSILON)).sum())


def accuracy_inputs(policy: Policy | Hybrid | str, windows: Sequence[tuple[Tensor, Tensor]],
                    generator: torch.Generator, *, semantics: str = "ats") -> list[Tensor]:
    """Each window transformed whole, then cut to the first image of each label: (N_r, 3, H, W) each.

    Crops/flips and policy signs come from two streams seeded from `generator` (the same ones for
    every policy), drawn window after window.
    """
    if not windows:
        raise ValueError("no accuracy windows given; pass one or more (images, labels) pairs")
    policy = as_policy(policy)
    crops, signs = _streams(generator, 2)
    views = []
    for x, y in windows:
        _check_batch(x, y)
        kept = list(dedupe_by_label(range(len(y)), y.cpu()))
        views.append(_client_view(x, policy, crops, signs, semantics)[kept])
    return views


def accuracy_score(model: nn.Module, policy: Policy | Hybrid | str, windows: list[tuple[Tensor, Tensor]], *,
                   generator: torch.Generator, config: ScoreConfig | None = None) -> AccuracyScore:
    """S_acc of `policy` on `windows` of (images, labels) with a random-init `model` (eval mode); higher = better."""
    config = config or ScoreConfig()
    policy = as_policy(policy)
    views = accuracy_inputs(policy, windows, generator, semantics=config.semantics)
    with _eval_mode(model):
        per_run = torch.tensor([jacobian_score(input_jacobian(model, v)) for v in views], dtype=torch.float64)
    sizes = tuple(len(v) for v in views)
    normalized = float((per_run / torch.tensor(sizes, dtype=torch.float64)).mean())
    return AccuracyScore(str(policy), float(per_run.mean()), per_run, sizes, normalized)


def accuracy_model(config: ScoreConfig, seed: int, num_classes: int = 100) -> nn.Module:
    """The seeded random-init `config.arch` behind S_acc, in eval mode (BatchNorm near identity)."""
    return build_model(config.arch, num_classes, seed=seed).eval()


# --- both, as the search computes them ---------------------------------------------------------

def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def privacy_indices(data: ImageSet, config: ScoreConfig) -> tuple[int, ...]:
    """The S_pri images of `data`: PRIVACY_SET's first n, or the first `per_class` of each class."""
    if config.variant == "per-class":
        return per_class_indices(data.labels, config.per_class, len(data.classes))
    return PRIVACY_SET[:config.privacy_images]


def score_policy(policy: Policy | Hybrid | str, *, privacy_model: nn.Module, accuracy_model: nn.Module,
                 data: ImageSet, config: ScoreConfig, seed: int) -> tuple[PrivacyScore, AccuracyScore]:
    """S_pri and S_acc of `policy` on the CIFAR-100 test ImageSet `data`, images picked per `config`.

    Each score gets a generator seeded with `seed` on its model's device, so the same seed gives
    every policy the same crops, flips and noise starts.
    """
    policy = as_policy(policy)
    device = _device_of(privacy_model)
    x, y = data.batch(privacy_indices(data, config), device)
    privacy = privacy_score(privacy_model, policy, x, y, generator=make_generator(seed, device), config=config)
    device = _device_of(accuracy_model)
    windows = [data.batch(w, device) for w in accuracy_windows(config.accuracy_runs, config.accuracy_window)]
    accuracy = accuracy_score(accuracy_model, policy, windows, generator=make_generator(seed, device), config=config)
    return privacy, accuracy


def default_score_checkpoint() -> Path:
    """The shipped tiny-data S_pri model: ats/assets/models/tiny-cifar100-resnet20.pt."""
    return asset_path("models", "tiny-cifar100-resnet20.pt")
