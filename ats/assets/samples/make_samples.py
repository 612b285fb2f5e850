"""Rebuild the bundled sample photos from images that ship inside scikit-image.

Run from the project root (needs `pip install -e ".[dev]"`, which brings scikit-image):

    python ats/assets/samples/make_samples.py

Each source photo is centre-cropped to a square and resized with an antialiasing filter by
`ats.images.load_image`, the same path an uploaded image takes, then written as a 32×32 PNG and a
128×128 preview. Labels (nearest CIFAR-100 class) go to `labels.json`; sources and licences are
in `ATTRIBUTION.md`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from ats.data import CIFAR100_CLASSES
from ats.images import load_image

HERE = Path(__file__).resolve().parent

# sample name: (file in skimage.data.data_dir, nearest CIFAR-100 class)
SOURCES = {
    "astronaut": ("astronaut.png", "woman"),
    "camera": ("camera.png", "man"),
    "chelsea": ("chelsea.png", "tiger"),
    "coffee": ("coffee.png", "cup"),
    "motorcycle": ("motorcycle_left.png", "motorcycle"),
    "rocket": ("rocket.jpg", "rocket"),
}


def save(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, optimize=True)


def main() -> None:
    source_dir = Path(skimage.data.data_dir)
    (HERE / "preview").mkdir(exist_ok=True)
    labels = {}
    for name, (filename, label) in SOURCES.items():
        assert label in CIFAR100_CLASSES, label
        for size, target in ((32, HERE / f"{name}.png"), (128, HERE / "preview" / f"{name}.png")):
            x = load_image(source_dir / filename, size=size)  # (3, size, size) in [0, 1]
            save((x.permute(1, 2, 0) * 255).round().byte().numpy(), target)
        labels[name] = label
    (HERE / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")


if __name__ == "__main__":
    main()
