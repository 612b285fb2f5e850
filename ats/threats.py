"""Threat models: what a client shares, beyond the paper's one-image FedSGD gradient (issue 14).

Gao et al. (CVPR 2021) attack one image's gradient with its label known. Three settings they left
out, each a `Threat` that turns into `client_update` options and an attack config:

* `fedsgd` (the default): the paper's client; per-image gradients, or one aggregated gradient
  with `--joint`, the labels shared.
* `batch-B`: one gradient aggregated over B images whose labels the client keeps; the server
  counts the labels per class from the last layer (`ats.federated.infer_label_counts`, repeats
  included) and reconstructs the B images jointly (Geiping et al., NeurIPS 2020, §5; Wainakh et
  al., PETS 2022). Reconstructions are paired to the images by Hungarian matching before scoring
  (`ats.metrics.pair_reconstructions`).
* `fedavg-E-K`: a FedAvg client (McMahan et al., 2017) trains E local epochs over K mini-batches
  and shares the weight difference; the server simulates those steps on its candidates
  (`ats.fedavg`; Geiping et al. §6, Dimitrov et al., TMLR 2022). Labels are shared, as in fedsgd.

A benchmark or app calls, for images x of one client::

    threat = parse_threat("fedavg-2-2")
    shared, private = client_update(model, x, y, policy, defense, generator=g,
                                    **threat.client_options(len(x)))
    recon = reconstruct(model, shared, threat.attack_config(config), generator=g2)

`attack_threat` does this for every client of a benchmark cell or a study: the images are dealt
to clients of `client_images` each (one per image for fedsgd, B for batch-B, K for fedavg-E-K:
one image per local batch), each client shares its update, and each is attacked in turn.

DP-SGD is a defense, not a threat (`dp-C-σ`, `ats.privacy`).
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ats import attacks
from ats.attacks import AttackConfig, Reconstruction
from ats.evaluation import ImageResult, evaluate_reconstruction
from ats.fedavg import FEDAVG_LR, MAX_LOCAL_STEPS, LocalTraining
from ats.federated import ClientSecrets, client_update
from ats.limits import MAX_ATTACK_IMAGES
from ats.metrics import pair_reconstructions
from ats.policy import Policy, as_policy
from ats.runtime import make_generator

THREATS = ("fedsgd", "batch-4", "batch-8", "batch-16", "fedavg-1-1", "fedavg-1-2", "fedavg-2-2")
_FORMS = (f"'fedsgd', 'batch-B' (B 2..{MAX_ATTACK_IMAGES}: B images, labels kept), 'fedavg-E-K' "
          f"(E local epochs × K local batches, E·K ≤ {MAX_LOCAL_STEPS})")


@dataclass(frozen=True)
class Threat:
    """A threat model: `kind` fedsgd, batch (`batch_size` images) or fedavg (`epochs` × `batches`, `lr`)."""

    kind: str = "fedsgd"
    batch_size: int = 0  # batch: the images behind the one gradient
    epochs: int = 0  # fedavg: local epochs E
    batches: int = 0  # fedavg: local mini-batches K
    lr: float = FEDAVG_LR  # fedavg: local learning rate η

    def __post_init__(self) -> None:
        if self.kind not in ("fedsgd", "batch", "fedavg"):
            raise ValueError(f"threat kind {self.kind!r} is not one of fedsgd, batch, fedavg")
        if self.kind == "batch" and not 2 <= self.batch_size <= MAX_ATTACK_IMAGES:
            raise ValueError(f"threat batch-{self.batch_size}: B must be 2..{MAX_ATTACK_IMAGES}")
        if self.kind == "fedavg":
            LocalTraining(self.epochs, self.batches, self.lr)  # its own checks

    def __str__(self) -> str:
        if self.kind == "batch":
            return f"batch-{self.batch_size}"
        return f"fedavg-{self.epochs}-{self.batches}" if self.kind == "fedavg" else "fedsgd"

    @property
    def aggregated(self) -> bool:
        """Whether the client shares one update for all its images (batch and fedavg)."""
        return self.kind != "fedsgd"

    def client_options(self, images: int, *, joint: bool = False) -> dict:
        """Keyword arguments of `ats.federated.client_update` for a client holding `images` images.

        fedsgd: per-image gradients unless `joint`. A ValueError when the images do not suit the
        threat (batch-B needs B images; fedavg-E-K at least K).
        """
        if self.kind == "fedsgd":
            return {"per_example": not joint}
        if self.kind == "batch":
            if images != self.batch_size:
                raise ValueError(f"threat {self} needs {self.batch_size} images, got {images}")
            return {"per_example": False, "share_labels": False}
        if images < self.batches:
            raise ValueError(f"threat {self} splits the images into {self.batches} local batches, got {images} image(s)")
        return {"per_example": False, "local_steps": self.epochs, "local_batches": self.batches, "lr": self.lr}

    @property
    def client_images(self) -> int:
        """The images behind one shared update: 1 (fedsgd), B (batch-B), K (fedavg-E-K: one image
        per local batch)."""
        return {"fedsgd": 1, "batch": self.batch_size, "fedavg": self.batches}[self.kind]

    def attack_config(self, config: AttackConfig) -> AttackConfig:
        """`config` as this threat lets it run: with labels kept (batch), known or inferred labels
        become per-class counts, as do inferred labels of a FedAvg update (the sign rule of iDLG
        cannot see a label twice); DLG's jointly optimized labels stay as they are."""
        if self.kind == "batch" and config.labels in ("known", "infer"):
            return replace(config, labels="counts")
        if self.kind == "fedavg" and config.labels == "infer":
            return replace(config, labels="counts")
        return config


