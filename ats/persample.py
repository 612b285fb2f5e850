"""Per-example gradients from one batched forward and backward pass, differentiable in the inputs.

An attack on N candidates needs N trial gradients, each of its own images, and the gradient of a
cost of each with respect to those images (a gradient of a gradient). `torch.func.vmap` gives them
generically, but it turns every per-example weight gradient into a grouped convolution with the
image as its kernel, and batch norm's second derivative into slow broadcasts. This module
computes them the way Opacus and BackPACK compute per-example gradients (Goodfellow, 2015;
Rochette et al., 2019), kept differentiable, on the layers our models are made of:

1. one forward pass of all N·k images, recording every parametrized layer's input `a` and output;
2. `δ = ∂(Σ losses)/∂output` for every layer, in one `autograd.grad(create_graph=True)`. The
   model is in eval mode, so no image sees another and each example's `δ` is its own;
3. each example's parameter gradients from `(a, δ)`: a convolution's weight gradient is one
   grouped weight-gradient convolution (`ConvWeightPerExample`, whose backward is two grouped
   convolutions), a linear weight an outer product, biases and batch-norm affine parameters sums.

Every other operation (forward, backward and double backward of the shared-weight layers) is an
ordinary batched kernel. On ResNet20 at 32 candidates one evaluation takes about 60 % of the time
`vmap` takes (`bench/attack_speed.py`). `unsupported` says why a model cannot go this way (a layer
type not listed here, batch norm in training mode, grouped convolutions); the attack then uses
`vmap`.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
CPU_BUDGET = 24 * 2**20  # bytes of the largest per-example parameter gradient, on a CPU (`batch_size`)


class Unsupported(RuntimeError):
    """The model's forward pass did not use its layers the way `per_example_gradients` assumes."""


def unsupported(model: nn.Module) -> str | None:
    """Why `per_example_gradients` cannot take `model` (one line), or None when it can."""
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        kind = type(module).__name__
        if not isinstance(module, _LAYERS):
            return f"{name or 'the model'} is a {kind}, not one of Conv2d, Linear, BatchNorm2d"
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"
                                              or isinstance(module.padding, str)):
            return f"{name} is a grouped, non-zero-padded or 'same'-padded convolution"
        if isinstance(module, nn.BatchNorm2d) and (module.training or module.running_mean is None
                                                   or not module.affine):
            return f"{name} normalizes with batch statistics (training mode), so the examples interact"
    return None


