"""The shared models of the ATS benchmark (checkpoints of them: `ats.checkpoints`).

Gao et al. (CVPR 2021, §5) attack and train inversefed's models (Geiping et al., NeurIPS 2020):

* ResNet20-k: a CIFAR ResNet of torchvision BasicBlocks, layers [3, 3, 3], widths 16k/32k/64k,
  strides 1/2/2; the paper's "ResNet20" is ResNet20-4 (about 4.3 M parameters in 65 tensors).
* ConvNet: the "8-layer ConvNet" of width 64 (the original's `OrderedDict` lists conv6 twice;
  the second entry replaces the first, leaving 8 convolutions, as built here).
* LeNet: the sigmoid LeNet of Deep Leakage from Gradients (Zhu et al., NeurIPS 2019), weights and
  biases uniform in ±0.5, fed raw pixels by default; it expects 32×32 inputs.

Every model is an `nn.Sequential` whose first layer is `Normalize`, so models take pixel images
(B, 3, H, W) in [0, 1]. No layer works in place, so `torch.func` can take gradients of gradients.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "fmnist": ((0.1307,) * 3, (0.3081,) * 3),  # grey images arrive replicated to 3 channels
    "none": ((0.0,) * 3, (1.0,) * 3),
}
DATASETS = ("cifar100", "cifar10", "fmnist")
NUM_CLASSES = {"cifar100": 100, "cifar10": 10, "fmnist": 10}  # classes of each dataset


class Normalize(nn.Module):
    """(x - mean) / std per channel: the first layer of every `ats` model."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std  # (B, C, H, W)