def parse_threat(text: str | Threat | None) -> Threat:
    """'fedsgd' (also None), 'batch-B', 'fedavg-E-K' -> `Threat`; a one-line ValueError otherwise."""
    if text is None or isinstance(text, Threat):
        return text or Threat()
    cleaned = str(text).strip(" ").lower()
    shown = repr(text) if len(str(text)) <= 40 else f"{str(text)[:30]!r}… ({len(str(text)):,} characters)"
    if cleaned == "fedsgd":
        return Threat()
    if len(cleaned) <= 40 and (match := re.fullmatch(r"batch-([0-9]{1,6})", cleaned)):
        batch = int(match.group(1))
        if not 2 <= batch <= MAX_ATTACK_IMAGES:
            raise ValueError(f"threat {shown}: B must be 2..{MAX_ATTACK_IMAGES}, got {batch}; accepted: {_FORMS}")
        return Threat("batch", batch_size=batch)
    if len(cleaned) <= 40 and (match := re.fullmatch(r"fedavg-([0-9]{1,6})-([0-9]{1,6})", cleaned)):
        epochs, batches = int(match.group(1)), int(match.group(2))
        if not (epochs >= 1 and batches >= 1 and epochs * batches <= MAX_LOCAL_STEPS):
            raise ValueError(f"threat {shown}: E and K must be at least 1, with E·K ≤ {MAX_LOCAL_STEPS}; "
                             f"accepted: {_FORMS}")
        return Threat("fedavg", epochs=epochs, batches=batches)
    raise ValueError(f"threat {shown} is not understood; accepted: {_FORMS}")


@dataclass(frozen=True)
class ThreatAttack:
    """What `attack_threat` returns: per-image results (paired to the images), the reconstructions
    and T(x) in the images' order, and the seconds the clients' updates and attacks took."""

    results: list[ImageResult]
    recon: Reconstruction  # every client's reconstructions, concatenated (`images`, `labels`)
    private: ClientSecrets  # every client's T(x) and labels, concatenated
    clients: int
    seconds: float


def check_client_split(threat: Threat, images: int, client_images: int | None = None) -> int:
    """The images per client of `threat` for `images` images; a ValueError when they do not divide."""
    per_client = client_images or threat.client_images
    if threat.kind == "batch" and per_client != threat.batch_size:
        raise ValueError(f"threat {threat} puts {threat.batch_size} images behind one gradient, not {per_client}")
    if per_client < 1 or images % per_client:
        raise ValueError(f"threat {threat}: {images} image(s) do not split into clients of {per_client}")
    return per_client


