"""Tests for ats.data: loading layouts, the paper's index sets, image files, bundled samples."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ats import data
from ats.runtime import make_generator


def _png(width: int, height: int, bit_depth: int, color_type: int, raw: bytes | None) -> bytes:
    """A hand-built PNG; `raw` is the unfiltered scanline data (None: header only, no pixels)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(raw)) if raw is not None else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


# --- real CIFAR data -------------------------------------------------------------------------

def test_cifar100_train_parts_concatenate_in_order(data_dir):
    train = data.load_dataset("cifar100", "train", root=data_dir)
    assert len(train) == 50_000 and train.images.shape == (50_000, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [500] * 100
    with np.load(data_dir / "cifar100_train_part1.npz") as npz:
        first_of_part1 = torch.from_numpy(npz["x"][0]).permute(2, 0, 1)
    assert torch.equal(train.images[25_000], first_of_part1)
    means = train.images.numpy().sum(axis=(0, 2, 3), dtype=np.int64) / (50_000 * 32 * 32 * 255)
    assert np.allclose(means, data.STATS["cifar100"][0], atol=1e-3)
    assert data.load_dataset("cifar100", "train", root=data_dir) is train  # cached in-process


def test_cifar100_test_split_and_classes(data_dir, cifar_batch):
    test = data.load_dataset("cifar100", "test", root=data_dir)
    assert len(test) == 10_000 and test.split == "test" and test.name == "cifar100"
    assert torch.bincount(test.labels).tolist() == [100] * 100
    with np.load(data_dir / "cifar100_test.npz") as npz:
        assert tuple(str(c) for c in npz["classes"]) == data.CIFAR100_CLASSES
    x, y = test.batch(range(16))
    assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32)
    assert torch.equal(x, cifar_batch[0]) and torch.equal(y, cifar_batch[1])
    assert "10000 images" in repr(test)


def test_cifar10_test_split_is_close_to_published_stats(data_dir):
    if not (data_dir / "cifar10_test.npz").is_file():
        pytest.skip("no cifar10_test.npz")
    test = data.load_dataset("cifar10", "test", root=data_dir)
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


# --- index sets ------------------------------------------------------------------------------

def test_fixed_index_sets():
    assert data.ATTACK_SET == tuple(range(100))
    assert len(data.PRIVACY_SET) == 100 and data.PRIVACY_SET[:3] == (200, 205, 210)
    assert data.PRIVACY_SET[-1] == 695 and not set(data.PRIVACY_SET) & set(data.ATTACK_SET)
    windows = data.accuracy_windows()
    assert len(windows) == 10 and all(len(w) == 100 for w in windows)
    assert windows[0] == tuple(range(200, 300)) and windows[-1][-1] == 1199
    assert data.accuracy_windows(runs=2, size=3) == ((200, 201, 202), (203, 204, 205))
    with pytest.raises(ValueError, match="runs=0"):
        data.accuracy_windows(runs=0)


def test_dedupe_by_label_keeps_first_of_each_label():
    labels = [7, 3, 7, 1, 3, 9]
    assert data.dedupe_by_label(range(6), labels) == (0, 1, 3, 5)
    assert data.dedupe_by_label([2, 4, 0], torch.tensor(labels)) == (2, 4)
    with pytest.raises(ValueError, match="index 6"):
        data.dedupe_by_label([6], labels)


def test_accuracy_window_dedupe_on_cifar100(data_dir):
    labels = data.load_dataset("cifar100", "test", root=data_dir).labels
    kept = data.dedupe_by_label(data.accuracy_windows()[0], labels)
    kept_labels = labels[list(kept)].tolist()
    assert 50 <= len(kept) <= 75 and len(set(kept_labels)) == len(kept)
    assert set(kept_labels) == set(labels[200:300].tolist())


def test_per_class_indices_takes_first_k_in_dataset_order():
    labels = [1, 0, 1, 2, 0, 1, 2, 0, 2]
    assert data.per_class_indices(labels, 2) == (1, 4, 0, 2, 3, 6)
    assert data.per_class_indices(labels, 1, num_classes=3) == (1, 0, 3)
    with pytest.raises(ValueError, match="k=4"):
        data.per_class_indices(labels, 4)


