"""The 50-entry transformation pool of Automatic Transformation Search, as data.

Gao et al., "Privacy-preserving Collaborative Learning with Automatic Transformation Search"
(CVPR 2021) search policies built from the 50 single-operation entries of the original code's
`policy.py`: AutoAugment's CIFAR10Policy (Cubuk et al., CVPR 2019, as coded by DeepVoltaire)
flattened to one op per entry, with ATS's own magnitude tables (enhance magnitudes up to 0.5,
not AutoAugment's 0.9). This module is the table and its lookups; `ats.ops` holds the kernels.
See docs/method.md for the table in words.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

# Magnitude tables of the original `SubPolicy.__init__`, indexed by level m = 0..9.
_translate_range = tuple(float(v) for v in torch.linspace(0, 150 / 331, 10, dtype=torch.float64))
_enhance_range = tuple(float(v) for v in torch.linspace(0, 0.5, 10, dtype=torch.float64))
MAGNITUDES: dict[str, tuple[float, ...] | None] = {
    "shearX": tuple(float(v) for v in torch.linspace(0, 0.3, 10, dtype=torch.float64)),
    "shearY": tuple(float(v) for v in torch.linspace(0, 0.3, 10, dtype=torch.float64)),
    "translateX": _translate_range,  # fraction of the image width
    "translateY": _translate_range,  # fraction of the image height
    "rotate": tuple(float(v) for v in torch.linspace(0, 30, 10, dtype=torch.float64)),  # degrees
    "color": _enhance_range,
    "contrast": _enhance_range,
    "sharpness": _enhance_range,
    "brightness": _enhance_range,
    "posterize": tuple(float(round(float(v))) for v in torch.linspace(8, 4, 10, dtype=torch.float64)),
    "solarize": tuple(float(v) for v in torch.linspace(256, 0, 10, dtype=torch.float64)),
    "autocontrast": None,
    "equalize": None,
    "invert": None,
}

# Ops whose magnitude gets a random sign per image (rotate has none in the original).
SIGNED = frozenset({"shearX", "shearY", "translateX", "translateY", "color", "contrast", "sharpness", "brightness"})

# (probability, op, level) of the original `policy.py`, entries 0..49 in order.
_ENTRIES = (
    (0.1, "invert", 7), (0.2, "contrast", 6), (0.7, "rotate", 2), (0.3, "translateX", 9),
    (0.8, "sharpness", 1), (0.9, "sharpness", 3), (0.5, "shearY", 2), (0.7, "translateY", 2),
    (0.5, "autocontrast", 5), (0.9, "equalize", 2), (0.2, "shearY", 5), (0.3, "posterize", 5),
    (0.4, "color", 3), (0.6, "brightness", 5), (0.3, "sharpness", 9), (0.7, "brightness", 9),
    (0.6, "equalize", 5), (0.5, "equalize", 1), (0.6, "contrast", 7), (0.6, "sharpness", 5),
    (0.7, "color", 5), (0.5, "translateX", 5), (0.3, "equalize", 7), (0.4, "autocontrast", 8),
    (0.4, "translateY", 3), (0.2, "sharpness", 6), (0.9, "brightness", 6), (0.2, "color", 8),
    (0.5, "solarize", 0), (0.0, "invert", 0), (0.2, "equalize", 0), (0.6, "autocontrast", 0),
    (0.2, "equalize", 8), (0.6, "equalize", 4), (0.9, "color", 5), (0.6, "equalize", 5),
    (0.8, "autocontrast", 4), (0.2, "solarize", 4), (0.1, "brightness", 3), (0.7, "color", 0),
    (0.4, "solarize", 1), (0.9, "autocontrast", 0), (0.9, "translateY", 3), (0.7, "translateY", 3),
    (0.9, "autocontrast", 1), (0.8, "solarize", 1), (0.8, "equalize", 5), (0.1, "invert", 0),
    (0.7, "translateY", 3), (0.9, "autocontrast", 1),
)


@dataclass(frozen=True)
class OpSpec:
    """One entry of the pool: op `name` at `magnitude` (level `level` of its table)."""

    index: int
    name: str
    probability: float  # read only under "autoaugment" semantics
    level: int
    magnitude: float | None  # None where the op has no magnitude

    @property
    def signed(self) -> bool:
        """Whether each image gets a random ± on the magnitude."""
        return self.name in SIGNED

    @property
    def key(self) -> tuple[str, float | None]:
        """What the op does, irrespective of index and probability (for disjointness checks)."""
        return self.name, self.magnitude

    @property
    def is_identity(self) -> bool:
        """True for entries that leave every image unchanged (solarize 256, enhance factor 1)."""
        return (self.name == "solarize" and self.magnitude >= 256) or (self.signed and self.magnitude == 0)


def _spec(index: int, probability: float, name: str, level: int) -> OpSpec:
    table = MAGNITUDES[name]
    return OpSpec(index, name, probability, level, None if table is None else table[level])


POOL: tuple[OpSpec, ...] = tuple(_spec(i, p, name, level) for i, (p, name, level) in enumerate(_ENTRIES))

def op_spec(index: int) -> OpSpec:
    """The pool entry `index` (0–49), or ValueError naming the bad index."""
    try:
        value = operator.index(index)
    except TypeError:
        value = None
    if value is None or isinstance(index, bool):
        raise ValueError(f"policy index {index!r} is not a whole number; allowed are 0–{len(POOL) - 1}")
    if not 0 <= value < len(POOL):
        raise ValueError(f"policy index {value} is out of range 0–{len(POOL) - 1}")
    return POOL[value]


def describe(index: int, size: int = 32) -> str:
    """Entry `index` in words, e.g. "translateX ±14.5 px" (pixel shifts for `size`-pixel images)."""
    spec = op_spec(index)
    name, m = spec.name, spec.magnitude
    if m is None:
        text = name
    elif name.startswith("translate"):
        text = f"{name} ±{m * size:.1f} px"
    elif name == "rotate":
        text = f"rotate {m:.1f}°"
    elif name == "posterize":
        text = f"posterize {int(m)} bits"
    elif name == "solarize":
        text = f"solarize ≥{m:.1f}"
    elif name.startswith("shear"):
        text = f"{name} ±{m:.3f}"
    else:
        text = f"{name} ±{m:.2f}"
    return f"{text} (no-op)" if spec.is_identity else text
