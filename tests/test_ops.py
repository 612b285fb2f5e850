"""Tests for ats.ops: the 50-entry ATS pool agrees with the original PIL code, batched and seeded."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from ats.ops import KERNELS, apply_op, random_crop_flip
from ats.pool import MAGNITUDES, POOL, SIGNED, describe, op_spec
from ats.runtime import make_generator

# Ops whose PIL result we reproduce exactly on 8-bit input (lookup tables, whole-pixel moves).
EXACT = {"invert", "posterize", "solarize", "equalize", "translateX", "translateY", "rotate"}
# Blends and bicubic resampling: PIL truncates its float result to uint8, we keep the float.
# Measured over 16 CIFAR-100 test images, both signs, every entry: max |diff| 1.2/255,
# mean |diff| at most 0.49/255 (autocontrast), no pixel off by more than 2/255; over the 16 of the
# stand-in (tests/standin.py, used without ATS_DATA_DIR): 1.18/255 and 0.48/255.
MAX_DIFF, MEAN_DIFF = 1.5, 0.6  # in 0..255 units


def _pil_op(img: Image.Image, name: str, m: float | None, s: int) -> Image.Image:
    """The original `SubPolicy` (DeepVoltaire AutoAugment, cut down by ATS) for one op and sign."""
    w, h = img.size
    if name == "rotate":
        rot = img.convert("RGBA").rotate(m)
        return Image.composite(rot, Image.new("RGBA", rot.size, (128,) * 4), rot).convert(img.mode)
    table = {
        "shearX": lambda: img.transform(img.size, Image.AFFINE, (1, m * s, 0, 0, 1, 0), Image.BICUBIC,
                                        fillcolor=(0, 0, 0)),
        "shearY": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, m * s, 1, 0), Image.BICUBIC,
                                        fillcolor=(0, 0, 0)),
        "translateX": lambda: img.transform(img.size, Image.AFFINE, (1, 0, m * w * s, 0, 1, 0), fillcolor=(0, 0, 0)),
        "translateY": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, m * h * s), fillcolor=(0, 0, 0)),
        "color": lambda: ImageEnhance.Color(img).enhance(1 + m * s),
        "contrast": lambda: ImageEnhance.Contrast(img).enhance(1 + m * s),
        "sharpness": lambda: ImageEnhance.Sharpness(img).enhance(1 + m * s),
        "brightness": lambda: ImageEnhance.Brightness(img).enhance(1 + m * s),
        "posterize": lambda: ImageOps.posterize(img, int(m)),
        "solarize": lambda: ImageOps.solarize(img, m),
        "autocontrast": lambda: ImageOps.autocontrast(img),
        "equalize": lambda: ImageOps.equalize(img),
        "invert": lambda: ImageOps.invert(img),
    }
    return table[name]()


def _compare(x: torch.Tensor, name: str, magnitude: float | None, sign: int) -> np.ndarray:
    """|ours − PIL| in 0..255 units for every pixel of the batch: (B, H, W, 3)."""
    u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
    ref = np.stack([np.asarray(_pil_op(Image.fromarray(img), name, magnitude, sign)) for img in u8])
    signs = torch.full((x.shape[0],), float(sign))
    ours = KERNELS[name](torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255, magnitude, signs)
    return np.abs(ours.permute(0, 2, 3, 1).double().numpy() * 255 - ref.astype(np.float64))


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("index", range(50))
def test_entry_matches_pil(index, sign, image_batch):
    spec = POOL[index]
    diff = _compare(image_batch[0], spec.name, spec.magnitude, sign)
    if spec.name in EXACT:
        assert diff.max() < 1e-3, f"{spec}: max |diff| {diff.max():.3f}/255"
    else:
        assert diff.max() <= MAX_DIFF, f"{spec}: max |diff| {diff.max():.3f}/255"
        assert diff.mean() <= MEAN_DIFF, f"{spec}: mean |diff| {diff.mean():.3f}/255"
        assert (diff > 2).mean() == 0.0


@pytest.mark.parametrize("name,magnitude", [("shearX", 0.1), ("shearX", 0.3), ("rotate", 30.0)])
def test_kernels_outside_the_pool_match_pil(name, magnitude, image_batch):
    for sign in (1, -1):
        diff = _compare(image_batch[0][:8], name, magnitude, sign)
        assert diff.max() <= MAX_DIFF and diff.mean() <= MEAN_DIFF


def test_pool_matches_the_original_table():
    assert len(POOL) == 50 and [s.index for s in POOL] == list(range(50))
    assert set(KERNELS) == set(MAGNITUDES) == {s.name for s in POOL} | {"shearX"}
    assert (POOL[3].name, POOL[3].level) == ("translateX", 9)
    assert POOL[3].magnitude * 32 == pytest.approx(14.50, abs=0.01)
    assert (POOL[1].name, POOL[1].magnitude) == ("contrast", pytest.approx(1 / 3))
    assert (POOL[2].name, POOL[2].magnitude) == ("rotate", pytest.approx(20 / 3))
    assert (POOL[11].name, POOL[11].magnitude) == ("posterize", 6)
    assert (POOL[37].name, POOL[37].magnitude) == ("solarize", pytest.approx(142.22, abs=0.01))
    assert POOL[29].name == "invert" and POOL[29].probability == 0.0
    assert MAGNITUDES["posterize"] == (8, 8, 7, 7, 6, 6, 5, 5, 4, 4)
    assert "rotate" not in SIGNED and POOL[3].signed and not POOL[0].signed
    assert [s.index for s in POOL if s.is_identity] == [28, 39]
    assert len({s.key for s in POOL if not s.is_identity}) + 1 == 28  # 28 distinct effects


@pytest.mark.parametrize("index", [28, 39])
def test_no_op_entries_leave_images_unchanged(index, image_batch):
    x = image_batch[0]
    assert torch.equal(apply_op(x, index, make_generator(0)), x)


def test_same_seed_same_output_and_seeds_differ(image_batch):
    x = image_batch[0].repeat(4, 1, 1, 1)  # (64, 3, 32, 32)
    a = apply_op(x, 3, make_generator(5))
    assert torch.equal(a, apply_op(x, 3, make_generator(5)))
    assert not torch.equal(a, apply_op(x, 3, make_generator(6)))


def test_signs_are_per_image(image_batch):
    x = image_batch[0].repeat(4, 1, 1, 1)  # (64, 3, 32, 32)
    out = apply_op(x, 3, make_generator(1))
    plus = KERNELS["translateX"](x, POOL[3].magnitude, torch.ones(64))
    minus = KERNELS["translateX"](x, POOL[3].magnitude, -torch.ones(64))
    is_plus = (out == plus).flatten(1).all(1)
    is_minus = (out == minus).flatten(1).all(1)
    assert bool((is_plus | is_minus).all()) and bool(is_plus.any()) and bool(is_minus.any())


def test_translate_is_a_whole_pixel_shift_with_black_fill(image_batch):
    x = image_batch[0][:2]
    out = KERNELS["translateX"](x, POOL[3].magnitude, torch.tensor([1.0, -1.0]))
    # PIL samples input column floor(j + 0.5 ± 14.5015): 15 pixels either way.
    assert torch.equal(out[0, :, :, :17], x[0, :, :, 15:]) and out[0, :, :, 17:].eq(0).all()
    assert torch.equal(out[1, :, :, 15:], x[1, :, :, :17]) and out[1, :, :, :15].eq(0).all()


def test_kernels_run_on_every_device(device, image_batch):
    x = image_batch[0]
    signs = torch.tensor([1.0, -1.0]).repeat(8)
    for spec in POOL:
        expected = KERNELS[spec.name](x, spec.magnitude, signs)
        got = KERNELS[spec.name](x.to(device), spec.magnitude, signs.to(device))
        assert got.device.type == device.type
        torch.testing.assert_close(got.cpu(), expected, atol=1e-5, rtol=0)
    out = apply_op(x.to(device), 1, make_generator(0, device))
    assert out.device.type == device.type and out.shape == x.shape


def test_autoaugment_semantics_honour_probability(image_batch):
    x = image_batch[0].repeat(4, 1, 1, 1)  # (64, 3, 32, 32)
    assert torch.equal(apply_op(x, 29, make_generator(0), semantics="autoaugment"), x)  # p = 0
    assert torch.equal(apply_op(x, 29, make_generator(0)), 1 - x)  # "ats": always applied
    out = apply_op(x, 9, make_generator(0), semantics="autoaugment")  # equalize, p = 0.9
    untouched = (out == x).flatten(1).all(1)
    assert 0 < int(untouched.sum()) < 20


def test_bad_arguments_raise_value_error(image_batch):
    x, g = image_batch[0], make_generator(0)
    with pytest.raises(ValueError, match="policy index 50 is out of range 0–49"):
        apply_op(x, 50, g)
    with pytest.raises(ValueError, match="out of range"):
        op_spec(-1)
    with pytest.raises(ValueError, match="'randaugment' is not one of ats, autoaugment"):
        apply_op(x, 3, g, semantics="randaugment")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(3, 32, 32\)"):
        apply_op(x[0], 3, g)
    with pytest.raises(ValueError, match="float"):
        random_crop_flip((x * 255).to(torch.uint8), g)


def test_random_crop_flip_crops_and_flips(image_batch):
    x = image_batch[0].repeat(4, 1, 1, 1)  # (64, 3, 32, 32)
    out = random_crop_flip(x, make_generator(3))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, random_crop_flip(x, make_generator(3)))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))  # (64, 3, 40, 40)
    candidates = [(top, left, flipped) for top in range(9) for left in range(9) for flipped in (False, True)]
    found = []
    for i in range(64):
        for top, left, flipped in candidates:
            crop = padded[i, :, top:top + 32, left:left + 32]
            if torch.equal(out[i], crop.flip(-1) if flipped else crop):
                found.append((top, left, flipped))
                break
        else:
            pytest.fail(f"image {i} is not a pad-4 crop (optionally flipped) of its input")
    assert {f for _, _, f in found} == {False, True}
    assert len({(t, l) for t, l, _ in found}) > 10 and any((t, l) != (4, 4) for t, l, _ in found)


def test_describe_in_words():
    assert describe(3) == "translateX ±14.5 px"
    assert describe(7) == "translateY ±3.2 px"
    assert describe(1) == "contrast ±0.33"
    assert describe(2) == "rotate 6.7°"
    assert describe(11) == "posterize 6 bits"
    assert describe(0) == "invert"
    assert describe(28).endswith("(no-op)") and describe(39).endswith("(no-op)")
    assert describe(3, size=64) == "translateX ±29.0 px"
