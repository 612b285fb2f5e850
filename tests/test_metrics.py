"""Tests for ats.metrics: PSNR, SSIM, MSE, feature MSE, pairing of batch reconstructions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from ats.metrics import feature_mse, image_scores, mse, pair_reconstructions, psnr, ssim
from ats.models import build_model


@pytest.mark.parametrize(("offset", "expected_db"), [(0.1, 20.0), (0.01, 40.0), (0.5, 10 * math.log10(4))])
def test_psnr_known_values(offset, expected_db, device):
    a = torch.full((2, 3, 8, 8), 0.25, device=device)
    scores = psnr(a + offset, a)  # MSE = offset²
    assert scores.shape == (2,)
    assert torch.allclose(scores.cpu(), torch.tensor(expected_db), atol=1e-3)
    assert torch.allclose(mse(a + offset, a).cpu(), torch.tensor(offset ** 2), rtol=1e-4)


def test_psnr_peak_and_identical_images():
    a = torch.rand(3, 3, 8, 8)
    assert torch.equal(psnr(a, a), torch.full((3,), 100.0))  # MSE clamped at 1e-10
    assert psnr(a * 255, (a + 0.1) * 255, peak=255.0).sub(20.0).abs().max() < 1e-3


def test_psnr_is_per_image():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0] += 0.1
    b[1] += 0.01
    assert torch.allclose(psnr(b, a), torch.tensor([20.0, 40.0]), atol=1e-3)


def test_ssim_identical_is_one_and_falls_with_noise(image_batch):
    x = image_batch[0][:4]
    generator = torch.Generator().manual_seed(0)
    assert torch.allclose(ssim(x, x), torch.ones(4), atol=1e-6)
    previous = torch.ones(4)
    for sigma in (0.02, 0.1, 0.3):
        noisy = (x + sigma * torch.randn(x.shape, generator=generator)).clamp(0, 1)
        score = ssim(noisy, x)
        assert score.shape == (4,)
        assert (score < previous).all()
        previous = score
    assert (previous < 0.5).all()


def test_ssim_agrees_with_scikit_image(image_batch):
    x = image_batch[0][:2]
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    ours = ssim(noisy, x)
    for i in range(2):
        _, local = structural_similarity(noisy[i].numpy(), x[i].numpy(), channel_axis=0, data_range=1.0,
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True)
        # ours averages the SSIM map over the whole image; scikit-image's score drops a 5-pixel border
        assert ours[i].item() == pytest.approx(local.mean(), abs=5e-3)


def test_nan_input_scores_nan_without_crashing():
    a = torch.rand(2, 3, 16, 16)
    b = a.clone()
    b[1] = float("nan")
    for score in (psnr(b, a), ssim(b, a), mse(b, a)):
        assert torch.isfinite(score[0]) and torch.isnan(score[1])
    scores = image_scores(b, a, a)
    assert all(torch.isnan(v[1]) for v in scores.values())


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\) and \(3, 3, 8, 8\)"):
        psnr(torch.rand(2, 3, 8, 8), torch.rand(3, 3, 8, 8))


def test_pairing_recovers_a_shuffled_permutation(image_batch):
    x = image_batch[0][:8]
    permutation = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    noisy = (x[permutation] + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    order = pair_reconstructions(noisy, x)
    assert torch.equal(permutation[order], torch.arange(8))
    assert (psnr(noisy[order], x) > 20).all()


def test_pairing_is_optimal_not_greedy():
    # one-pixel images; costs o0-r0 0.09, o0-r1 0.16, o1-r0 0.49, o1-r1 1.96. Greedy takes o0-r0
    # first (total 2.05); the optimum crosses over (0.16 + 0.49 = 0.65).
    originals = torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1)
    recon = torch.tensor([0.3, -0.4]).reshape(2, 1, 1, 1)
    assert pair_reconstructions(recon, originals).tolist() == [1, 0]


def test_pairing_puts_nan_reconstructions_somewhere():
    x = torch.rand(3, 3, 4, 4)
    recon = x[[2, 0, 1]].clone()
    recon[0] = float("nan")
    order = pair_reconstructions(recon, x)
    assert sorted(order.tolist()) == [0, 1, 2]
    assert order[0] == 1 and order[1] == 2  # the two good ones are still matched


def test_feature_mse(image_batch):
    model = build_model("lenet", 10, seed=0).eval()
    x = image_batch[0][:3]
    assert torch.equal(feature_mse(model, x, x), torch.zeros(3))
    other = feature_mse(model, x, x.flip(-1))
    assert other.shape == (3,) and (other > 0).all()
    with torch.no_grad():
        expected = (model(x) - model(x.flip(-1))).pow(2).mean(1)
    assert torch.allclose(other, expected)


def test_image_scores_against_original_and_transformed():
    original = torch.full((2, 3, 16, 16), 0.5)
    transformed = original + 0.1
    recon = transformed.clone()
    scores = image_scores(recon, original, transformed)
    assert set(scores) >= {"psnr_x", "psnr_tx", "ssim_x", "ssim_tx", "mse_x"}
    assert torch.allclose(scores["psnr_x"], torch.tensor(20.0), atol=1e-3)
    assert torch.equal(scores["psnr_tx"], torch.full((2,), 100.0))
    assert torch.allclose(scores["ssim_tx"], torch.ones(2), atol=1e-6)
    assert np.allclose(scores["mse_x"].numpy(), 0.01, rtol=1e-4)


def test_lpips_without_its_backbone_is_empty_and_says_so_once(tmp_path, monkeypatch):
    import warnings

    from ats import metrics

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache: never downloads
    monkeypatch.setitem(metrics._lpips, "net", None)
    monkeypatch.setitem(metrics._lpips, "noted", False)
    x = torch.rand(3, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = metrics.lpips(x, x), metrics.lpips(x, x.flip(-1))
    assert first.shape == (3,) and torch.isnan(first).all() and torch.isnan(second).all()
    assert len(caught) == 1 and "AlexNet" in str(caught[0].message) and str(tmp_path) in str(caught[0].message)


@pytest.mark.skipif(not __import__("ats.metrics").metrics.lpips_weights().is_file(),
                    reason="torchvision's AlexNet weights are not in the torch hub cache (never downloaded in tests)")
def test_lpips_with_its_backbone_scores_identical_images_zero():
    from ats import metrics

    x = torch.rand(2, 3, 32, 32)
    scores = metrics.lpips(x, x)
    assert torch.allclose(scores, torch.zeros(2), atol=1e-6) and bool((metrics.lpips(x, torch.rand_like(x)) > 0.05).all())
