"""Tests for ats.baselines: trivial baselines and the alignment-aware PSNR, on constructed images."""
from __future__ import annotations

import math
import time

import pytest
import torch

from ats.baselines import BASELINES, aligned_scores, alignment_for, baseline_images, baseline_scores
from ats.metrics import psnr
from ats.ops import rotate as rotate_op


def _images(b: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random images (B, 3, size, size) in [0, 1]: noise blurred, so shifts matter."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(b, 3, size + 4, size + 4, generator=g)
    return torch.nn.functional.avg_pool2d(noise, 5, stride=1)


def _shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """x moved right by dx and down by dy, black where nothing moved in: out[i + dy, j + dx] = x[i, j]."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(0, dy): h + min(0, dy), max(0, dx): w + min(0, dx)] = \
        x[..., max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)]
    return out


def test_grey_baseline_matches_hand_computed_psnr():
    x = torch.zeros(1, 3, 16, 16)
    x[..., :8] = 1.0  # half white, half black: every pixel is 0.5 off grey, MSE 0.25
    scores = baseline_scores(x, x)
    assert scores["baseline_grey"].item() == pytest.approx(10 * math.log10(1 / 0.25), abs=1e-5)
    images = baseline_images(x, x)
    assert set(images) == set(BASELINES)
    assert torch.all(images["grey"] == 0.5)
    # the mean colour of half white / half black is 0.5 too
    assert scores["baseline_mean_colour"].item() == pytest.approx(10 * math.log10(4), abs=1e-5)


def test_mean_colour_of_a_constant_image_is_perfect():
    x = torch.tensor([0.2, 0.6, 0.9]).view(1, 3, 1, 1).expand(2, 3, 12, 12).clone()
    scores = baseline_scores(x, torch.zeros_like(x))
    assert torch.allclose(scores["baseline_mean_colour"], torch.full((2,), 100.0))
    assert scores["baseline_mean_colour"].shape == (2,) and scores["baseline_tx"].device.type == "cpu"
    expected = -10 * math.log10((0.2**2 + 0.6**2 + 0.9**2) / 3)  # T(x) all black against x
    assert scores["baseline_tx"][0].item() == pytest.approx(expected, abs=1e-4)


def test_mean_colour_is_per_image_and_per_channel():
    x = _images(3)
    means = baseline_images(x, x)["mean_colour"]
    assert torch.allclose(means[:, :, 5, 7], x.mean(dim=(2, 3)))
    assert torch.allclose(means[1, 2], means[1, 2, 0, 0].expand(32, 32))


def test_exact_shift_scores_as_x_and_reports_the_shift():
    x = _images()
    moved = _shift(x, 3, -2)
    assert psnr(moved, x).max() < 25  # plain PSNR punishes the shift
    out = aligned_scores(moved, x)
    assert torch.all(out["psnr_x_aligned"] >= 99)
    assert torch.allclose(out["ssim_x_aligned"], torch.ones(4), atol=1e-4)
    assert out["shift"].tolist() == [[3, -2]] * 4
    assert not out["flipped"].any()


def test_flipped_and_shifted_flipped_copies():
    x = _images()
    out = aligned_scores(x.flip(-1), x)
    assert torch.all(out["psnr_x_aligned"] >= 99) and out["flipped"].all()
    assert out["shift"].tolist() == [[0, 0]] * 4
    # the client's pipeline: crop (a shift) then flip; undoing the flip leaves the shift
    out = aligned_scores(_shift(x, -4, 1).flip(-1), x)
    assert torch.all(out["psnr_x_aligned"] >= 99) and out["flipped"].all()
    assert out["shift"].tolist() == [[-4, 1]] * 4
    # without the flip in the search, the flipped copy is not matched
    assert aligned_scores(x.flip(-1), x, flip=False)["psnr_x_aligned"].max() < 40


def test_shift_beyond_max_shift_is_not_found():
    x = _images()
    out = aligned_scores(_shift(x, 3, 0), x, max_shift=2, flip=False)
    assert out["psnr_x_aligned"].max() < 40
    assert torch.all(aligned_scores(x, x, max_shift=0, flip=False)["psnr_x_aligned"] >= 99)


def test_rotation_is_searched_when_asked():
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import rotate

    x = _images()
    turned = rotate(x, -10.0, interpolation=InterpolationMode.BILINEAR)  # undone by +10
    plain = aligned_scores(turned, x)["psnr_x_aligned"]
    out = aligned_scores(turned, x, angles=(10.0, -10.0))
    assert torch.all(out["psnr_x_aligned"] > plain + 3)
    assert out["angle"].tolist() == [10.0] * 4
    # the pool's rotate (counter-clockwise by +m) is undone at -m
    turned = rotate_op(x, 6.667, torch.ones(4))
    out = aligned_scores(turned, x, angles=(6.667, -6.667))
    assert torch.all(out["psnr_x_aligned"] > psnr(turned, x) + 8)
    assert out["angle"].tolist() == pytest.approx([-6.667] * 4)


def test_random_noise_gains_little_from_alignment():
    x = _images(8)
    noise = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    gain = aligned_scores(noise, x)["psnr_x_aligned"] - psnr(noise, x)
    assert torch.all(gain >= -1e-4) and torch.all(gain < 1.5)
    # nor from rotations: resampling must not blur the noise towards the smooth x
    gain = aligned_scores(noise, x, max_shift=8, angles=(5.0, -5.0, 30.0))["psnr_x_aligned"] - psnr(noise, x)
    assert torch.all(gain < 1.5)


def test_nan_reconstruction_scores_nan_without_raising():
    x = _images(3)
    recon = x.clone()
    recon[1, 0, 4, 4] = float("nan")
    out = aligned_scores(recon, x)
    assert math.isnan(out["psnr_x_aligned"][1]) and math.isnan(out["ssim_x_aligned"][1])
    assert out["shift"][1].tolist() == [0, 0] and not out["flipped"][1]
    assert torch.all(out["psnr_x_aligned"][[0, 2]] >= 99)


def test_a_batch_is_fast():
    """32 images of 32×32, 162 alignments: about 0.1 s on one core (best of three, one thread, so
    that a busy machine's thread contention does not decide)."""
    x = _images(32)
    recon = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    aligned_scores(recon, x)  # warm up lazy imports
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            aligned_scores(recon, x)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    assert min(times) < 1.0


@pytest.mark.parametrize("kwargs,match", [
    ({"max_shift": 9}, "max_shift"), ({"max_shift": -1}, "max_shift"), ({"max_shift": 2.0}, "max_shift"),
    ({"max_shift": True}, "max_shift"), ({"flip": 1}, "flip"), ({"angles": (45.0,)}, "angles"),
    ({"angles": (float("nan"),)}, "angles"), ({"angles": 5.0}, "angles"),
])
def test_bad_arguments_raise(kwargs, match):
    x = _images(2)
    with pytest.raises(ValueError, match=match):
        aligned_scores(x, x, **kwargs)


def test_bad_shapes_raise():
    x = _images(2)
    with pytest.raises(ValueError, match="shape"):
        aligned_scores(x[:1], x)
    with pytest.raises(ValueError, match="SSIM"):
        aligned_scores(x[..., :16, :16], x[..., :16, :16], max_shift=6)  # 10 px overlap
    with pytest.raises(ValueError, match="shape"):
        baseline_scores(x, x[:1])


def test_alignment_for_covers_what_the_transform_can_do():
    assert alignment_for("none", False) == {"max_shift": 0, "flip": False, "angles": ()}
    assert alignment_for("none", True) == {"max_shift": 4, "flip": True, "angles": ()}
    # entry 7 is translateY ±3.2 px at 32 px, entry 24 translateY ±4.8 px: 8.05 px capped at 8
    assert alignment_for("7", False)["max_shift"] == 4
    assert alignment_for("7", True)["max_shift"] == 8
    assert alignment_for("7-24", False)["max_shift"] == 8
    # entry 2 is rotate 6.67°, entry 6 shearY 0.067 (3.8°); a hybrid takes the larger reach
    covered = alignment_for("2-6+7", False)
    assert covered["max_shift"] == 4
    assert covered["angles"] == pytest.approx((-6.667, -3.814, 3.814, 6.667), abs=1e-3)
    assert alignment_for("4-13", False) == {"max_shift": 0, "flip": False, "angles": ()}  # photometric only
    x = _images(2)
    aligned_scores(x, x, **alignment_for("2-6+7-24", True))  # its output is valid input
