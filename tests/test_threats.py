"""Threat models of issue 14: FedAvg updates, batches with unknown labels, DP-SGD and its ε."""
from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import replace

import pytest
import torch

from ats.attacks import AttackConfig, reconstruct
from ats.cli import main
from ats.data import load_samples
from ats.evaluation import evaluate_reconstruction
from ats.fedavg import LocalTraining
from ats.federated import (Defense, client_update, infer_label_counts, infer_labels, loss_gradients,
                           parse_defense)
from ats.models import build_model
from ats.objective import Problem
from ats.privacy import clip_per_example, dp_epsilon, dp_sgd, per_example_norms
from ats.threats import Threat, parse_threat

REPEATED = torch.tensor([3, 3, 3, 7, 7, 1, 50, 99])  # a batch of 8 with repeated labels


@pytest.fixture(scope="module")
def lenet() -> torch.nn.Module:
    return build_model("lenet", 100, seed=0).eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))  # (n, 3, 32, 32)


# --- FedAvg -------------------------------------------------------------------------------------

def test_fedavg_one_step_is_minus_lr_times_the_fedsgd_gradient(lenet):
    x, y = images(4), REPEATED[:4]
    gradient, _ = client_update(lenet, x, y, per_example=False)
    difference, _ = client_update(lenet, x, y, per_example=False, local_steps=1, local_batches=1, lr=0.05)
    assert difference.local == LocalTraining(1, 1, 0.05) and gradient.local is None
    for g, d in zip(gradient.gradients, difference.gradients):
        # θ − ηg − θ rounds to float32's spacing at |θ| ≤ 0.5, about 3e-8
        torch.testing.assert_close(d, -0.05 * g, rtol=1e-5, atol=1e-7)


def test_fedavg_difference_equals_torch_sgd_over_the_local_batches(lenet):
    """E = 2 epochs over K = 2 batches: the same as four steps of torch.optim.SGD on a copy."""
    x, y = images(4), REPEATED[:4]
    shared, _ = client_update(lenet, x, y, per_example=False, local_steps=2, local_batches=2, lr=0.1)
    model = copy.deepcopy(lenet)
    start = [p.detach().clone() for p in model.parameters()]
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        for part in (slice(0, 2), slice(2, 4)):
            sgd.zero_grad()
            (0.5 * torch.nn.functional.cross_entropy(model(x[part]), y[part])).backward()
            sgd.step()
    for d, p, p0 in zip(shared.gradients, model.parameters(), start):
        torch.testing.assert_close(d, p.detach() - p0, rtol=1e-4, atol=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(lenet.parameters(), build_model("lenet", 100, seed=0).parameters()))


