"""Tests for ats.policy: parsing, hybrids drawn per image, disjointness, the client pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ats.ops import KERNELS, random_crop_flip
from ats.pool import POOL
from ats.policy import Hybrid, Policy, parse_policy, random_policy, transform
from ats.runtime import make_generator


@pytest.mark.parametrize("text", ["3-1-7", "43-18-18", "3-1-7+43-18-18", "7-4-15+21-13-3", "none", "0",
                                  "49-49-49-49", "3-1-7+none", "19-15-45+2-43-21+14-48-48"])
def test_parse_format_round_trip(text):
    policy = parse_policy(text)
    assert str(policy) == text
    assert parse_policy(str(policy)) == policy


def test_parse_builds_the_right_objects():
    assert parse_policy("3-1-7") == Policy((3, 1, 7)) == Policy.of([3, 1, 7])
    assert parse_policy("3-1-7+43-18-18") == Hybrid((Policy((3, 1, 7)), Policy((43, 18, 18))))
    assert parse_policy("3-1-7+43-18-18") == Hybrid.of([[3, 1, 7], [43, 18, 18]])
    assert parse_policy("none") == parse_policy(" None ") == Policy(()) == Policy.none()
    assert parse_policy(" 3 - 1 -7 ") == Policy((3, 1, 7))  # whitespace is tolerated around parts
    assert parse_policy(" 3-1-7 + 43 -18-18 ") == parse_policy("3-1-7+43-18-18")
    assert Policy.of(np.array([3, 1, 7])) == Policy((3, 1, 7))
    assert str(Policy(())) == "none"


@pytest.mark.parametrize("text,expected", [
    ("50", ["policy index 50 is out of range 0–49"]),
    ("3-1-50+4", ["policy index 50 is out of range 0–49"]),
    ("3--1", ["empty index", "position 2"]),
    ("-3", ["empty index", "position 1", "negative"]),
    ("3-", ["empty index", "position 2"]),
    ("", ["empty", "'3-1-7'"]),
    ("   ", ["empty"]),
    ("3−1−7", ["U+2212", "Unicode minus", "'3-1-7'"]),
    ("3-a-1", ["'a' is not an index", "0–49"]),
    ("3-1+", ["empty policy", "part 2 of 2"]),
    ("3-1.5", ["'1.5' is not an index"]),
])
def test_malformed_strings_say_what_is_wrong(text, expected):
    with pytest.raises(ValueError) as error:
        parse_policy(text)
    for fragment in expected:
        assert fragment in str(error.value)


@pytest.mark.parametrize("indices,expected", [([50], "out of range 0–49"), ([3, -1], "-1 is out of range"),
                                              ([3.0], "not a whole number"), (["3"], "not a whole number")])
def test_policy_of_validates_indices(indices, expected):
    with pytest.raises(ValueError, match=expected):
        Policy.of(indices)


def test_hybrid_assigns_one_policy_per_image(image_batch):
    x = image_batch[0].repeat(4, 1, 1, 1)  # (64, 3, 32, 32)
    hybrid = parse_policy("0+3")  # invert | translateX ±14.5 px
    out = hybrid.apply(x, make_generator(7))
    inverted = (out == 1 - x).flatten(1).all(1)
    shifted = torch.zeros(64, dtype=torch.bool)
    for sign in (1.0, -1.0):
        candidate = KERNELS["translateX"](x, POOL[3].magnitude, torch.full((64,), sign))
        shifted |= (out == candidate).flatten(1).all(1)
    assert bool((inverted ^ shifted).all())  # each image is the output of exactly one policy
    assert 16 <= int(inverted.sum()) <= 48  # both appear, drawn near-uniformly
    assert torch.equal(out, hybrid.apply(x, make_generator(7)))
    assert not torch.equal(out, hybrid.apply(x, make_generator(8)))


def test_policy_applies_ops_in_order(image_batch):
    x = image_batch[0]
    out = Policy((0, 11)).apply(x, make_generator(0))  # invert, then posterize 6 bits
    expected = KERNELS["posterize"](1 - x, 6.0, torch.ones(16))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(out, 1 - KERNELS["posterize"](x, 6.0, torch.ones(16)), atol=1e-3)


def test_disjointness():
    assert parse_policy("3-1-7+43-18-18").is_disjoint()
    assert parse_policy("43-18-18+3").is_disjoint()  # repeats inside one policy are fine
    assert not parse_policy("3-1-7+21-1").is_disjoint()  # contrast ±0.33 in both
    assert not parse_policy("43-18-18+24-1").is_disjoint()  # 43 and 24 are the same translateY
    assert not parse_policy("9+16").is_disjoint()  # equalize ignores its magnitude
    assert parse_policy("19-15-45+2-43-21").is_disjoint()


def test_describe_and_ops():
    assert parse_policy("3-1-7").describe() == "translateX ±14.5 px → contrast ±0.33 → translateY ±3.2 px"
    assert parse_policy("3-1-7+43-18-18").describe() == (
        "translateX ±14.5 px → contrast ±0.33 → translateY ±3.2 px | "
        "translateY ±4.8 px → contrast ±0.39 → contrast ±0.39")
    assert Policy(()).describe() == "no transformation"
    assert [op.name for op in parse_policy("3-1-7").ops] == ["translateX", "contrast", "translateY"]
    assert [op.index for op in parse_policy("3-1+7").ops] == [3, 1, 7]


def test_random_policy_is_seeded_and_in_range():
    draws = [random_policy(make_generator(seed)) for seed in range(60)]
    assert draws == [random_policy(make_generator(seed)) for seed in range(60)]
    assert {len(p.indices) for p in draws} == {1, 2, 3}
    assert all(0 <= i < 50 for p in draws for i in p.indices)
    assert len({p for p in draws}) > 50
    assert max(len(random_policy(make_generator(s), max_ops=6).indices) for s in range(60)) > 3
    with pytest.raises(ValueError, match="max_ops=0"):
        random_policy(make_generator(0), max_ops=0)


def test_transform_is_crop_flip_then_policy(image_batch):
    x = image_batch[0]
    assert torch.equal(transform(x, Policy.none(), make_generator(0), crop_flip=False), x)
    with pytest.raises(ValueError, match=r"Policy\.none\(\)"):
        transform(x, None, make_generator(0))  # no policy has one spelling
    assert torch.equal(transform(x, "0", make_generator(0), crop_flip=False), 1 - x)
    expected = 1 - random_crop_flip(x, make_generator(4))
    assert torch.equal(transform(x, Policy((0,)), make_generator(4)), expected)
    hybrid = parse_policy("3-1-7+43-18-18")
    a = transform(x, "3-1-7+43-18-18", make_generator(2))
    assert torch.equal(a, hybrid.transform(x, make_generator(2), crop_flip=True))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, hybrid.transform(x, make_generator(3)))
    assert torch.equal(Policy(()).transform(x, make_generator(0), crop_flip=False), x)


def test_semantics_are_checked_and_honoured(image_batch):
    x = image_batch[0]
    with pytest.raises(ValueError, match="'AutoAugment' is not one of"):
        Policy(()).apply(x, make_generator(0), semantics="AutoAugment")
    assert torch.equal(Policy((29, 29)).apply(x, make_generator(0), semantics="autoaugment"), x)


def test_policies_run_on_every_device(device, image_batch):
    x = image_batch[0].to(device)
    out = parse_policy("3-1-7+43-18-18").transform(x, make_generator(0, device))
    assert out.device.type == device.type and out.shape == x.shape
    assert torch.equal(out, parse_policy("3-1-7+43-18-18").transform(x, make_generator(0, device)))
