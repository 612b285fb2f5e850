"""CUDA against the CPU: every attack preset, the scores, a training step, and the precision options.

Marked `gpu` and skipped without CUDA. `ATS_GPU_TEST_DEVICE=cpu` runs them with the CPU standing
in for the GPU (both sides on the CPU), which checks the tests themselves on a machine without
one. Tolerances: float32 on both sides (TF32 off, `ats.runtime.precision("float32")`); a single
evaluation agrees to 1e-4 relative, a short attack to 0.5 dB (signed Adam turns rounding noise
into ±lr steps, L-BFGS amplifies it), a score to 1e-4.
"""
from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from ats import attacks, scores
from ats.attacks import AttackConfig
from ats.federated import client_update, loss_gradients
from ats.metrics import psnr
from ats.models import build_model
from ats.objective import Problem
from ats.runtime import make_generator, precision


def _gpu() -> torch.device | None:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("ATS_GPU_TEST_DEVICE") == "cpu":
        return torch.device("cpu")
    return None


GPU = _gpu()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPU is None, reason="needs CUDA (ATS_GPU_TEST_DEVICE=cpu: dry run)")]


def _update(model, x, y, preset: str):
    policy = "3-1-7" if preset == "aware" else "none"
    return client_update(model, x, y, policy, crop_flip=preset == "aware", per_example=True,
                         generator=make_generator(0)).shared


@pytest.mark.parametrize("preset", sorted(attacks.PRESETS))
def test_every_attack_preset_agrees_with_the_cpu(preset, image_batch):
    """One evaluation of every candidate's cost and gradient agrees to 1e-4; 5 iterations of the
    preset end within 0.5 dB of the CPU's, with the same status."""
    arch = "lenet" if preset in ("dlg", "idlg") else "resnet20"
    cpu_model = build_model(arch, 100, seed=0).eval()
    gpu_model = build_model(arch, 100, seed=0).to(GPU).eval()
    x, y = image_batch[0][:2], image_batch[1][:2]
    update = _update(cpu_model, x, y, preset)
    config = replace(AttackConfig.preset(preset), iterations=5, restarts=2)
    known = {"policy": "3-1-7", "crop_flip": True} if preset == "aware" else {}
    joint = False
    with precision("float32"):
        on_cpu = Problem.build(cpu_model, update, config, joint=joint, **known)
        on_gpu = Problem.build(gpu_model, update.to(GPU), config, joint=joint, **known)
        z = on_cpu.initial(make_generator(1), None)
        c_cpu, g_cpu = on_cpu.costs_and_grads(z)
        c_gpu, g_gpu = on_gpu.costs_and_grads(z.detach().to(GPU))
        assert torch.allclose(c_gpu.cpu(), c_cpu, rtol=1e-4, atol=1e-6)
        assert torch.allclose(g_gpu.cpu(), g_cpu, rtol=1e-3, atol=1e-4 * float(g_cpu.abs().max()))
        init = z.detach()[:, : on_cpu.image_size].reshape(-1, 3, 32, 32)
        a = attacks.reconstruct(cpu_model, update, config, init=init, generator=make_generator(2), **known)
        b = attacks.reconstruct(gpu_model, update.to(GPU), config, init=init.to(GPU),  # DLG's label logits:
                                generator=make_generator(2, GPU), **known)  # drawn on the device
    assert b.images.device.type == "cpu" and b.status == a.status
    if config.labels != "joint" or GPU.type == "cpu":  # DLG's label logits come from the device's RNG
        assert (psnr(b.images, x) - psnr(a.images, x)).abs().max() < 0.5


def test_scores_agree_with_the_cpu(image_batch):
    """S_pri (the similarity path, batched) and S_acc (the input Jacobian) on CUDA == on the CPU."""
    x, y = image_batch[0][:4], image_batch[1][:4]
    config = scores.ScoreConfig(points=5)
    results = []
    for device in (torch.device("cpu"), GPU):
        model = build_model("resnet20", 100, seed=0).to(device).eval()
        with precision("float32"):
            pri = scores.privacy_score(model, "3-1-7", x.to(device), y.to(device),
                                       generator=make_generator(0, device), config=config)
            acc = scores.jacobian_score(scores.input_jacobian(model, x.to(device)))
        results.append((pri, acc))
    (pri_a, acc_a), (pri_b, acc_b) = results
    if GPU.type == "cuda":  # the policy's random draws come from the device's own generator
        assert abs(pri_b.value - pri_a.value) < 0.05
    else:
        assert pri_b.value == pytest.approx(pri_a.value, abs=1e-4)
    assert acc_b == pytest.approx(acc_a, rel=1e-3)


def test_a_training_step_agrees_with_the_cpu(image_batch):
    """One SGD step (the training recipe's optimizer) from the same weights on the same batch."""
    x, y = image_batch[0][:8], image_batch[1][:8]
    after = []
    for device in (torch.device("cpu"), GPU):
        model = build_model("resnet20", 100, seed=0).to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        with precision("float32"):
            gradients = loss_gradients(model, x.to(device), y.to(device))
        for p, g in zip(model.parameters(), gradients):
            p.grad = g.detach()
        optimizer.step()
        after.append(torch.cat([p.detach().cpu().flatten() for p in model.parameters()]))
    assert torch.allclose(after[0], after[1], atol=1e-5)


def test_training_runs_on_the_gpu(data_dir, tmp_path):
    """`ats.train.train` for one epoch on a slice of the train split, on the GPU: finite loss."""
    from ats import data, train
    from ats.recipes import TrainRecipe

    recipe = replace(TrainRecipe.laptop(), epochs=1, data_fraction=0.01, eval_images=100, eval_every=0)
    result = train.train(recipe, data=data.load_dataset("cifar100", "train"),
                         test=data.load_dataset("cifar100", "test"), device=GPU, out=tmp_path / "m.pt")
    assert torch.isfinite(torch.tensor(result.epoch_losses)).all()


def test_tf32_is_an_option_and_reports_its_psnr_cost(image_batch, record_property):
    """TF32 is an option, off by default: the attack runs under it, and its PSNR against float32's
    on the same start is recorded (printed by `bench/gpu_check.sh`)."""
    mode = "tf32"
    model = build_model("resnet20", 100, seed=0).to(GPU).eval()
    x, y = image_batch[0][:2], image_batch[1][:2]
    update = client_update(model, x.to(GPU), y.to(GPU), per_example=True).shared
    config = replace(AttackConfig.ig(), iterations=50)
    init = torch.randn(2, 3, 32, 32, generator=make_generator(1)).to(GPU)
    exact = attacks.reconstruct(model, update, config, init=init)
    fast = attacks.reconstruct(model, update, replace(config, precision=mode), init=init)
    delta = float((psnr(fast.images, x) - psnr(exact.images, x)).mean())
    record_property(f"psnr_delta_{mode}", delta)
    print(f"\n{mode}: mean PSNR {float(psnr(fast.images, x).mean()):.2f} dB vs float32 "
          f"{float(psnr(exact.images, x).mean()):.2f} dB ({delta:+.2f})")
    assert fast.status == ("ok", "ok") and abs(delta) < 3.0
