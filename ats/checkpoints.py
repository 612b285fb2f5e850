"""Model checkpoints: save and load them safely, hash them, and find the shipped ones.

A checkpoint is a plain dict of tensors and metadata (`ModelMeta`: architecture, dataset,
classes, normalization, the policy and recipe it was trained with), read back with
`torch.load(weights_only=True)`, so a file can never run code when loaded. Writes go through a
temporary file and a rename, so an interrupted save never leaves a half-written checkpoint.
Each saved checkpoint carries a sha256 of its tensors' bytes (`weights_sha256`), checked on load
when present (older checkpoints lack it and still load); weights that are NaN or infinite are
refused on load, naming the tensor, whatever wrote them.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from ats.limits import check_model
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
    state_dict = {name: value.detach().cpu() for name, value in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "meta": asdict(meta), "state_dict": state_dict,
               "sha256": weights_sha256(state_dict)}
    return atomic_save(payload, path)


def weights_sha256(state_dict: dict[str, Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order: changes if any weight does."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_tensors(path: Path, what: str, device: torch.device | str = "cpu"):
    """`torch.load(path, weights_only=True)`, every failure a one-line ValueError naming `what` and `path`.

    A file that asks for Python objects beyond tensors and plain containers (a hostile pickle, say)
    is refused by `weights_only`; the message says so instead of torch's advice to unpickle it.
    """
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: not ours to show
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=True, map_location=device)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found:  # a pickle that asks for a Python object (os.system, say): refused, never run
            raise ValueError(f"{what} {path} is not a plain file of tensors (it asks for {found[1][:60]}); "
                             f"it will not be unpickled") from None
        raise ValueError(f"{what} {path} is not a readable torch file (corrupt, truncated, or a pickle that is "
                         f"not plain tensors, which will not be unpickled)") from None
    except Exception as error:  # torch raises many kinds for corrupt, truncated or foreign files
        first = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0][:120]
        raise ValueError(f"{what} {path} is not a readable torch file (corrupt or truncated?): {first}") from None


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
    payload = load_tensors(path, "checkpoint", device)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        bare = isinstance(payload, dict) and payload and all(isinstance(v, Tensor) for v in payload.values())
        hint = ("it looks like a bare state_dict, which does not say which model it belongs to; "
                "save it with ats.models.save_checkpoint") if bare else f"its format is not {CHECKPOINT_FORMAT!r}"
        raise ValueError(f"{path} is not an ats checkpoint: {hint}")
    known = {f.name for f in fields(ModelMeta)}
    raw = payload.get("meta")
    if (not isinstance(raw, dict) or not {"arch", "dataset", "num_classes", "normalization"} <= set(raw)
            or set(raw) - known or not all(isinstance(raw[k], str) for k in ("arch", "dataset", "normalization"))
            or type(raw["num_classes"]) is not int):
        raise ValueError(f"checkpoint {path} has malformed metadata: {repr(raw)[:200]}")
    meta = ModelMeta(**raw)
    if expect_arch is not None and meta.arch != expect_arch:
        raise ValueError(f"checkpoint {path} holds a {meta.arch!r} model, expected {expect_arch!r}")
    check_weights(path, payload)
    check_model(meta.arch, meta.num_classes, meta.dataset)
    try:
        model = build_model(meta.arch, meta.num_classes, dataset=meta.dataset, normalization=meta.normalization)
        model.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError, KeyError, TypeError) as error:
        detail = " ".join(str(error).split())[:200]
        raise ValueError(f"checkpoint {path}: its weights do not fit a {meta.arch!r} model: {detail}") from error
    return model.to(device), meta


def check_weights(path: Path, payload: dict) -> None:
    """ValueError unless the state_dict is named tensors, all finite, matching its sha256 when saved with one."""
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                                   for k, v in state_dict.items()):
        raise ValueError(f"checkpoint {path} has no state_dict of named tensors")
    for name, tensor in state_dict.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"checkpoint {path}: tensor {name!r} holds NaN or infinite weights; "
                             f"it cannot be attacked or scored")
    saved = payload.get("sha256")
    if saved is not None and saved != weights_sha256(state_dict):
        raise ValueError(f"checkpoint {path}: its weights do not match the sha256 saved with them "
                         f"(changed or damaged since it was written); train or copy it again")


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
    check_model(arch, num_classes, dataset)
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