def test_class_balanced_subset_is_seeded_and_balanced(device):
    labels = torch.arange(10).repeat_interleave(100)[torch.randperm(1000, generator=make_generator(0))]
    subset = data.class_balanced_subset(labels, 0.1, make_generator(1, device))
    assert len(subset) == 100 and list(subset) == sorted(set(subset))
    assert torch.bincount(labels[list(subset)], minlength=10).tolist() == [10] * 10
    assert subset == data.class_balanced_subset(labels, 0.1, make_generator(1, device))
    assert subset != data.class_balanced_subset(labels, 0.1, make_generator(2, device))
    with pytest.raises(ValueError, match="fraction 0"):
        data.class_balanced_subset(labels, 0, make_generator(1))


@pytest.mark.parametrize("text, expected", [("0-4", (0, 1, 2, 3, 4)), ("0,3,7", (0, 3, 7)),
                                            ("0-4,9", (0, 1, 2, 3, 4, 9)), (" 12 ", (12,))])
def test_parse_indices(text, expected):
    assert data.parse_indices(text) == expected


@pytest.mark.parametrize("text, problem", [("", "not a number"), ("a", "not a number"),
                                           ("4-0", "backwards"), ("1,,2", "not a number"),
                                           ("-1", "not a number"), ("0-3,2", "more than once")])
def test_parse_indices_rejects_malformed_input(text, problem):
    with pytest.raises(ValueError, match=problem):
        data.parse_indices(text)


# --- load_image ------------------------------------------------------------------------------

def test_load_image_rgba_composites_over_white():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 5:, 3] = 255  # left half transparent, right half opaque red
    x = data.load_image(_encode(Image.fromarray(rgba, "RGBA")), size=10)
    assert x.shape == (3, 10, 10)
    assert torch.allclose(x[:, 0, 0], torch.ones(3)) and torch.allclose(x[:, 0, -1], torch.tensor([1.0, 0, 0]))


def test_load_image_grayscale_and_palette_become_rgb(tmp_path):
    gray = Image.fromarray(np.full((8, 8), 128, np.uint8), "L")
    x = data.load_image(io.BytesIO(_encode(gray)), size=8)
    assert x.shape == (3, 8, 8) and torch.allclose(x, torch.full((3, 8, 8), 128 / 255))
    path = tmp_path / "palette.gif"
    Image.new("RGB", (8, 8), (0, 0, 255)).convert("P").save(path)
    assert torch.allclose(data.load_image(path, size=8)[:, 3, 3], torch.tensor([0.0, 0, 1]))


def test_load_image_crops_odd_sizes_to_a_centred_square():
    pixels = np.zeros((31, 45, 3), np.uint8)
    pixels[:, 7:38] = 255  # the centred 31×31 square is white, the margins black
    x = data.load_image(_encode(Image.fromarray(pixels)))
    assert x.shape == (3, 32, 32) and float(x.min()) > 0.99


def test_load_image_rescales_16_bit_instead_of_clipping():
    gray16 = Image.fromarray(np.full((6, 6), 32768, np.uint16))
    assert abs(float(data.load_image(_encode(gray16), size=6).mean()) - 0.5) < 0.01
    row = b"\x00" + struct.pack(">HHH", 65535, 0, 32768) * 4  # 16-bit RGB, filter byte 0
    x = data.load_image(_png(4, 4, 16, 2, row * 4), size=4)
    assert torch.allclose(x[:, 1, 1], torch.tensor([1.0, 0.0, 128 / 255]), atol=1 / 255)


def test_load_image_rejects_garbage_empty_and_huge(tmp_path):
    with pytest.raises(ValueError, match="not an image PIL can read"):
        data.load_image(b"definitely not a picture")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        data.load_image(empty)
    with pytest.raises(ValueError, match="40 megapixels"):
        data.load_image(_png(10_000, 10_000, 8, 2, None))  # declares 100 MP, holds nothing
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.truncate(data.MAX_IMAGE_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(ValueError, match="25 MB"):
        data.load_image(big)
    with pytest.raises(ValueError, match="positive"):
        data.load_image(b"x", size=0)


# --- bundled samples -------------------------------------------------------------------------

def test_samples_load_with_valid_cifar100_labels():
    samples = data.load_samples()
    folder = data.ASSETS_DIR / "samples"
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
