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

DP-SGD is a defense, not a threat (`dp-C-σ`, `ats.privacy`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ats.attacks import AttackConfig
from ats.fedavg import FEDAVG_LR, MAX_LOCAL_STEPS, LocalTraining
from ats.limits import MAX_ATTACK_IMAGES

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

    def attack_config(self, config: AttackConfig) -> AttackConfig:
        """`config` as this threat lets it run: with labels kept (batch), known or inferred labels
        become per-class counts; DLG's jointly optimized labels stay as they are."""
        if self.kind == "batch" and config.labels in ("known", "infer"):
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