def test_fedavg_attack_with_one_step_is_the_fedsgd_attack(lenet):
    """E = K = 1: the cosine cost of −η·g matches that of g, so costs, gradients and images agree."""
    x, y = images(2), REPEATED[:2]
    config = replace(AttackConfig.ig(), iterations=4)
    gradient, _ = client_update(lenet, x, y, per_example=False)
    difference, _ = client_update(lenet, x, y, per_example=False, local_steps=1, lr=0.05)
    z = torch.randn(1, 2 * 3 * 32 * 32, generator=torch.Generator().manual_seed(1))
    costs = [Problem.build(lenet, update, config, joint=True).costs_and_grads(z) for update in (gradient, difference)]
    torch.testing.assert_close(costs[0][0], costs[1][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(costs[0][1], costs[1][1], rtol=1e-3, atol=1e-7)
    recons = [reconstruct(lenet, update, config, init=z) for update in (gradient, difference)]
    torch.testing.assert_close(recons[0].images, recons[1].images, rtol=0, atol=1e-4)


def test_fedavg_attack_is_batched_over_restarts(lenet):
    """Candidates × restarts through one vmap agree with each candidate alone (plain autograd)."""
    x, y = images(2), REPEATED[:2]
    shared, _ = client_update(lenet, x, y, per_example=False, local_steps=2, local_batches=2)
    problem = Problem.build(lenet, shared, replace(AttackConfig.ig(), restarts=3), joint=True)
    z = torch.randn(3, 2 * 3 * 32 * 32, generator=torch.Generator().manual_seed(2))
    costs, grads = problem.costs_and_grads(z)
    for row in range(3):
        alone, grad_alone = problem.costs_and_grads(z, rows=torch.tensor([row]))
        torch.testing.assert_close(costs[row], alone[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grads[row], grad_alone[0], rtol=1e-3, atol=1e-6)


@pytest.fixture
def one_thread():
    """One intra-op thread for a long CPU test: on a busy 2-core machine two threads (conftest's)
    ran the FedAvg attack 4–15× slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_fedavg_attack_on_lenet_beats_the_mean_colour(lenet, one_thread):
    """E = 1, K = 2 on two bundled photos: L-BFGS on the cosine cost, 20 iterations (about 12 s on one core)."""
    x, y = load_samples().batch([0, 1])
    shared, private = client_update(lenet, x, y, per_example=False, local_steps=1, local_batches=2, lr=0.01)
    config = replace(AttackConfig.lbfgs_cos(), lr=1.0, restarts=1, iterations=20)
    recon = reconstruct(lenet, shared, config, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LPIPS' missing weights
        results = evaluate_reconstruction(recon, private, x)
    assert recon.status == ("ok",)
    for r in results:  # measured: 19.3 and 17.4 dB against 11.1 and 11.3 dB
        assert r.psnr_x > r.baseline_mean_colour + 4, (r.psnr_x, r.baseline_mean_colour)


def test_fedavg_refuses_what_it_cannot_share(lenet):
    x, y = images(2), REPEATED[:2]
    with pytest.raises(ValueError, match="3 local batches"):
        client_update(lenet, x, y, per_example=False, local_steps=1, local_batches=3)
    with pytest.raises(ValueError, match="FedAvg"):
        client_update(lenet, x, y, per_example=True, local_steps=1)
    with pytest.raises(ValueError, match="FedAvg"):
        client_update(lenet, x, y, "none", "dp-1-1", per_example=False, local_steps=1,
                      generator=torch.Generator())


# --- batches with unknown labels ----------------------------------------------------------------

def test_label_counts_recover_repeated_labels(lenet):
    x = images(8)
    shared, _ = client_update(lenet, x, REPEATED, per_example=False, share_labels=False)
    assert shared.labels is None
    assert infer_label_counts(shared, lenet).tolist() == sorted(REPEATED.tolist())
    assert len(set(infer_labels(shared, lenet).tolist())) == 8  # the sign rule can only give distinct labels


def test_label_counts_from_a_fedavg_update_and_a_model_without_bias(lenet):
    x = images(8, seed=2)
    shared, _ = client_update(lenet, x, REPEATED, per_example=False, share_labels=False, local_steps=2,
                              local_batches=2)
    assert infer_label_counts(shared, lenet).tolist() == sorted(REPEATED.tolist())
    nobias = copy.deepcopy(lenet)
    nobias.fc = torch.nn.Linear(768, 100, bias=False)
    torch.nn.init.uniform_(nobias.fc.weight, -0.5, 0.5)
    shared, _ = client_update(nobias, x, REPEATED, per_example=False, share_labels=False)
    assert infer_label_counts(shared, nobias).tolist() == sorted(REPEATED.tolist())


@pytest.mark.parametrize("batch", [4, 8, 16])
def test_batch_threat_attacks_jointly_with_counted_labels(lenet, batch):
    y = torch.tensor([5, 5, 9, 2, 2, 2, 40, 41, 60, 61, 62, 63, 64, 65, 66, 5])[:batch]
    threat = parse_threat(f"batch-{batch}")
    x = images(batch, seed=3)
    shared, private = client_update(lenet, x, y, **threat.client_options(batch))
    config = threat.attack_config(replace(AttackConfig.ig(), iterations=2))
    assert config.labels == "counts" and shared.labels is None and not shared.per_example
    recon = reconstruct(lenet, shared, config, generator=torch.Generator().manual_seed(0))
    assert recon.images.shape == (batch, 3, 32, 32) and len(recon.status) == 1
    assert sorted(recon.labels.tolist()) == sorted(y.tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = evaluate_reconstruction(recon, private, x)  # paired to x by Hungarian matching
    assert [r.index for r in results] == list(range(batch)) and all(math.isfinite(r.psnr_x) for r in results)


# --- DP-SGD -------------------------------------------------------------------------------------

def test_dp_clipping_bounds_every_per_example_norm(lenet):
    per = loss_gradients(lenet, images(6), REPEATED[:6], per_example=True)
    norms = per_example_norms(per)
    clip = float(norms.median())  # half the examples above the bound, half within
    clipped_norms = per_example_norms(clip_per_example(per, clip))
    assert (clipped_norms <= clip * (1 + 1e-5)).all()
    within = norms <= clip
    assert within.any() and (~within).any()
    torch.testing.assert_close(clipped_norms[within], norms[within])
    torch.testing.assert_close(clipped_norms[~within], torch.full_like(norms[~within], clip))


def test_dp_noise_has_std_sigma_times_clip(lenet):
    x, y = images(4), REPEATED[:4]
    clip, sigma = 0.5, 1.1
    shared, _ = client_update(lenet, x, y, "none", f"dp-{clip}-{sigma}", per_example=False,
                              generator=torch.Generator().manual_seed(0))
    assert shared.defense == "dp-0.5-1.1"
    summed = [g.sum(0) for g in clip_per_example(loss_gradients(lenet, x, y, per_example=True), clip)]
    noise = torch.cat([(4 * s - c).reshape(-1) for s, c in zip(shared.gradients, summed)])  # ~85,000 draws
    assert abs(float(noise.std()) - sigma * clip) < 0.02 * sigma * clip
    assert abs(float(noise.mean())) < 0.02 * sigma * clip
    quiet = dp_sgd(loss_gradients(lenet, x, y, per_example=True), clip, 0.0, None, aggregate=False)
    assert (per_example_norms(quiet) <= clip * (1 + 1e-5)).all()  # per-example: each its own client


def test_dp_defense_parses_and_refuses_aggregated_gradients():
    assert parse_defense("dp-1.0-1.1") == Defense("dp", 1.1, clip=1.0)
    assert str(parse_defense("DP-1e-3-0")) == "dp-1e-3-0"
    assert parse_defense(str(parse_defense("dp-2-0.5"))) == parse_defense("dp-2-0.5")
    for bad in ("dp--1-1", "dp-1", "dp-0-1", "dp-1-101", "dp-1-1-1", "dp-x-1"):
        with pytest.raises(ValueError, match="dp"):
            parse_defense(bad)
    with pytest.raises(ValueError, match="per-example"):
        parse_defense("dp-1-1").apply((torch.zeros(3),), torch.Generator(), per_example=False)


def test_dp_epsilon_matches_the_published_mnist_figure():
    """TensorFlow Privacy's MNIST DP-SGD tutorial (tensorflow/privacy, tutorials/README.md, "Select
    Parameters"): noise multiplier 1.12, clip 1.0, batch 256 of 60,000, 60 epochs, δ = 1e-5:
    ε = 2.92 under RDP accounting, then read with the classic conversion ε = min_α RDP(α) + log(1/δ)/(α−1)
    (Mironov 2017) that the tutorial used. Opacus' RDP curve reproduces it; `dp_epsilon` reads the same
    curve with Balle et al.'s (2020) tighter conversion, 2.52, which must lie below."""
    pytest.importorskip("opacus")
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    q, steps, delta = 256 / 60_000, 60 * 60_000 // 256, 1e-5
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=q, noise_multiplier=1.12, steps=steps, orders=orders)
    classic = min(r + math.log(1 / delta) / (a - 1) for r, a in zip(rdp, orders))
    assert classic == pytest.approx(2.92, abs=0.01)
    epsilon = dp_epsilon(1.12, q, steps, delta)
    assert epsilon == pytest.approx(2.52, abs=0.01) and epsilon < classic
    assert dp_epsilon(2.0, q, steps, delta) < epsilon < dp_epsilon(0.8, q, steps, delta)
    assert dp_epsilon(0.0, q, steps, delta) == math.inf
    with pytest.raises(ValueError, match="sampling rate"):
        dp_epsilon(1.0, 1.5, 1)


# --- threats ------------------------------------------------------------------------------------

def test_parse_threat_round_trips_and_refuses_bad_values():
    assert parse_threat(None) == Threat() and str(Threat()) == "fedsgd"
    for text in ("fedsgd", "batch-4", "batch-16", "fedavg-2-2", "fedavg-1-1"):
        assert str(parse_threat(text)) == text
    assert parse_threat("fedavg-2-3") == Threat("fedavg", epochs=2, batches=3)
    for bad in ("fedavg-0-2", "fedavg-2-0", "fedavg-2", "batch-0", "batch-1", "batch--4", "junk", "fedavg-20-20"):
        with pytest.raises(ValueError, match="threat"):
            parse_threat(bad)
    assert Threat().client_options(3) == {"per_example": True}
    assert parse_threat("fedavg-2-2").client_options(4)["local_batches"] == 2
    with pytest.raises(ValueError, match="needs 4 images"):
        parse_threat("batch-4").client_options(2)


# --- the command line ---------------------------------------------------------------------------

def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_fedavg_threat_json(capsys, tmp_path, data_dir):
    code, out, _ = run(capsys, "attack", "--indices", "0-1", "--model", "lenet", "--threat", "fedavg-1-2",
                       "--iterations", "3", "--json", "--out", str(tmp_path), "--device", "cpu")
    assert code == 0
    doc = json.loads(out)
    assert doc["threat"] == "fedavg-1-2" and doc["joint"] is True and "epsilon" not in doc
    assert [r["index"] for r in doc["results"]] == [0, 1] and doc["results"][0]["iterations"] == 3


def test_cli_batch_threat_with_dp_reports_epsilon(capsys, tmp_path, data_dir):
    code, out, _ = run(capsys, "attack", "--indices", "0-3", "--model", "lenet", "--threat", "batch-4",
                       "--defense", "dp-1.0-1.1", "--iterations", "2", "--json", "--out", str(tmp_path))
    assert code == 0
    doc = json.loads(out)
    assert doc["threat"] == "batch-4" and doc["defense"] == "dp-1-1.1"
    assert doc["delta"] == 1e-5 and doc["steps"] == 1 and doc["sample_rate"] == pytest.approx(4 / 10_000)
    # the budget the app, the benchmark and the notebooks show: the one update inverted, sampling rate 1
    assert doc["epsilon"] == pytest.approx(dp_epsilon(1.1, 1.0, 1, 1e-5)) == pytest.approx(4.24, abs=0.01)
    assert doc["epsilon_sampled"] == pytest.approx(dp_epsilon(1.1, 4 / 10_000, 1, 1e-5))
    assert doc["epsilon_sampled"] < doc["epsilon"]
    assert len(doc["results"]) == 4


def test_cli_default_threat_is_fedsgd_with_dp_per_image(capsys, tmp_path, data_dir):
    code, out, err = run(capsys, "attack", "--model", "lenet", "--attack", "idlg", "--defense", "dp-1-1",
                         "--iterations", "2", "--json", "--out", str(tmp_path))
    assert code == 0 and "ats attack: idlg on 1 image(s), lenet, " in err  # the model by its name
    doc = json.loads(out)
    assert doc["threat"] == "fedsgd" and doc["joint"] is False and doc["sample_rate"] == pytest.approx(1e-4)


@pytest.mark.parametrize("argv, fragment", [
    (["--threat", "fedavg-0-2"], "fedavg-0-2"),
    (["--threat", "batch-0"], "batch-0"),
    (["--threat", "junk"], "junk"),
    (["--threat", "batch-4", "--indices", "0-1"], "needs 4 images"),
    (["--threat", "fedavg-1-3", "--indices", "0-1"], "3 local batches"),
    (["--defense", "dp--1-1"], "dp--1-1"),
    (["--defense", "dp-1-1000"], "noise multiplier"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
])
def test_cli_bad_threats_and_dp_exit_2_with_one_line(capsys, tmp_path, argv, fragment, data_dir):
    code, out, err = run(capsys, "attack", "--model", "lenet", "--iterations", "1", "--out", str(tmp_path), *argv)
    assert code == 2 and out == ""
    line = err.strip().splitlines()[-1]
    assert line.startswith("ats attack: error:") and fragment in line


def test_cli_lr_overrides_the_preset(capsys, tmp_path, data_dir):
    code, out, _ = run(capsys, "attack", "--indices", "0-1", "--model", "lenet", "--threat", "fedavg-1-2",
                       "--attack", "lbfgs-cos", "--lr", "1", "--restarts", "1", "--iterations", "2", "--json",
                       "--out", str(tmp_path))
    assert code == 0 and json.loads(out)["threat"] == "fedavg-1-2"
    from ats.cli import attack
    from types import SimpleNamespace

    args = SimpleNamespace(attack="lbfgs-cos", iterations=None, restarts=None, lr=1.0)
    assert attack.attack_config(args).lr == 1.0


# --- a threat study: the same images under several scenarios -------------------------------------

def test_threat_study_rows_pair_with_fedsgd_and_count_recovered_images(lenet):
    from types import SimpleNamespace

    from ats.threats import Scenario, study_rows, threat_study

    x, y = images(2, seed=4), torch.tensor([1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = threat_study(lenet, x, y, [Scenario(), Scenario("batch-2"), Scenario(defense="dp-1-1")],
                             replace(AttackConfig.ig(), iterations=2))
    rows = study_rows(study)
    assert [(r["threat"], r["defense"], r["clients"], r["images"]) for r in rows] == [
        ("fedsgd", "none", 2, 2), ("batch-2", "none", 1, 2), ("fedsgd", "dp-1-1", 2, 2)]
    assert rows[0]["diff_median"] == 0 and math.isnan(rows[0]["p_adjusted"])
    assert rows[2]["epsilon_update"] == pytest.approx(dp_epsilon(1.0, 1.0, 1)) and rows[0]["epsilon_update"] is None
    # constructed scores: image 0 at its mean colour + 10 dB, image 1 at + 1 dB; the batch 3 dB lower on both
    shifted = [(s, SimpleNamespace(results=[replace(r, psnr_x=r.baseline_mean_colour + d - (3 if i else 0))
                                            for r, d in zip(o.results, (10, 1))], clients=o.clients, seconds=1.0))
               for i, (s, o) in enumerate(study[:2])]
    rows = study_rows(shifted)
    assert [r["recovered"] for r in rows] == [1, 1]  # 10 and 7 dB above: recovered; 1 and -2 dB: not
    assert rows[1]["diff_median"] == pytest.approx(-3) and rows[1]["leak_margin"] == pytest.approx(2.5)
    results = shifted[0][1].results  # medians of two images are their means, not the lower one
    colours, aligned = [r.baseline_mean_colour for r in results], [r.psnr_x_aligned for r in results]
    assert colours[0] != colours[1] and aligned[0] != aligned[1]
    assert rows[0]["baseline_mean_colour_median"] == pytest.approx(sum(colours) / 2)
    assert rows[0]["psnr_x_aligned_median"] == pytest.approx(sum(aligned) / 2)
    with pytest.raises(ValueError, match="scenario batch-4"):
        threat_study(lenet, x, y, [Scenario("batch-4")], AttackConfig.ig())
    with pytest.raises(ValueError, match="junk"):
        Scenario("junk")
