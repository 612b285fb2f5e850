"""Tests for ats.scores: S_pri against the sequential loop, S_acc against numpy, configs and inputs."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ats import data, indices, scores
from ats.models import build_model
from ats.policy import Policy
from ats.reference import privacy_score_sequential
from ats.runtime import make_generator

SMOKE = scores.ScoreConfig.smoke()
FAST = replace(SMOKE, points=6)  # a shorter path where the number of points does not matter
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # renamed in NumPy 2.0


@pytest.fixture(scope="module")
def test_set(data_dir) -> data.ImageSet:
    return data.load_dataset("cifar100", "test", root=data_dir)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model("resnet20", 100, seed=0).eval()


@pytest.fixture(scope="module")
def privacy_batch(test_set) -> tuple[torch.Tensor, torch.Tensor]:
    return test_set.batch(indices.PRIVACY_SET[:2])


def test_batched_privacy_equals_sequential_in_float64(model, privacy_batch):
    x, y = privacy_batch
    double = build_model("resnet20", 100, seed=0).double().eval()
    config = replace(SMOKE, points=11, chunk=11)  # one image per vmap call: the chunking is exercised
    policy = "3-1-7+43-18-18"
    batched = scores.privacy_score(double, policy, x.double(), y, generator=make_generator(5), config=config)
    sequential = privacy_score_sequential(double, policy, x.double(), y, generator=make_generator(5), config=config)
    assert batched.curves.dtype == torch.float64 and batched.curves.shape == (2, 11)
    assert torch.allclose(batched.curves, sequential.curves, rtol=0, atol=1e-12)
    assert torch.allclose(batched.per_image, sequential.per_image, rtol=0, atol=1e-12)
    assert abs(batched.value - sequential.value) < 1e-12
    # float32 against float64 on the same inputs: measured ≈1e-7 on an untrained ResNet20
    single = scores.privacy_score(model, policy, x, y, generator=make_generator(5), config=config)
    assert abs(single.value - batched.value) < 1e-4


def test_curves_shape_endpoint_and_range(model, test_set):
    x, y = test_set.batch(indices.PRIVACY_SET[:SMOKE.privacy_images])
    score = scores.privacy_score(model, "none", x, y, generator=make_generator(0), config=SMOKE)
    assert score.curves.shape == (4, SMOKE.points) and score.per_image.shape == (4,)
    assert torch.equal(score.curves[:, -1], torch.ones(4))
    assert score.curve.shape == (SMOKE.points,)
    assert 0.0 <= score.value <= 1.0 and bool(((score.per_image >= 0) & (score.per_image <= 1)).all())
    assert score.curves[:, 0].max() < 1.0  # the noise start is not the image
    assert torch.allclose(score.per_image, torch.from_numpy(_trapezoid(score.curves.numpy(), dx=1 / 20, axis=1)))
    assert score.value == pytest.approx(float(score.per_image.mean()))
    assert score.policy == "none" and torch.equal(score.labels, y)


def test_seed_reproducibility_and_common_random_numbers(model, privacy_batch):
    x, y = privacy_batch
    first = scores.privacy_score(model, "3-1-7", x, y, generator=make_generator(1), config=FAST)
    again = scores.privacy_score(model, "3-1-7", x, y, generator=make_generator(1), config=FAST)
    other = scores.privacy_score(model, "3-1-7", x, y, generator=make_generator(2), config=FAST)
    assert torch.equal(first.per_image, again.per_image)
    assert not torch.equal(first.per_image, other.per_image)
    plain_images, plain_starts = scores.privacy_inputs(Policy.none(), x, make_generator(1))
    policy_images, policy_starts = scores.privacy_inputs("3-1-7", x, make_generator(1))
    assert torch.equal(plain_starts, policy_starts)  # same noise for every policy
    assert not torch.equal(plain_images, policy_images)
    assert torch.equal(scores.privacy_inputs(Policy.none(), x, make_generator(1))[0], plain_images)


def test_a_policy_changes_the_score(model, privacy_batch):
    x, y = privacy_batch
    plain = scores.privacy_score(model, Policy.none(), x, y, generator=make_generator(0), config=FAST)
    policy = scores.privacy_score(model, "3-1-7", x, y, generator=make_generator(0), config=FAST)
    assert plain.policy == "none" and policy.policy == "3-1-7"
    assert abs(plain.value - policy.value) > 1e-4


def test_accuracy_score_equals_numpy_on_the_same_jacobian(test_set):
    model = scores.accuracy_model(SMOKE, seed=0)
    assert not model.training
    windows = [test_set.batch(w) for w in indices.accuracy_windows(2)]
    score = scores.accuracy_score(model, "3-1-7", windows, generator=make_generator(3), config=SMOKE)
    views = scores.accuracy_inputs("3-1-7", windows, make_generator(3))
    expected = []
    for view, (_, labels) in zip(views, windows):
        assert len(view) == len(set(labels.tolist()))  # one image per distinct label
        jacobian = scores.input_jacobian(model, view).numpy().astype(np.float64)  # (N, 3072)
        eigenvalues = np.linalg.eigh(np.corrcoef(jacobian))[0]
        expected.append(-np.sum(np.log(eigenvalues + 1e-5) + 1 / (eigenvalues + 1e-5)))
    assert score.sizes == tuple(len(v) for v in views) and all(50 < n <= 100 for n in score.sizes)
    assert np.allclose(score.per_run.numpy(), expected, rtol=1e-9)
    assert score.value == pytest.approx(np.mean(expected), rel=1e-5)
    assert score.normalized == pytest.approx(np.mean(np.array(expected) / np.array(score.sizes)), rel=1e-5)
    assert score.value <= -min(score.sizes)  # log λ + 1/λ ≥ 1 and Σλ = N
    plain = scores.accuracy_score(model, Policy.none(), windows, generator=make_generator(3), config=SMOKE)
    assert plain.sizes == score.sizes and plain.value != score.value


def test_input_jacobian_rows_are_per_image_gradients_of_normalized_input(privacy_batch):
    model = scores.accuracy_model(SMOKE, seed=0).double()  # float64: no ReLU flips from rounding
    x = privacy_batch[0].double()
    jacobian = scores.input_jacobian(model, x)
    assert jacobian.shape == (2, 3 * 32 * 32)
    rest = torch.nn.Sequential(*list(model.children())[1:])  # the model after its Normalize layer
    for n in range(2):  # one image at a time, differentiating w.r.t. the normalized image directly
        z = model.normalize(x[n:n + 1]).detach().requires_grad_(True)
        (row,) = torch.autograd.grad(rest(z).sum(), z)
        assert torch.allclose(jacobian[n], row.reshape(-1), rtol=1e-9, atol=1e-12)


def test_jacobian_score_extremes():
    hadamard = torch.tensor([[1.0]])
    for _ in range(3):
        hadamard = torch.cat([torch.cat([hadamard, hadamard], 1), torch.cat([hadamard, -hadamard], 1)])
    rows = hadamard[1:]  # (7, 8): zero-mean, orthogonal rows, so the correlation matrix is I
    assert scores.jacobian_score(rows) == pytest.approx(-7 * (np.log(1 + 1e-5) + 1 / (1 + 1e-5)), abs=1e-9)
    same = rows[:1].repeat(3, 1)  # fully correlated: eigenvalues 3, 0, 0
    assert scores.jacobian_score(same) == pytest.approx(
        -(np.log(3 + 1e-5) + 1 / (3 + 1e-5) + 2 * (np.log(1e-5) + 1e5)), rel=1e-6)
    assert np.isnan(scores.jacobian_score(torch.cat([rows, torch.zeros(1, 8)])))  # a dead row: NaN, no crash


def test_per_class_variant_shapes(model, test_set):
    labels = test_set.labels[:1200] % 3  # a 3-class view of real images: quick per-class scores
    small = data.ImageSet(test_set.images[:1200], labels, ("a", "b", "c"), "cifar100-3", "test")
    config = replace(FAST, variant="per-class", per_class=2)
    privacy, accuracy = scores.score_policy("3-1-7", privacy_model=model, accuracy_model=model, data=small,
                                            config=config, seed=0)
    assert privacy.per_image.shape == (6,) and privacy.curves.shape == (6, config.points)
    assert torch.equal(privacy.labels, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert privacy.class_means.shape == (3,)
    assert float(privacy.class_means.mean()) == pytest.approx(privacy.value)
    assert accuracy.per_run.shape == (2,) and accuracy.sizes == (3, 3)


def test_score_policy_cvpr_images_and_seed(model, test_set):
    first = scores.score_policy(Policy.none(), privacy_model=model, accuracy_model=model, data=test_set,
                                config=FAST, seed=4)
    again = scores.score_policy(Policy.none(), privacy_model=model, accuracy_model=model, data=test_set,
                                config=FAST, seed=4)
    privacy, accuracy = first
    assert torch.equal(privacy.labels, test_set.labels[list(indices.PRIVACY_SET[:4])])
    assert torch.equal(privacy.per_image, again[0].per_image) and accuracy.value == again[1].value
    assert accuracy.per_run.shape == (FAST.accuracy_runs,)


def test_configs_presets_and_definition():
    laptop, paper = scores.ScoreConfig.laptop(), scores.ScoreConfig.paper()
    assert laptop == scores.ScoreConfig() and paper.arch == "resnet20-4" and SMOKE.privacy_images == 4
    assert replace(laptop, chunk=16, name="x").definition() == laptop.definition()
    keys = {laptop.definition(), paper.definition(), SMOKE.definition(), replace(laptop, points=11).definition(),
            replace(laptop, variant="per-class").definition(), replace(laptop, semantics="autoaugment").definition()}
    assert len(keys) == 6
    assert scores.default_score_checkpoint().name == "tiny-cifar100-resnet20.pt"
    assert scores.default_score_checkpoint().parent.name == "models"
    assert scores.ACCURACY_THRESHOLD == -85.0


def test_accuracy_model_is_seeded():
    a, b, c = (scores.accuracy_model(SMOKE, seed) for seed in (0, 0, 1))
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)


@pytest.mark.parametrize("change, message", [
    (dict(variant="head"), "variant"), (dict(points=1), "points"), (dict(privacy_images=101), "privacy_images"),
    (dict(chunk=0), "chunk"), (dict(loss="mse"), "loss"), (dict(semantics="pil"), "semantics"),
])
def test_bad_config_raises(change, message):
    with pytest.raises(ValueError, match=message):
        replace(SMOKE, **change)


def test_bad_inputs_raise(model, privacy_batch):
    x, y = privacy_batch
    g = make_generator(0)
    with pytest.raises(ValueError, match="no images"):
        scores.privacy_score(model, Policy.none(), x[:0], y[:0], generator=g, config=SMOKE)
    with pytest.raises(ValueError, match="labels"):
        scores.privacy_score(model, Policy.none(), x, y[:1], generator=g, config=SMOKE)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        scores.privacy_score(model, Policy.none(), x * 2, y, generator=g, config=SMOKE)
    with pytest.raises(ValueError, match="50"):
        scores.privacy_score(model, "50", x, y, generator=g, config=SMOKE)
    with pytest.raises(ValueError, match="no accuracy windows"):
        scores.accuracy_score(model, Policy.none(), [], generator=g, config=SMOKE)
    with pytest.raises(ValueError, match="no images"):
        scores.accuracy_score(model, Policy.none(), [(x[:0], y[:0])], generator=g, config=SMOKE)


def test_model_mode_is_restored(privacy_batch):
    x, y = privacy_batch
    model = build_model("resnet20", 100, seed=0).train()
    before = model.bn1.running_mean.clone()
    scores.privacy_score(model, Policy.none(), x[:1], y[:1], generator=make_generator(0), config=SMOKE)
    assert model.training and torch.equal(model.bn1.running_mean, before)
