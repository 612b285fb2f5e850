"""Datasets: CIFAR-100, CIFAR-10 and Fashion-MNIST as `ImageSet`s, and the bundled sample photos.

Gao et al. (CVPR 2021) work on CIFAR-100 (and transfer to Fashion-MNIST); which of its test images
are attacked and scored is `ats.indices`, and reading one image file is `ats.images`. Images are
kept as uint8 `(N, 3, H, W)` and handed out as float `(B, 3, H, W)` in [0, 1]; normalization is
the model's first layer (`STATS` holds each training split's mean and std).

Data is looked for in `root`, else `$ATS_DATA_DIR`, else the cache folder (`default_cache_dir()`),
in three layouts: `.npz` files (`{name}_{split}.npz` or `{name}_{split}_part*.npz`, keys `x`, `y`,
`classes`), torchvision's own folders, or one folder per class (`{name}/{split}/{class}/*.png`).
"""
from __future__ import annotations

import functools
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ats.images import IMAGE_SIZE, load_image
from ats.indices import ATTACK_SET
from ats.runtime import asset_path

SPLITS = ("train", "test")

CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CLASSES = {"cifar100": CIFAR100_CLASSES, "cifar10": CIFAR10_CLASSES, "fmnist": FMNIST_CLASSES}

# Per-channel (mean, std) of each training split, for the model's normalization layer.
STATS = {
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "fmnist": ((0.1307, 0.1307, 0.1307), (0.3081, 0.3081, 0.3081)),
}

# torchvision dataset class and the folder it reads, relative to its root.
_TORCHVISION = {
    "cifar100": ("CIFAR100", "cifar-100-python"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "fmnist": ("FashionMNIST", "FashionMNIST/raw"),
}

class DataNotFoundError(ValueError):
    """No copy of a dataset was found in the folders searched, and downloading was not asked for."""


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Labelled images: uint8 `(N, 3, H, W)`, int64 labels `(N,)`, and the class names."""

    images: torch.Tensor  # (N, 3, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: tuple[str, ...]
    name: str
    split: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must be int64 ({len(self.images)},), got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.classes):
            raise ValueError(f"labels must lie in 0–{len(self.classes) - 1} ({len(self.classes)} classes)")

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        _, c, h, w = self.images.shape
        split = f", split={self.split!r}" if self.split else ""
        return (f"ImageSet(name={self.name!r}{split}, {len(self)} images {c}×{h}×{w}, "
                f"{len(self.classes)} classes)")

    def _checked(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).cpu()
        if index.numel() == 0:
            raise ValueError(f"no indices given; pick some in 0–{len(self) - 1}")
        bad = index[(index < 0) | (index >= len(self))]
        if bad.numel():
            raise ValueError(f"index {int(bad[0])} is out of range 0–{len(self) - 1} for {self.name!r}")
        return index

    def batch(self, indices: Sequence[int] | torch.Tensor,
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `indices` as float (B, 3, H, W) in [0, 1] and their labels (B,)."""
        index = self._checked(indices)
        x = self.images[index].to(device=device, dtype=torch.float32) / 255.0  # (B, 3, H, W)
        return x, self.labels[index].to(device)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageSet:
        """A new set holding images `indices`, in that order."""
        index = self._checked(indices)
        return ImageSet(self.images[index], self.labels[index], self.classes, self.name, self.split)


def dataset_names() -> tuple[str, ...]:
    """Names `load_dataset` accepts."""
    return tuple(CLASSES)


def default_cache_dir() -> Path:
    """Where downloads go: `$XDG_CACHE_HOME/ats/data`, by default `~/.cache/ats/data`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "ats" / "data"


def load_dataset(name: str, split: str = "test", *, root: str | Path | None = None,
                 download: bool = False) -> ImageSet:
    """Dataset `name` ("cifar100", "cifar10", "fmnist"), split "train" or "test", as an ImageSet.

    Searches `root` if given, else `$ATS_DATA_DIR` (when set) and then `default_cache_dir()`.
    With `download=True` and nothing found, torchvision downloads it into `root` or the cache.
    Loaded sets are cached in-process by source path; treat their tensors as read-only.
    """
    if name not in CLASSES:
        raise ValueError(f"dataset {name!r} is not one of {', '.join(CLASSES)}")
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if root is not None:
        folders = [Path(root).expanduser()]
    else:
        env = os.environ.get("ATS_DATA_DIR")
        folders = ([Path(env).expanduser()] if env else []) + [default_cache_dir()]
    for folder in folders:
        source = _find_source(folder, name, split)
        if source is not None:
            kind, paths = source  # download=True repairs a torchvision folder that fails its check
            return _load_source(kind, paths, name, split, download=download and kind == "torchvision")
    if download:
        target = folders[0] if root is not None else default_cache_dir()
        target.mkdir(parents=True, exist_ok=True)
        return _load_source("torchvision", (target.resolve(),), name, split, download=True)
    searched = ", ".join(str(folder) for folder in folders)
    raise DataNotFoundError(
        f"no {name} {split} data found in {searched}. Point ATS_DATA_DIR (or root=) at a folder "
        f"holding {name}_{split}.npz, torchvision's {_TORCHVISION[name][1]}/ or {name}/{split}/<class>/ "
        f"images, or download it with download=True (command line: --download)")


def _find_source(folder: Path, name: str, split: str) -> tuple[str, tuple[Path, ...]] | None:
    """The first layout of `name`/`split` present in `folder`: (kind, resolved paths) or None."""
    single = folder / f"{name}_{split}.npz"
    if single.is_file():
        return "npz", (single.resolve(),)
    parts = list(folder.glob(f"{name}_{split}_part*.npz"))
    numbered = [p for p in parts if re.fullmatch(r"\d+", p.stem.rsplit("_part", 1)[1])]
    if numbered:
        numbered.sort(key=lambda p: int(p.stem.rsplit("_part", 1)[1]))
        return "npz", tuple(p.resolve() for p in numbered)
    if (folder / _TORCHVISION[name][1]).is_dir():
        return "torchvision", (folder.resolve(),)
    if (folder / name / split).is_dir():
        return "folders", ((folder / name / split).resolve(),)
    return None


@functools.lru_cache(maxsize=8)
def _load_source(kind: str, paths: tuple[Path, ...], name: str, split: str,
                 download: bool) -> ImageSet:
    classes = CLASSES[name]
    if kind == "npz":
        xs, ys = [], []
        for path in paths:
            with np.load(path) as npz:
                if "classes" in npz.files and tuple(str(c) for c in npz["classes"]) != classes:
                    raise ValueError(f"{path} lists classes that differ from {name}'s standard order")
                xs.append(npz["x"])
                ys.append(npz["y"])
        x, y = np.concatenate(xs), np.concatenate(ys)
    elif kind == "torchvision":
        x, y = _read_torchvision(paths[0], name, split, download)
    else:
        x, y = _read_class_folders(paths[0], classes)
    images = _as_images(x)
    return ImageSet(images, torch.as_tensor(np.asarray(y), dtype=torch.int64), classes, name, split)


def _read_torchvision(folder: Path, name: str, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    import torchvision.datasets

    cls_name, subfolder = _TORCHVISION[name]
    dataset_cls = getattr(torchvision.datasets, cls_name)
    try:
        dataset = dataset_cls(root=str(folder), train=split == "train", download=download)
    except RuntimeError as error:
        raise DataNotFoundError(
            f"{folder / subfolder} looks like torchvision's {name} folder but torchvision could not "
            f"read it ({error}); remove it, or pass download=True (--download) to fetch it again"
        ) from error
    return np.asarray(dataset.data), np.asarray(dataset.targets)


def _folder_key(class_name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", class_name.lower()).strip("_")


def _read_class_folders(folder: Path, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    label_of = {_folder_key(c): i for i, c in enumerate(classes)}
    images, labels = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if _folder_key(sub.name) not in label_of:
            raise ValueError(f"class folder {sub} is not one of the classes: {', '.join(classes)}")
        files = sorted(p for p in sub.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        images += [(load_image(p, IMAGE_SIZE).permute(1, 2, 0) * 255).round().byte().numpy() for p in files]
        labels += [label_of[_folder_key(sub.name)]] * len(files)
    if not images:
        raise DataNotFoundError(f"class folders under {folder} hold no .png or .jpg images")
    return np.stack(images), np.asarray(labels)


def _as_images(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W[, 1 or 3]) -> (N, 3, 32, 32); grayscale is repeated, other sizes resized."""
    images = torch.as_tensor(np.asarray(x, dtype=np.uint8))
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W), (N, H, W, 1) or (N, H, W, 3), got {tuple(images.shape)}")
    images = images.permute(0, 3, 1, 2)  # (N, C, H, W)
    if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):  # like the original's Resize(32), bilinear
        resized = torch.nn.functional.interpolate(images.float(), size=(IMAGE_SIZE, IMAGE_SIZE),
                                                  mode="bilinear", align_corners=False, antialias=True)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    return images.expand(-1, 3, -1, -1).contiguous()  # (N, 3, 32, 32)


