"""Model checkpoints: save and load them safely, hash them, and find the shipped ones.

A checkpoint is a plain dict of tensors and metadata (`ModelMeta`: architecture, dataset,
classes, normalization, the policy and recipe it was trained with), read back with
`torch.load(weights_only=True)`, so a file can never run code when loaded. Writes go through a
temporary file and a rename, so an interrupted save never leaves a half-written checkpoint.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from ats.models import DATASETS, NUM_CLASSES, build_model
from ats.runtime import asset_path

CHECKPOINT_FORMAT = "ats-checkpoint/1"


@dataclass(frozen=True)
class ModelMeta:
    """What a checkpoint declares about its model; enough to rebuild it."""

    arch: str
    dataset: str
    num_classes: int
    normalization: str
    policy: str = "none"
    defense: str = "none"  # the gradient defense applied at every training step (`ats.federated`)
    epochs: int = 0
    accuracy: float | None = None
    recipe: str = ""
    seed: int | None = None
    extra: dict = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: ModelMeta) -> Path:
    """Write `model`'s weights and `meta` to `path` atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "meta": asdict(meta),
        "state_dict": {name: value.detach().cpu() for name, value in model.state_dict().items()},
    }
    return atomic_save(payload, path)


def atomic_save(payload: dict, path: str | os.PathLike) -> Path:
    """`torch.save(payload)` to `path` through a temporary file and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, *, device: torch.device | str = "cpu",
                    expect_arch: str | None = None) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the model saved at `path` (tensors only, `weights_only=True`) on `device`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, weights_only=True, map_location=device)
    except Exception as error:  # torch raises many kinds for corrupt, truncated or foreign files
        raise ValueError(f"checkpoint {path} is not a readable torch file (corrupt or truncated?): {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        bare = isinstance(payload, dict) and payload and all(isinstance(v, Tensor) for v in payload.values())
        hint = ("it looks like a bare state_dict, which does not say which model it belongs to; "
                "save it with ats.models.save_checkpoint") if bare else f"its format is not {CHECKPOINT_FORMAT!r}"
        raise ValueError(f"{path} is not an ats checkpoint: {hint}")
    known = {f.name for f in fields(ModelMeta)}
    raw = payload.get("meta")
    if not isinstance(raw, dict) or not {"arch", "dataset", "num_classes", "normalization"} <= set(raw) or set(raw) - known:
        raise ValueError(f"checkpoint {path} has malformed metadata: {raw!r}")
    meta = ModelMeta(**raw)
    if expect_arch is not None and meta.arch != expect_arch:
        raise ValueError(f"checkpoint {path} holds a {meta.arch!r} model, expected {expect_arch!r}")
    try:
        model = build_model(meta.arch, meta.num_classes, dataset=meta.dataset, normalization=meta.normalization)
        model.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError, KeyError, TypeError) as error:
        raise ValueError(f"checkpoint {path}: its weights do not fit a {meta.arch!r} model: {error}") from error
    return model.to(device), meta


def checkpoint_hash(path: str | os.PathLike) -> str:
    """The first 16 hex digits of the file's sha256: a stable key for results computed with it."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


# --- the model an attack targets ---------------------------------------------------------------

def model_for_data(arch: str, data: str, *, checkpoint: str | os.PathLike | None = None,
                   device: torch.device | str = "cpu", seed: int | None = None) -> tuple[nn.Module, int]:
    """The model to attack on images of `data`, and its number of classes.

    With `checkpoint`, the model saved there and its own classes (`arch` is not used). Else a fresh,
    seeded `arch` with `data`'s classes and input statistics: 10 for cifar10 and fmnist, 100 for
    cifar100; other image sources (the bundled samples, labelled with CIFAR-100 classes) get a
    CIFAR-100 model.
    """
    if checkpoint is not None:
        model, meta = load_checkpoint(checkpoint, device=device)
        return model, meta.num_classes
    dataset = data if data in DATASETS else "cifar100"
    num_classes = NUM_CLASSES[dataset]
    return build_model(arch, num_classes, dataset=dataset, seed=seed).to(device), num_classes


# --- shipped and uploaded checkpoints ----------------------------------------------------------

def shipped_checkpoints() -> tuple[Path, ...]:
    """The model checkpoints shipped in `ats/assets/models/`, by name."""
    return tuple(sorted(asset_path("models").glob("*.pt")))


def load_checkpoint_bytes(data: bytes, *, device: torch.device | str = "cpu", expect_arch: str | None = None,
                          num_classes: int | None = None) -> tuple[nn.Module, ModelMeta]:
    """`load_checkpoint` on uploaded bytes; ValueError when it is not an ats checkpoint or does not fit."""
    if not data:
        raise ValueError("the uploaded checkpoint is empty")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload-{hashlib.sha256(data).hexdigest()[:12]}.pt"
        path.write_bytes(data)
        model, meta = load_checkpoint(path, device=device, expect_arch=expect_arch)
    check_classes(meta, num_classes)
    return model, meta


def check_classes(meta: ModelMeta, num_classes: int | None) -> None:
    """ValueError unless the checkpoint's model has `num_classes` outputs (None: anything goes)."""
    if num_classes is not None and meta.num_classes != num_classes:
        raise ValueError(f"the checkpoint's {meta.arch} model has {meta.num_classes} classes ({meta.dataset}); "
                         f"these images are labelled with {num_classes} classes")
