"""Tests for ats.data: loading layouts, ImageSet, the bundled samples and the attack-set fallback."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ats import data
from ats.runtime import asset_path


# --- real CIFAR data -------------------------------------------------------------------------

def test_cifar100_train_parts_concatenate_in_order(cifar_dir):
    train = data.load_dataset("cifar100", "train", root=cifar_dir)
    assert len(train) == 50_000 and train.images.shape == (50_000, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [500] * 100
    with np.load(cifar_dir / "cifar100_train_part1.npz") as npz:
        first_of_part1 = torch.from_numpy(npz["x"][0]).permute(2, 0, 1)
    assert torch.equal(train.images[25_000], first_of_part1)
    means = train.images.numpy().sum(axis=(0, 2, 3), dtype=np.int64) / (50_000 * 32 * 32 * 255)
    assert np.allclose(means, data.STATS["cifar100"][0], atol=1e-3)
    assert data.load_dataset("cifar100", "train", root=cifar_dir) is train  # cached in-process


def test_cifar100_test_split_and_classes(cifar_dir, cifar_batch):
    test = data.load_dataset("cifar100", "test", root=cifar_dir)
    assert len(test) == 10_000 and test.split == "test" and test.name == "cifar100"
    assert torch.bincount(test.labels).tolist() == [100] * 100
    with np.load(cifar_dir / "cifar100_test.npz") as npz:
        assert tuple(str(c) for c in npz["classes"]) == data.CIFAR100_CLASSES
    x, y = test.batch(range(16))
    assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32)
    assert torch.equal(x, cifar_batch[0]) and torch.equal(y, cifar_batch[1])
    assert "10000 images" in repr(test)


def test_cifar10_test_split_is_close_to_published_stats(cifar_dir):
    if not (cifar_dir / "cifar10_test.npz").is_file():
        pytest.skip("no cifar10_test.npz")
    test = data.load_dataset("cifar10", "test", root=cifar_dir)
    assert len(test) == 10_000 and test.classes == data.CIFAR10_CLASSES
    x = test.images.double() / 255
    mean, std = data.STATS["cifar10"]
    # STATS are the train split's; the test split differs from them by about 3e-3
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.tensor(mean, dtype=torch.float64), atol=5e-3)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.tensor(std, dtype=torch.float64), atol=5e-3)


def test_ats_data_dir_is_searched_without_root(data_dir, monkeypatch):
    monkeypatch.setenv("ATS_DATA_DIR", str(data_dir))
    assert len(data.load_dataset("cifar100")) == 10_000


# --- other layouts, built in tmp_path from synthetic images ------------------------------------

def test_npz_parts_are_concatenated_in_numeric_order(tmp_path):
    rng = np.random.default_rng(0)
    for part in (0, 2, 10):  # part10 must come after part2
        x = np.full((2, 32, 32, 3), part, dtype=np.uint8)
        np.savez(tmp_path / f"cifar10_train_part{part}.npz", x=x, y=rng.integers(0, 10, 2),
                 classes=np.array(data.CIFAR10_CLASSES))
    train = data.load_dataset("cifar10", "train", root=tmp_path)
    assert train.images[:, 0, 0, 0].tolist() == [0, 0, 2, 2, 10, 10]


def test_npz_with_wrong_classes_is_refused(tmp_path):
    np.savez(tmp_path / "cifar10_test.npz", x=np.zeros((1, 32, 32, 3), np.uint8), y=np.zeros(1),
             classes=np.array(list(reversed(data.CIFAR10_CLASSES))))
    with pytest.raises(ValueError, match="differ"):
        data.load_dataset("cifar10", "test", root=tmp_path)


def test_class_folder_layout(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for i, class_name in enumerate(("airplane", "cat", "cat")):
        folder = tmp_path / "cifar10" / "test" / class_name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).save(folder / f"{i}.png")
    Image.fromarray(pixels[0, :, :20]).save(tmp_path / "cifar10" / "test" / "cat" / "odd.jpg")
    images = data.load_dataset("cifar10", "test", root=tmp_path)
    assert images.labels.tolist() == [0, 3, 3, 3]  # airplane = 0, cat = 3
    assert torch.equal(images.images[0], torch.from_numpy(pixels[0]).permute(2, 0, 1))
    assert images.images.shape == (4, 3, 32, 32)


def test_class_folder_with_unknown_class_is_refused(tmp_path):
    folder = tmp_path / "cifar10" / "test" / "unicorn"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    with pytest.raises(ValueError, match="unicorn.*airplane"):
        data.load_dataset("cifar10", "test", root=tmp_path)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_torchvision_layout_becomes_rgb_32(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    x = np.zeros((4, 28, 28), np.uint8)
    x[1] = 200
    x[2, :, 14:] = 255
    for prefix, n in (("train", 2), ("t10k", 4)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x[:n])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) + 5)
    test = data.load_dataset("fmnist", "test", root=tmp_path)
    assert test.images.shape == (4, 3, 32, 32) and test.labels.tolist() == [5, 6, 7, 8]
    assert test.classes[5] == "Sandal"
    assert torch.equal(test.images[:, 0], test.images[:, 2])  # grayscale repeated
    assert int(test.images[1].min()) == int(test.images[1].max()) == 200  # flat stays flat
    assert int(test.images[2, 0, 0, 0]) == 0 and int(test.images[2, 0, 0, -1]) == 255
    assert len(data.load_dataset("fmnist", "train", root=tmp_path)) == 2


def test_unreadable_torchvision_folder_names_the_problem(tmp_path):
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(data.DataNotFoundError, match="cifar-100-python.*download=True"):
        data.load_dataset("cifar100", "test", root=tmp_path)


def test_missing_data_error_names_folders_env_and_download(tmp_path, monkeypatch):
    monkeypatch.setenv("ATS_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(data.DataNotFoundError) as caught:
        data.load_dataset("cifar100", "train")
    message = str(caught.value)
    assert str(tmp_path / "env") in message and str(tmp_path / "cache" / "ats" / "data") in message
    assert "ATS_DATA_DIR" in message and "download=True" in message and "--download" in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("name, split, allowed", [("mnist", "test", "cifar100, cifar10, fmnist"),
                                                  ("cifar100", "val", "train, test")])
def test_unknown_name_or_split_lists_what_is_allowed(name, split, allowed, tmp_path):
    with pytest.raises(ValueError, match=allowed):
        data.load_dataset(name, split, root=tmp_path)
    assert data.dataset_names() == ("cifar100", "cifar10", "fmnist")


# --- ImageSet --------------------------------------------------------------------------------

def _tiny_set() -> data.ImageSet:
    images = torch.arange(5, dtype=torch.uint8).reshape(5, 1, 1, 1).expand(5, 3, 4, 4).contiguous()
    return data.ImageSet(images, torch.tensor([0, 1, 1, 0, 2]), ("a", "b", "c"), "tiny")


def test_image_set_batch_and_subset(device):
    images = _tiny_set()
    x, y = images.batch([4, 0], device=device)
    assert x.device.type == device.type and x.shape == (2, 3, 4, 4)
    assert torch.allclose(x[:, 0, 0, 0].cpu(), torch.tensor([4, 0]) / 255.0) and y.tolist() == [2, 0]
    subset = images.subset([1, 2])
    assert len(subset) == 2 and subset.labels.tolist() == [1, 1] and subset.classes == images.classes


@pytest.mark.parametrize("indices", [[5], [-1], []])
def test_image_set_rejects_bad_indices(indices):
    with pytest.raises(ValueError, match="0–4"):
        _tiny_set().batch(indices)


def test_image_set_validates_its_fields():
    with pytest.raises(ValueError, match="uint8"):
        data.ImageSet(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), ("a",), "x")
    with pytest.raises(ValueError, match="0–0"):
        data.ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ("a",), "x")


# --- bundled samples -------------------------------------------------------------------------

def test_samples_load_with_valid_cifar100_labels():
    samples = data.load_samples()
    folder = asset_path("samples")
    names = json.loads((folder / "labels.json").read_text())
    assert 6 <= len(samples) <= 8 and samples.images.shape[1:] == (3, 32, 32)
    assert samples.classes == data.CIFAR100_CLASSES
    files = sorted(folder.glob("*.png"))
    assert [samples.classes[i] for i in samples.labels] == [names[f.stem] for f in files]
    assert samples.labels.tolist().count(data.CIFAR100_CLASSES.index("rocket")) == 1
    attribution = (folder / "ATTRIBUTION.md").read_text()
    for f in files:
        assert f.name in attribution
        assert Image.open(folder / "preview" / f.name).size == (128, 128)
    assert float(samples.images.float().std()) > 20  # real photos, not blank squares


# --- the attack set, and its fallback --------------------------------------------------------

def test_attack_images_are_the_first_test_images(data_dir):
    images = data.attack_images(3, root=data_dir)
    test = data.load_dataset("cifar100", "test", root=data_dir)
    assert images.name == "cifar100" and torch.equal(images.images, test.images[:3])


def test_attack_images_fall_back_to_the_samples_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="no cifar100 test data found.*bundled sample photos"):
        images = data.attack_images(3, root=tmp_path)
    assert images.name == "samples" and len(images) == 3
    with pytest.raises(data.DataNotFoundError):
        data.attack_images(3, root=tmp_path, fallback=False)