class Network(nn.Sequential):
    """An `nn.Sequential` that remembers its architecture name."""

    def __init__(self, arch: str, layers: OrderedDict[str, nn.Module]) -> None:
        super().__init__(layers)
        self.arch = arch

    def __getitem__(self, index: int | slice) -> nn.Module:
        """A slice is a plain `nn.Sequential` of those layers (e.g. the model without normalization)."""
        if isinstance(index, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[index]))
        return super().__getitem__(index)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, without in-place ReLUs (they break double backward)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class GlobalAvgPool(nn.Module):
    """`AdaptiveAvgPool2d(1)` as a mean: the same numbers, and `vmap` has a batching rule for it."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


def _resnet20(width: int) -> Callable[[int, Normalize], Network]:
    def build(num_classes: int, normalize: Normalize) -> Network:
        base = 16 * width
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            normalize=normalize,
            conv1=nn.Conv2d(3, base, 3, stride=1, padding=1, bias=False),
            bn1=nn.BatchNorm2d(base),
            relu=nn.ReLU(),
        )
        inplanes = base
        for stage, (planes, stride) in enumerate([(base, 1), (2 * base, 2), (4 * base, 2)], start=1):
            blocks = [BasicBlock(inplanes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(2)]
            layers[f"layer{stage}"] = nn.Sequential(*blocks)
            inplanes = planes
        layers.update(pool=GlobalAvgPool(), flatten=nn.Flatten(), fc=nn.Linear(inplanes, num_classes))
        model = Network("resnet20" if width == 1 else f"resnet20-{width}", layers)
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
        return model
    return build


def _convnet(num_classes: int, normalize: Normalize, width: int = 64) -> Network:
    layers: OrderedDict[str, nn.Module] = OrderedDict(normalize=normalize)
    channels = [3, width, 2 * width, 2 * width, 4 * width, 4 * width, 4 * width, 4 * width, 4 * width]
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, 3, padding=1)
        layers[f"bn{i}"] = nn.BatchNorm2d(c_out)
        layers[f"relu{i}"] = nn.ReLU()
        if i in (5, 7):
            layers[f"pool{i // 6}"] = nn.MaxPool2d(3)  # 32 -> 10 -> 3
    layers.update(flatten=nn.Flatten(), linear=nn.Linear(36 * width, num_classes))
    return Network("convnet" if width == 64 else f"convnet-{width}", layers)


def _lenet(num_classes: int, normalize: Normalize) -> Network:
    model = Network("lenet", OrderedDict(
        normalize=normalize,
        conv1=nn.Conv2d(3, 12, 5, padding=2, stride=2), act1=nn.Sigmoid(),  # 32 -> 16
        conv2=nn.Conv2d(12, 12, 5, padding=2, stride=2), act2=nn.Sigmoid(),  # 16 -> 8
        conv3=nn.Conv2d(12, 12, 5, padding=2, stride=1), act3=nn.Sigmoid(),
        flatten=nn.Flatten(),
        fc=nn.Linear(768, num_classes),  # 12 · 8 · 8
    ))
    for parameter in model.parameters():  # DLG's weights_init
        nn.init.uniform_(parameter, -0.5, 0.5)
    return model


_BUILDERS: dict[str, Callable[[int, Normalize], Network]] = {
    "resnet20-4": _resnet20(4),
    "resnet20": _resnet20(1),
    "convnet": _convnet,
    "lenet": _lenet,
}
ARCHS = tuple(_BUILDERS)
_DEFAULT_NORMALIZATION = {"lenet": "none"}  # DLG feeds raw pixels


def _builder(arch: str) -> Callable[[int, Normalize], Network]:
    builder = _BUILDERS.get(arch)
    if builder is None and (match := re.fullmatch(r"resnet20-([1-9]\d*)", arch)):
        builder = _resnet20(int(match.group(1)))
    if builder is None and (match := re.fullmatch(r"convnet-([1-9]\d*)", arch)):
        width = int(match.group(1))
        builder = lambda num_classes, normalize: _convnet(num_classes, normalize, width)  # noqa: E731
    if builder is None:
        raise ValueError(f"model {arch!r} is not one of {', '.join(ARCHS)} (or resnet20-k for a width 16·k, "
                         "convnet-w for a ConvNet of width w)")
    return builder


def build_model(arch: str, num_classes: int = 100, *, dataset: str = "cifar100",
                normalization: str | None = None, seed: int | None = None) -> nn.Module:
    """A fresh `arch` for `num_classes` classes, normalizing inputs with `normalization`'s statistics.

    `normalization` defaults to `dataset`'s own statistics ("none" for lenet); "cifar10" on a
    CIFAR-100 model reproduces the original code. With `seed` the initialisation is deterministic
    (the global RNG is forked, so the caller's state is untouched).
    """
    builder = _builder(arch)
    if dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r} is not one of {', '.join(DATASETS)}")
    normalization = normalization or _DEFAULT_NORMALIZATION.get(arch, dataset)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization {normalization!r} is not one of {', '.join(NORMALIZATIONS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes {num_classes} must be at least 1")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return builder(num_classes, Normalize(*NORMALIZATIONS[normalization]))


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's final `nn.Linear` (its classifier), where label inference reads the gradient."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer")
    return linears[-1]


def num_classes(model: nn.Module) -> int:
    """How many classes the model predicts: the width of its final `nn.Linear`."""
    return last_linear(model).out_features


def input_stats(model: nn.Module) -> tuple[Tensor, Tensor]:
    """The mean and std of the model's `Normalize` layer, detached, (1, C, 1, 1) each.

    0 and 1, (1, 1, 1, 1) on the model's device, for a model without one. The layer is found by
    its class name, so a model built before `ats.models` was reloaded (a Streamlit rerun) counts.
    """
    for module in model.modules():
        if type(module).__name__ == "Normalize":
            return module.mean.detach(), module.std.detach()
    parameter = next(model.parameters())
    return parameter.new_zeros(1, 1, 1, 1), parameter.new_ones(1, 1, 1, 1)


def describe_model(model: nn.Module) -> str:
    """One line: architecture, parameter count, parameter tensors."""
    parameters = list(model.parameters())
    count = sum(p.numel() for p in parameters)
    return f"{getattr(model, 'arch', type(model).__name__)}: {count:,} parameters in {len(parameters)} tensors"