def attack_threat(model: nn.Module, x: Tensor, y: Tensor, threat: Threat | str, config: AttackConfig, *,
                  policy: Policy | str = "none", defense: str = "none", seed: int = 0,
                  indices: Sequence[int] | None = None, client_images: int | None = None,
                  crop_flip: bool | None = None) -> ThreatAttack:
    """Deal images `x` (N, 3, H, W) with labels `y` to clients as `threat` says, let each share
    its update with `policy` and `defense`, attack each with `config` (as the threat lets it run)
    and score every image against its own x, T(x) and baselines (`ats.evaluation`).

    fedsgd attacks every image alone in one batched call, as the paper's benchmark; batch-B and
    fedavg-E-K attack their clients one after another, each jointly. The clients draw their
    crops, flips and noise from one generator seeded `seed`, the attacks from one seeded `seed + 1`.
    `crop_flip` defaults to "with a policy" (the paper's convention).
    """
    threat, policy = parse_threat(threat), as_policy(policy)
    crop_flip = policy != Policy.none() if crop_flip is None else crop_flip
    indices = list(range(x.shape[0])) if indices is None else list(indices)
    device = next(model.parameters()).device
    client_generator, attack_generator = make_generator(seed, device), make_generator(seed + 1, device)
    config = threat.attack_config(config)
    started = time.perf_counter()
    per_client = x.shape[0] if threat.kind == "fedsgd" else check_client_split(threat, x.shape[0], client_images)
    results, recons, secrets = [], [], []
    for start in range(0, x.shape[0], per_client):
        part = slice(start, start + per_client)
        options = threat.client_options(per_client)
        shared, private = client_update(model, x[part], y[part], policy, defense, crop_flip=crop_flip,
                                        generator=client_generator, **options)
        recon = attacks.reconstruct(model, shared, config, generator=attack_generator, policy=policy, crop_flip=crop_flip)
        own = evaluate_reconstruction(recon, private, x[part], indices[part])
        if recon.images.shape[0] > 1 and len(recon.status) == 1:  # joint: put the images in x's order
            recon = _in_order(recon, private)
        results += own
        recons.append(recon)
        secrets.append(private)
    recon = recons[0] if len(recons) == 1 else replace(
        recons[0], images=torch.cat([r.images for r in recons]), labels=torch.cat([r.labels for r in recons]),
        loss=torch.cat([r.loss for r in recons]), status=tuple(s for r in recons for s in r.status), history=(),
        transformed=None if recons[0].transformed is None else torch.cat([r.transformed for r in recons]))
    private = secrets[0] if len(secrets) == 1 else replace(
        secrets[0], labels=torch.cat([s.labels for s in secrets]),
        transformed=torch.cat([s.transformed for s in secrets]))
    return ThreatAttack(results, recon, private, x.shape[0] // per_client if threat.kind != "fedsgd" else x.shape[0],
                        time.perf_counter() - started)


def _in_order(recon: Reconstruction, private: ClientSecrets) -> Reconstruction:
    """A joint attack's reconstructions in the images' order, paired as `evaluate_reconstruction` pairs them."""
    order = pair_reconstructions(recon.images, private.transformed.detach().cpu().float())
    own = {} if recon.transformed is None else {"transformed": recon.transformed[order]}
    return replace(recon, images=recon.images[order], labels=recon.labels[order], **own)


# --- a study: one set of images under several threats, policies and defenses ----------------------

RECOVERED_DB = 6.0  # an image counts as recovered this far above its own mean colour (PSNR vs x)


@dataclass(frozen=True)
class Scenario:
    """One row of a threat study: what the client shares (`threat`), its `policy` and `defense`,
    and the attack (None: the study's)."""

    threat: str = "fedsgd"
    policy: str = "none"
    defense: str = "none"
    attack: AttackConfig | None = None

    def __post_init__(self) -> None:  # canonical spellings; bad values fail before any work
        from ats.federated import parse_defense

        object.__setattr__(self, "threat", str(parse_threat(self.threat)))
        object.__setattr__(self, "policy", str(as_policy(self.policy)))
        object.__setattr__(self, "defense", str(parse_defense(self.defense)))

    def __str__(self) -> str:
        return f"{self.threat} · {self.policy} · {self.defense}"


