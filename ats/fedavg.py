"""Federated Averaging: the local training a FedAvg client runs, and the weight difference it shares.

A FedSGD client shares one gradient (`ats.federated.client_update`). A FedAvg client (McMahan et
al., AISTATS 2017) instead trains its copy of the model for E local epochs over its data split into
K mini-batches, with plain SGD at learning rate η, and shares the weight difference θ_E·K − θ_0.
After one step (E = K = 1) that difference is −η·∇θ loss: FedSGD's gradient, scaled.

Geiping et al. (Inverting Gradients, NeurIPS 2020, §6) and Dimitrov et al. ("Data Leakage in
Federated Averaging", TMLR 2022) attack it by simulating the same local steps on the candidate
images and matching the simulated difference to the shared one, differentiating through every
SGD step. `weight_difference` is that simulation; the client and the attacker both call it, the
client on its images, the attacker on its candidates (inside `torch.func.vmap`), so both run the
very same steps. The steps use `torch.func.grad`, which keeps the graph back to the images.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor
from torch.func import grad

from ats.limits import check_range

FEDAVG_LR = 0.01  # the local learning rate η when none is given
MAX_LOCAL_STEPS = 100  # E·K: every step is differentiated through by the attacker


@dataclass(frozen=True)
class LocalTraining:
    """A FedAvg client's local training: `epochs` E over `batches` K mini-batches, SGD at `lr` η."""

    epochs: int = 1
    batches: int = 1
    lr: float = FEDAVG_LR

    def __post_init__(self) -> None:
        check_range("local epochs", self.epochs, 1, MAX_LOCAL_STEPS)
        check_range("local batches", self.batches, 1, MAX_LOCAL_STEPS)
        check_range("local steps (epochs × batches)", self.steps, 1, MAX_LOCAL_STEPS)
        if not self.lr > 0:
            raise ValueError(f"the local learning rate must be positive, got {self.lr}")

    @property
    def steps(self) -> int:
        """SGD steps in all: E·K."""
        return self.epochs * self.batches

    def slices(self, images: int) -> list[slice]:
        """The K mini-batches of `images` images, in order, their sizes differing by at most one."""
        if images < self.batches:
            raise ValueError(f"{images} image(s) cannot be split into {self.batches} local batches")
        size, extra = divmod(images, self.batches)
        bounds = [k * size + min(k, extra) for k in range(self.batches + 1)]
        return [slice(bounds[k], bounds[k + 1]) for k in range(self.batches)]


def weight_difference(batch_loss: Callable[[dict[str, Tensor], slice], Tensor], params: dict[str, Tensor],
                      images: int, local: LocalTraining) -> dict[str, Tensor]:
    """θ_end − θ_0 after `local`'s SGD steps from `params`, one step per mini-batch per epoch.

    `batch_loss(params, batch)` is the training loss on the mini-batch `batch` (a slice of the
    `images` images). The result stays differentiable with respect to whatever the loss depends
    on (the attacker's candidate images), and works inside `torch.func.vmap`.
    """
    current = dict(params)
    for _ in range(local.epochs):
        for batch in local.slices(images):
            step = grad(batch_loss)(current, batch)
            current = {name: current[name] - local.lr * step[name] for name in current}
    return {name: current[name] - params[name] for name in params}


def as_gradient(difference: Tensor, local: LocalTraining) -> Tensor:
    """A weight difference read as the average gradient of its steps, −Δ / (η·E·K).

    Exact after one step; after several, the gradient averaged along the client's path (what
    label-count inference reads from a FedAvg update, as Dimitrov et al. do).
    """
    return -difference / (local.lr * local.steps)

