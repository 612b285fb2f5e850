"""Tests for ats.models: architectures, normalization, torch.func compatibility, checkpoints."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ats.checkpoints import ModelMeta, checkpoint_hash, load_checkpoint, save_checkpoint
from ats.models import ARCHS, Normalize, build_model, describe_model, last_linear

SMALL = ("resnet20", "convnet", "lenet")
SIDE = {"resnet20": 16, "convnet": 32, "lenet": 32}  # the smallest input each arch accepts, for speed


def _meta(arch: str = "lenet", **overrides) -> ModelMeta:
    fields = dict(arch=arch, dataset="cifar100", num_classes=10, normalization="none")
    fields.update(overrides)
    return ModelMeta(**fields)


@pytest.mark.parametrize("arch", ARCHS + ("resnet20-2",))
def test_every_arch_maps_images_to_logits(arch):
    model = build_model(arch, num_classes=7, seed=0).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert isinstance(next(iter(model.children())), Normalize)
    assert last_linear(model).out_features == 7


def test_resnet20_4_matches_the_paper_size():
    model = build_model("resnet20-4")
    parameters = list(model.parameters())
    assert len(parameters) == 65
    assert 4.2e6 < sum(p.numel() for p in parameters) < 4.4e6
    assert last_linear(model).in_features == 256
    assert "resnet20-4" in describe_model(model) and "65 tensors" in describe_model(model)


def test_convnet_has_eight_convolutions_and_width_64():
    model = build_model("convnet")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8
    assert [c.out_channels for c in convs] == [64, 128, 128, 256, 256, 256, 256, 256]
    assert last_linear(model).in_features == 36 * 64


def test_lenet_init_is_uniform_half_and_raw_pixels():
    model = build_model("lenet", seed=1)
    for p in model.parameters():
        assert p.abs().max() <= 0.5
        assert p.abs().max() > 0.3  # spread over the range, not PyTorch's default small init
    assert torch.equal(model[0].mean, torch.zeros(1, 3, 1, 1)) and torch.equal(model[0].std, torch.ones(1, 3, 1, 1))


@pytest.mark.parametrize(("dataset", "normalization", "mean0"), [
    ("cifar100", None, 0.5071), ("cifar10", None, 0.4914), ("cifar100", "cifar10", 0.4914), ("fmnist", None, 0.1307),
])
def test_normalization_statistics(dataset, normalization, mean0):
    normalize = build_model("resnet20", dataset=dataset, normalization=normalization)[0]
    assert normalize.mean[0, 0, 0, 0].item() == pytest.approx(mean0)
    x = torch.rand(1, 3, 4, 4)
    assert torch.allclose(normalize(x), (x - normalize.mean) / normalize.std)


def test_seed_makes_initialisation_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = build_model("resnet20", seed=3), build_model("resnet20", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    c = build_model("resnet20", seed=4)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(arch="vgg"), "resnet20-4"),
    (dict(arch="resnet20-0"), "resnet20-4"),
    (dict(arch="lenet", dataset="mnist"), "cifar100"),
    (dict(arch="lenet", normalization="imagenet"), "fmnist"),
])
def test_bad_build_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)


@pytest.mark.parametrize("arch", SMALL)
def test_vmap_per_sample_gradients_equal_a_loop(arch, device):
    # float64: in float32, vmap's batched convolutions round differently, which can flip a
    # max-pool's choice between two nearly equal values and change the gradient by ~1 %.
    model = build_model(arch, num_classes=5, seed=0).to(device, torch.float64).eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    x = torch.rand(2, 3, SIDE[arch], SIDE[arch], device=device, dtype=torch.float64)
    y = torch.tensor([0, 3], device=device)

    def loss(params, image, label):
        out = functional_call(model, (params, buffers), (image[None],))
        return nn.functional.cross_entropy(out, label[None])

    batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(2):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for name, p in model.named_parameters():
            assert torch.allclose(batched[name][i], p.grad, atol=1e-10, rtol=1e-7), name


@pytest.mark.parametrize("arch", SMALL)
def test_gradient_of_gradient_wrt_input(arch):
    model = build_model(arch, num_classes=5, seed=0).eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    target = {n: torch.randn_like(p) for n, p in params.items()}
    x = torch.rand(1, 3, SIDE[arch], SIDE[arch], requires_grad=True)

    def matching(image):
        g = grad(lambda p: nn.functional.cross_entropy(functional_call(model, (p, buffers), (image,)),
                                                       torch.tensor([1])))(params)
        return sum(((g[n] - target[n]) ** 2).sum() for n in g)

    (dx,) = torch.autograd.grad(matching(x), x)
    assert dx.shape == x.shape and torch.isfinite(dx).all() and dx.abs().sum() > 0


def test_checkpoint_round_trip_and_hash(tmp_path):
    model = build_model("lenet", 10, seed=0)
    meta = _meta(epochs=3, accuracy=0.25, extra={"note": "test"})
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, meta)
    loaded, loaded_meta = load_checkpoint(path, expect_arch="lenet")
    assert loaded_meta == meta
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["m.pt"]  # no temp file left
    digest = checkpoint_hash(path)
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert checkpoint_hash(path) == digest
    save_checkpoint(path, build_model("lenet", 10, seed=1), meta)
    assert checkpoint_hash(path) != digest


def test_checkpoint_keeps_normalization(tmp_path):
    model = build_model("resnet20", 10, normalization="cifar10", seed=0)
    path = save_checkpoint(tmp_path / "r.pt", model, _meta("resnet20", normalization="cifar10"))
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded[0].mean, model[0].mean)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_corrupt_and_truncated_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="garbage.pt.*not a readable torch file"):
        load_checkpoint(garbage)
    good = save_checkpoint(tmp_path / "good.pt", build_model("lenet", 10), _meta())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.pt.*not a readable torch file"):
        load_checkpoint(truncated)


def test_bare_state_dict_is_explained(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(build_model("lenet", 10).state_dict(), path)
    with pytest.raises(ValueError, match="bare.pt is not an ats checkpoint.*bare state_dict"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_arch(tmp_path):
    path = save_checkpoint(tmp_path / "liar.pt", build_model("lenet", 10), _meta("resnet20"))
    with pytest.raises(ValueError, match="liar.pt.*do not fit a 'resnet20'"):
        load_checkpoint(path)


def test_unexpected_arch(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model("lenet", 10), _meta())
    with pytest.raises(ValueError, match="m.pt holds a 'lenet' model, expected 'convnet'"):
        load_checkpoint(path, expect_arch="convnet")


def test_slicing_a_network_gives_its_layers():
    model = build_model("lenet", 10, seed=0)
    body = model[1:]
    assert isinstance(body, torch.nn.Sequential) and len(body) == len(model) - 1
    assert type(model[0]).__name__ == "Normalize"


def test_convnet_width_variants_are_narrower_convnets():
    wide, narrow = build_model("convnet", seed=0), build_model("convnet-16", seed=0)
    assert narrow.arch == "convnet-16" and wide.arch == "convnet"
    assert narrow.conv0.out_channels == 16 and wide.conv0.out_channels == 64
    assert narrow(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    for bad in ("convnet-0", "convnet-x", "convnet16"):
        with pytest.raises(ValueError, match="convnet-w"):
            build_model(bad)