def threat_study(model: nn.Module, x: Tensor, y: Tensor, scenarios: Sequence[Scenario], config: AttackConfig, *,
                 seed: int = 0, indices: Sequence[int] | None = None,
                 callback=None) -> list[tuple[Scenario, ThreatAttack]]:
    """Attack the same images `x` under every scenario (`attack_threat`), each from the same seed;
    `callback(i, scenario, outcome)` after each. A scenario that raises is re-raised with its name."""
    out = []
    for i, scenario in enumerate(scenarios):
        try:
            outcome = attack_threat(model, x, y, scenario.threat, scenario.attack or config, policy=scenario.policy,
                                    defense=scenario.defense, seed=seed, indices=indices)
        except ValueError as error:
            raise ValueError(f"scenario {scenario}: {error}") from None
        out.append((scenario, outcome))
        if callback is not None:
            callback(i, scenario, outcome)
    return out


def study_rows(study: Sequence[tuple[Scenario, ThreatAttack]], *, reference: int = 0) -> list[dict]:
    """One dict per scenario: median PSNR against x with its 95 % interval, aligned PSNR, the
    mean-colour baseline, whether it leaks (paired against the baseline), how many images came back
    (`recovered`: more than `RECOVERED_DB` above their own mean colour), the paired difference
    against scenario `reference` (same images) with its Wilcoxon p (Holm over the rows), the DP
    budget of one update (`ats.privacy.update_epsilon`) and the seconds it took."""
    from ats.federated import parse_defense
    from ats.privacy import DP_DELTA, update_epsilon
    from ats.evidence import ALPHA
    from ats.stats import bootstrap_ci, holm, paired_difference, median as median_of

    def ok(outcome: ThreatAttack, key: str) -> dict[int, float]:
        return {r.index: getattr(r, key) for r in outcome.results if r.status == "ok"}

    base = ok(study[reference][1], "psnr_x") if study else {}
    rows = []
    for i, (scenario, outcome) in enumerate(study):
        psnr, colour = ok(outcome, "psnr_x"), ok(outcome, "baseline_mean_colour")
        median, low, high = bootstrap_ci(list(psnr.values()), "median")
        leak = paired_difference([psnr[k] for k in sorted(psnr)], [colour[k] for k in sorted(psnr)])
        common = sorted(set(psnr) & set(base))
        diff = (paired_difference([psnr[k] for k in common], [base[k] for k in common]) if i != reference
                else {"median_diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p": math.nan})
        aligned = [r.psnr_x_aligned for r in outcome.results if r.status == "ok"]
        defense = parse_defense(scenario.defense)
        rows.append({
            "threat": scenario.threat, "policy": scenario.policy, "defense": scenario.defense,
            "attack": (scenario.attack.name if scenario.attack else None), "images": len(outcome.results),
            "finished": len(psnr), "clients": outcome.clients, "psnr_x_median": median, "psnr_x_ci_low": low,
            "psnr_x_ci_high": high, "psnr_x_aligned_median": median_of(aligned),
            "baseline_mean_colour_median": median_of(list(colour.values())), "leak_margin": leak["median_diff"],
            "leaks": bool(leak["n"] >= 2 and leak["ci_low"] > 0 and leak["p"] < ALPHA),
            "diff_median": diff["median_diff"], "diff_ci_low": diff["ci_low"], "diff_ci_high": diff["ci_high"],
            "p": diff["p"], "recovered": sum(psnr[k] > colour[k] + RECOVERED_DB for k in psnr),
            "epsilon_update": update_epsilon(defense.amount) if defense.kind == "dp" else None,
            "delta": DP_DELTA if defense.kind == "dp" else None, "seconds": outcome.seconds,
        })
    tested = [i for i, r in enumerate(rows) if not math.isnan(r["p"])]
    for i, p in zip(tested, holm([rows[i]["p"] for i in tested])):
        rows[i]["p_adjusted"] = p
    for row in rows:
        row.setdefault("p_adjusted", math.nan)
    return rows