def batch_size(model: nn.Module, device: torch.device) -> int | None:
    """How many groups (candidates) one call should take on `device`, or None for no limit (a GPU).

    On a CPU the largest parameter's per-group gradients, (groups, *shape), are kept under
    `CPU_BUDGET` (24 MB). glibc hands blocks above 32 MB back to the kernel when they are freed, so
    each evaluation would fault them in again, page by page: on ResNet20-4 (a 256 × 256 × 3 × 3
    weight, 2.4 MB a copy) 32 examples at once took 220 ms each, 8 at a time 110 ms, one at a time
    167 ms. ResNet20 (its largest weight 0.15 MB) takes 32 and more in one call.
    """
    if device.type != "cpu":
        return None
    largest = max((p.numel() * p.element_size() for p in model.parameters()), default=1)
    return max(1, CPU_BUDGET // largest)


def per_example_gradients(model: nn.Module, inputs: Tensor, total_loss: Callable[[Tensor], Tensor],
                          groups: int, graph: bool = True) -> tuple[Tensor, ...]:
    """Each group's gradient of its loss, per parameter (groups, *shape), in `named_parameters` order.

    `inputs` (groups·k, ...) are the model's inputs, k consecutive ones a group; `total_loss` maps
    the model's outputs (groups·k, classes) to the sum over groups of each group's loss. With
    `graph`, the results stay in the autograd graph of `inputs` (for the cost's gradient with
    respect to them); without, they are plain values (one backward pass, not two).
    Raises `Unsupported` when a parametrized layer did not run exactly once (weights used outside
    their module, a layer called twice), and ValueError when `unsupported(model)` says so.
    """
    if (reason := unsupported(model)) is not None:
        raise ValueError(f"per-example gradients by hand do not cover this model: {reason}")
    layers = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    seen: list[tuple[nn.Module, Tensor, Tensor]] = []
    me = threading.get_ident()

    def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        if threading.get_ident() == me:  # another thread's forward through the same model is not ours
            seen.append((module, args[0], output))

    handles = [m.register_forward_hook(record) for m in layers]
    try:
        loss = total_loss(model(inputs))
    finally:
        for handle in handles:
            handle.remove()
    if sorted(id(m) for m, _, _ in seen) != sorted(map(id, layers)):  # (in the order they ran)
        raise Unsupported("each parametrized layer must run exactly once in the forward pass")
    deltas = torch.autograd.grad(loss, [out for _, _, out in seen], create_graph=graph)
    k = inputs.shape[0] // groups
    grads: dict[int, Tensor] = {}
    with torch.set_grad_enabled(graph):
        for (module, a, _), delta in zip(seen, deltas):
            grads.update(_layer_gradients(module, a, delta, groups, k))
    return tuple(grads[id(p)] for p in model.parameters())


def _layer_gradients(module: nn.Module, a: Tensor, delta: Tensor, n: int, k: int) -> dict[int, Tensor]:
    """One layer's per-group parameter gradients from its input `a` and output gradient `delta`."""
    out: dict[int, Tensor] = {}
    if isinstance(module, nn.Conv2d):
        out[id(module.weight)] = ConvWeightPerExample.apply(delta, a, n, module.kernel_size, module.stride,
                                                            module.padding, module.dilation)
        if module.bias is not None:
            out[id(module.bias)] = delta.reshape(n, k, delta.shape[1], -1).sum((1, 3))
    elif isinstance(module, nn.Linear):
        if a.dim() != 2:
            raise Unsupported(f"a Linear layer got a {a.dim()}-d input; only (batch, features) is covered")
        if k == 1:
            out[id(module.weight)] = delta[:, :, None] * a[:, None, :]  # (N, out, in)
        else:
            out[id(module.weight)] = torch.bmm(delta.reshape(n, k, -1).transpose(1, 2), a.reshape(n, k, -1))
        if module.bias is not None:
            out[id(module.bias)] = delta.reshape(n, k, -1).sum(1)
    else:  # BatchNorm2d in eval mode: y = x̂·γ + β with x̂ from the running statistics
        shape = (-1, 1, 1)
        normalized = (a - module.running_mean.reshape(shape)) * torch.rsqrt(module.running_var.reshape(shape)
                                                                              + module.eps)
        channels = delta.shape[1]
        out[id(module.weight)] = (delta * normalized).reshape(n, k, channels, -1).sum((1, 3))
        out[id(module.bias)] = delta.reshape(n, k, channels, -1).sum((1, 3))
    return out


def _grouped(t: Tensor, n: int) -> Tensor:
    """(n·k, C, H, W) -> (k, n·C, H, W): each group's examples side by side as channel groups."""
    k = t.shape[0] // n
    return t.reshape(n, k, *t.shape[1:]).transpose(0, 1).reshape(k, n * t.shape[1], *t.shape[2:])


def _ungrouped(t: Tensor, n: int) -> Tensor:
    """The inverse of `_grouped`: (k, n·C, H, W) -> (n·k, C, H, W)."""
    k = t.shape[0]
    return t.reshape(k, n, -1, *t.shape[2:]).transpose(0, 1).reshape(n * k, -1, *t.shape[2:])


class ConvWeightPerExample(torch.autograd.Function):
    """Each group's weight gradient of a convolution `y = conv(a, W)`, (n, out, in, kh, kw).

    Forward: the weight gradient of one grouped convolution (n groups, the group's k examples as
    its batch), oneDNN's kernel. Backward, given `H = ∂cost/∂G` (a weight per group): `∂/∂δ` is
    conv(a, H) and `∂/∂a` its transpose applied to δ, two grouped convolutions. First derivatives
    only: the attack differentiates the cost once through this.
    """

    @staticmethod
    def forward(ctx, delta: Tensor, a: Tensor, n: int, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(delta, a)
        ctx.settings = (n, kernel, stride, padding, dilation)
        c_out, c_in = delta.shape[1], a.shape[1]
        weight = a.new_empty(n * c_out, c_in, *kernel)  # only its shape is read
        _, gradient, _ = torch.ops.aten.convolution_backward(
            _grouped(delta, n), _grouped(a, n), weight, None, stride, padding, dilation, False, [0, 0], n,
            [False, True, False])
        return gradient.reshape(n, c_out, c_in, *kernel)

    @staticmethod
    @once_differentiable
    def backward(ctx, h: Tensor) -> tuple[Tensor | None, ...]:
        delta, a = ctx.saved_tensors
        n, kernel, stride, padding, dilation = ctx.settings
        weight = h.reshape(n * delta.shape[1], a.shape[1], *kernel).contiguous()
        a_g, d_delta, d_a = _grouped(a, n), None, None
        if ctx.needs_input_grad[0]:
            d_delta = _ungrouped(F.conv2d(a_g, weight, None, stride, padding, dilation, n), n)
        if ctx.needs_input_grad[1]:
            d_a, _, _ = torch.ops.aten.convolution_backward(
                _grouped(delta, n), a_g, weight, None, stride, padding, dilation, False, [0, 0], n,
                [True, False, False])
            d_a = _ungrouped(d_a, n)
        return d_delta, d_a, None, None, None, None, None