@functools.lru_cache(maxsize=1)
def load_samples() -> ImageSet:
    """The bundled 32×32 photos in `ats/assets/samples/`, labelled with CIFAR-100 classes."""
    folder = asset_path("samples")
    names = json.loads((folder / "labels.json").read_text())
    files = sorted(folder.glob("*.png"))
    missing = [f.name for f in files if f.stem not in names or names[f.stem] not in CIFAR100_CLASSES]
    if not files or missing:
        raise ValueError(f"samples in {folder} lack a CIFAR-100 label in labels.json: {missing or 'no files'}")
    images = torch.stack([(load_image(f, IMAGE_SIZE) * 255).round().byte() for f in files])
    labels = torch.tensor([CIFAR100_CLASSES.index(names[f.stem]) for f in files])
    return ImageSet(images, labels, CIFAR100_CLASSES, "samples", "test")


def attack_images(n: int, *, root: str | Path | None = None, fallback: bool = True) -> ImageSet:
    """The attack set's first `n` CIFAR-100 test images, or, when no CIFAR-100 copy is found and
    `fallback`, the first `n` bundled sample photos (named "samples"; a `UserWarning` says so)."""
    try:
        return load_dataset("cifar100", "test", root=root).subset(ATTACK_SET[:n])
    except DataNotFoundError as error:
        if not fallback:
            raise
        warnings.warn(f"{str(error).splitlines()[0]}; using the bundled sample photos instead", stacklevel=2)
        samples = load_samples()
        return samples.subset(range(min(n, len(samples))))
