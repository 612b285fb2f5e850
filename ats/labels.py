"""Labels read from a shared update's last layer: one per image (iDLG), or counted per class for a batch.

iDLG (Zhao et al., 2020): with softmax cross-entropy the classifier's bias gradient, softmax −
onehot, is negative only at the true label, so one image's label is its argmin. For a batch of B
images whose labels the client kept, that rule yields B distinct labels; `infer_label_counts`
recovers repeated labels too, from the size of each class's bias gradient (the count estimates of
Wainakh et al., LLG, PETS 2022, and Geng et al., 2021). A FedAvg weight difference is first read as
its steps' average gradient (`ats.fedavg.as_gradient`). `ats.federated` re-exports both functions.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ats.fedavg import as_gradient
from ats.models import last_linear

if TYPE_CHECKING:
    from ats.federated import SharedUpdate


def infer_labels(update: SharedUpdate, model: nn.Module) -> Tensor:
    """Labels read from the shared update alone (iDLG), (B,).

    One image per gradient (batch 1, or a per-example update): the argmin of the classifier's bias
    gradient, or, for a classifier without bias, of its weight gradient's row sums (iDLG's rule:
    with non-negative features only the true label's row is negative). A joint update of B > 1
    images: the B most negative entries, most negative first, so B distinct labels in no
    particular order; repeated labels within the batch are NOT recovered by this rule (see
    `infer_label_counts`). A FedAvg weight difference is read as its steps' average gradient.
    """
    g = _last_layer_signal(update, model)
    if update.per_example or update.batch_size == 1:
        return g.reshape(-1, g.shape[-1]).argmin(-1)  # (B,)
    if update.batch_size > g.shape[-1]:
        raise ValueError(f"cannot infer {update.batch_size} distinct labels from {g.shape[-1]} classes")
    return g.topk(update.batch_size, largest=False).indices  # (B,)


def infer_label_counts(update: SharedUpdate, model: nn.Module, *, probes: int = 64, seed: int = 0) -> Tensor:
    """The batch's labels with repeats, (B,), sorted by class: how many images of each class.

    For an aggregated update of B images. With softmax cross-entropy (scaled by s: ½ for half-ce)
    the classifier's bias gradient is g_c = s/B · Σ_i (p_ic − [y_i = c]), so the count of class c
    is n_c = B·(mean_i p_ic − g_c/s). The server does not know the clients' softmax p_ic; it
    estimates its mean by the model's mean softmax on `probes` random images (seeded with `seed`),
    as the label-count estimates of Wainakh et al. ("User-Level Label Leakage from Gradients in
    Federated Learning", LLG, PETS 2022) and Geng et al. ("Towards General Deep Leakage in Federated
    Learning", 2021) do from the last layer. Without a bias, the weight gradient's row sums are used,
    each image weighted by its feature sum (also estimated on the probes). The estimates, rounded to
    whole counts summing to B (largest remainders), are exact when p varies little between images,
    as in an untrained model; the model is used in its current mode (the attack puts it in eval()).
    A per-example or batch-1 update falls back to `infer_labels`.
    """
    if update.per_example or update.batch_size == 1:
        return infer_labels(update, model)
    fc = last_linear(model)
    g = _last_layer_signal(update, model).reshape(-1)  # (classes,)
    device = g.device
    features: list[Tensor] = []
    hook = fc.register_forward_hook(lambda module, inputs, output: features.append(inputs[0].detach()))
    try:
        generator = torch.Generator(device=device).manual_seed(seed)
        probe = torch.rand(probes, *update.image_shape, generator=generator, device=device)
        with torch.no_grad():
            p = torch.softmax(model(probe), dim=-1)  # (probes, classes)
    finally:
        hook.remove()
    weight = torch.ones(probes, device=device) if fc.bias is not None else features[0].flatten(1).sum(1)
    scale = 0.5 if update.loss == "half-ce" else 1.0
    batch = update.batch_size
    estimate = batch * ((p * weight[:, None]).mean(0) - g / scale) / weight.mean()  # (classes,)
    counts = _whole_counts(estimate.clamp_min(0), batch)
    return torch.repeat_interleave(torch.arange(len(counts), device=device), counts)


def _whole_counts(estimate: Tensor, total: int) -> Tensor:
    """Non-negative whole counts (classes,) summing to `total`, nearest `estimate` by largest remainders."""
    counts = estimate.floor().long()
    while int(counts.sum()) < total:
        counts[int((estimate - counts).argmax())] += 1
    while int(counts.sum()) > total:
        rest = torch.where(counts > 0, estimate - counts, torch.full_like(estimate, float("inf")))
        counts[int(rest.argmin())] -= 1
    return counts


def _last_layer_signal(update: SharedUpdate, model: nn.Module) -> Tensor:
    """The classifier's bias gradient (B?, classes), or its weight gradient's row sums without a bias;
    a FedAvg weight difference read as its steps' average gradient (`ats.fedavg.as_gradient`)."""
    fc = last_linear(model)
    names = {id(p): name for name, p in model.named_parameters()}
    parameter = fc.bias if fc.bias is not None else fc.weight
    g = update.gradients[update.names.index(names[id(parameter)])]  # (B?, classes) or (B?, classes, features)
    if update.local is not None:
        g = as_gradient(g, update.local)
    return g if fc.bias is not None else g.sum(-1)
