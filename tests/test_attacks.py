"""The attack engine: batched equals sequential, presets, label modes, failures, snapshots."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ats import attacks
from ats.attacks import AttackConfig, iter_reconstruct, reconstruct
from ats.aware import warp
from ats.federated import client_update
from ats.metrics import psnr
from ats.models import build_model, input_stats
from ats.aware import shift_hypotheses
from ats.reference import invert_gradient_sequential, invert_lbfgs_sequential


@pytest.fixture(scope="module")
def resnet():
    return build_model("resnet20", 100, seed=0).eval()


@pytest.fixture(scope="module")
def lenet():
    return build_model("lenet", 100, seed=0).eval()


def test_presets_and_validation():
    assert set(attacks.PRESETS) >= {"ig", "dlg", "idlg", "adam-l1", "adam-l2", "lbfgs-cos", "sgd-cos"}
    ig = AttackConfig.ig()
    assert (ig.cost, ig.optimizer, ig.lr, ig.iterations, ig.tv, ig.signed, ig.boxed) == \
        ("cosine", "adam", 0.1, 4800, 1e-4, True, True)
    assert AttackConfig.idlg().labels == "infer" and AttackConfig.dlg().labels == "joint"
    assert AttackConfig.sgd_cos().lr == 0.01
    with pytest.raises(ValueError, match="cost 'l3'"):
        AttackConfig(cost="l3")
    with pytest.raises(ValueError, match="attack 'nope' is not one of"):
        AttackConfig.preset("nope")
    with pytest.raises(ValueError, match="iterations"):
        AttackConfig(iterations=0)


def test_batched_engine_matches_plain_autograd_loop(resnet, image_batch):
    """2 images × 2 restarts in one vmap call == 4 attacks with plain autograd, step for step."""
    x, y = image_batch[0][:2], image_batch[1][:2]
    update = client_update(resnet, x, y, per_example=True).shared
    config = replace(AttackConfig.ig(), iterations=6, restarts=2, signed=False, lr=0.01)
    init = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batched = reconstruct(resnet, update, config, init=init)
    for b in range(2):
        target = tuple(g[b] for g in update.gradients)
        runs = [invert_gradient_sequential(resnet, target, y[b:b + 1], init[2 * b + r][None],
                                           replace(config, restarts=1)) for r in range(2)]
        image, cost = min(runs, key=lambda run: run[1])
        assert torch.allclose(batched.images[b], image[0], atol=1e-4)
        assert batched.loss[b] == pytest.approx(cost, abs=1e-4)


def test_batched_aware_attack_matches_its_plain_loop(lenet, image_batch):
    """2 images × 4 hypotheses (flip, shift signs) of the aware attacker == 8 plain loops that
    learn the image and the shift with ordinary autograd: the baseline `bench/` times it against."""
    x, y = image_batch[0][:2], image_batch[1][:2]
    update = client_update(lenet, x, y, "3-1-7", crop_flip=True, per_example=True,
                           generator=torch.Generator().manual_seed(0)).shared
    config = replace(AttackConfig.aware_ig(), iterations=5, restarts=4, signed=False, lr=0.01)
    init = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batched = reconstruct(lenet, update, config, init=init, policy="3-1-7", crop_flip=True)
    reach, starts, flips = shift_hypotheses("3-1-7", True, 4, 32)
    assert flips.any() and not flips.all()
    for b in range(2):
        target = tuple(g[b] for g in update.gradients)
        runs = [invert_gradient_sequential(lenet, target, y[b:b + 1], init[4 * b + r][None], replace(config, restarts=1),
                                           start=starts[r], flip=bool(flips[r]), reach=reach) for r in range(4)]
        image, cost = min(runs, key=lambda run: run[1])
        assert torch.allclose(batched.images[b], image[0], atol=1e-4)
        assert batched.loss[b] == pytest.approx(cost, rel=1e-4)
    with pytest.raises(ValueError, match="starting shift"):
        invert_gradient_sequential(lenet, target, y[:1], init[:1], config)


def test_batched_idlg_matches_torchs_lbfgs_loop_while_it_is_not_chaotic(lenet, image_batch):
    """Batched iDLG == `torch.optim.LBFGS` on each image for the first evaluations. Later they part:
    DLG's lr-1 L-BFGS is chaotic (a 1e-7 change of the start moves pixels by 0.4 after 20
    evaluations, in torch's own loop), so longer runs are compared by their PSNR, in `bench/`."""
    x, y = image_batch[0][:2], image_batch[1][:2]
    update = client_update(lenet, x, y, per_example=True).shared
    config = replace(AttackConfig.idlg(), iterations=2, inner=3)
    init = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batched = reconstruct(lenet, update, config, init=init)
    for b in range(2):
        image, cost, evaluations = invert_lbfgs_sequential(lenet, tuple(g[b] for g in update.gradients), y[b:b + 1],
                                                           init[b][None], config)
        assert evaluations <= 6
        assert torch.allclose(batched.images[b], image[0], atol=1e-3)
        assert batched.loss[b] == pytest.approx(cost, rel=1e-3)
    with pytest.raises(ValueError, match="iDLG"):
        invert_lbfgs_sequential(lenet, tuple(g[0] for g in update.gradients), y[:1], init[:1], AttackConfig.ig())


@pytest.mark.parametrize("boxed", [False, True])
def test_one_lbfgs_candidate_runs_torchs_own_lbfgs_as_the_batched_engine_would(lenet, image_batch, boxed):
    """At N = 1 L-BFGS is torch.optim.LBFGS itself (cheaper than our batched two-loop on one
    vector); step for step it makes the same iterates, costs and evaluations as BatchedLBFGS."""
    from ats.objective import Problem
    from ats.optim import BatchedLBFGS, SingleLBFGS, make_stepper

    x, y = image_batch[0][:1], image_batch[1][:1]
    update = client_update(lenet, x, y, per_example=True).shared
    config = replace(AttackConfig.idlg(), iterations=2, inner=4, boxed=boxed)  # before chaos sets in (see below)
    problem = Problem.build(lenet, update, config, joint=False)
    start = problem.initial(torch.Generator().manual_seed(3), None)
    counts = {}
    steppers = []
    for kind in (SingleLBFGS, BatchedLBFGS):
        z = start.detach().clone().requires_grad_(True)
        stepper = kind(problem, config, z)
        original, made = problem.costs_and_grads, []
        problem.costs_and_grads = lambda z, *a, _o=original, _m=made, **k: (_m.append(1), _o(z, *a, **k))[1]
        costs = [stepper.step(i) for i in range(config.iterations)]
        problem.costs_and_grads = original
        counts[kind] = len(made)
        steppers.append((stepper.z.detach().clone(), torch.stack(costs)))
    assert isinstance(make_stepper(problem, config, start.detach().clone()), SingleLBFGS)
    assert counts[SingleLBFGS] == counts[BatchedLBFGS] == 8  # (at inner 2-3 torch makes one thrown away)
    (z1, c1), (z2, c2) = steppers
    # unboxed they agree to float rounding; the box's clamp, at lr 1, amplifies rounding (a pixel on
    # either side of the edge): 0.1 % of the cost and 3e-3 of a pixel after 8 evaluations
    tolerance = 1e-2 if boxed else 1e-4
    assert torch.allclose(c1, c2, rtol=tolerance)
    assert torch.allclose(z1, z2, atol=tolerance)
    if boxed:
        low, high = problem.bounds()
        images = z1[:, : problem.image_size].view(-1, *problem.shape)
        assert bool((images >= low - 1e-6).all() and (images <= high + 1e-6).all())


def test_one_lbfgs_candidate_that_turns_non_finite_is_frozen_and_reported(lenet, image_batch):
    from ats.objective import Problem
    from ats.optim import SingleLBFGS

    x, y = image_batch[0][:1], image_batch[1][:1]
    update = client_update(lenet, x, y, per_example=True).shared
    config = replace(AttackConfig.idlg(), iterations=3, inner=4)
    problem = Problem.build(lenet, update, config, joint=False)
    z = problem.initial(torch.Generator().manual_seed(3), None)
    stepper = SingleLBFGS(problem, config, z)
    first = stepper.step(0)
    assert torch.isfinite(first).all()
    original = problem.costs_and_grads
    problem.costs_and_grads = lambda z, *a, **k: (torch.full((1,), float("nan")), torch.zeros_like(z))
    assert torch.isnan(stepper.step(1)).all() and not bool(stepper.alive[0])
    problem.costs_and_grads = original
    frozen = stepper.z.detach().clone()
    assert torch.isnan(stepper.step(2)).all() and torch.equal(stepper.z.detach(), frozen)


@pytest.mark.parametrize("preset", ["ig", "dlg", "aware"])
def test_one_candidate_takes_plain_autograd_and_agrees_with_the_batched_pass(lenet, image_batch, preset):
    """A single candidate is evaluated by plain autograd (the fast path at N = 1), every other count
    by one batched pass (`ats.persample`): the two give the same cost and gradient, for known, joint
    and aware variables."""
    from ats.objective import Problem

    x, y = image_batch[0][:2], image_batch[1][:2]
    update, private = client_update(lenet, x, y, "3-1-7" if preset == "aware" else "none", crop_flip=False,
                                    per_example=True, generator=torch.Generator().manual_seed(0))
    config = replace(AttackConfig.preset(preset), restarts=2)
    problem = Problem.build(lenet, update, config, joint=False, policy=private.policy, crop_flip=False)
    z = problem.initial(torch.Generator().manual_seed(2), None)
    costs, grads = problem.costs_and_grads(z)  # (4,) through the batched pass
    for n in range(4):
        cost, g = problem.costs_and_grads(z, rows=torch.tensor([n]))  # through plain autograd
        assert cost.shape == (1,) and g.shape == (1, problem.size)
        assert torch.allclose(cost, costs[n : n + 1], rtol=1e-5, atol=1e-7)
        assert torch.allclose(g, grads[n : n + 1], rtol=1e-3, atol=1e-5 * float(grads[n].abs().max()))
    pair, pair_grads = problem.costs_and_grads(z, rows=torch.tensor([3, 0]))  # a subset, in its order
    assert torch.allclose(pair, costs[[3, 0]], rtol=1e-5) and torch.allclose(pair_grads, grads[[3, 0]], rtol=1e-3, atol=1e-5 * float(grads.abs().max()))
    assert problem.leaves.keys() == problem.params.keys()
    assert all(p.grad is None for p in lenet.parameters())  # the model's own parameters untouched


def test_ig_lowers_the_cost_and_snapshots_stream(resnet, image_batch):
    x, y = image_batch[0][:1], image_batch[1][:1]
    update = client_update(resnet, x, y, per_example=True).shared
    config = replace(AttackConfig.ig(), iterations=30)
    snaps = list(iter_reconstruct(resnet, update, config, generator=torch.Generator().manual_seed(0), every=10))
    assert [s.iteration for s in snaps] == [10, 20, 30]
    assert [s.done for s in snaps] == [False, False, True]
    assert snaps[-1].images.shape == (1, 3, 32, 32) and snaps[-1].images.device.type == "cpu"
    assert 0 <= float(snaps[-1].images.min()) and float(snaps[-1].images.max()) <= 1
    assert float(snaps[-1].loss[0]) < float(snaps[0].loss[0])
    assert len(snaps[-1].history) == 3 and snaps[-1].status == ("ok",)


def test_idlg_recovers_labels_and_images_on_lenet(lenet, image_batch):
    """DLG's easy case: untrained sigmoid LeNet, batch 1, label read off the gradient."""
    x, y = image_batch[0][:1], image_batch[1][:1]
    update = client_update(lenet, x, y, per_example=True).shared
    result = reconstruct(lenet, update, replace(AttackConfig.idlg(), iterations=80),
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.labels, y)
    assert float(psnr(result.images, x)[0]) > 25  # 30.9 dB measured at 75 iterations


def test_known_labels_need_leaked_labels(lenet, image_batch):
    x, y = image_batch[0][:1], image_batch[1][:1]
    update = client_update(lenet, x, y, per_example=True, share_labels=False).shared
    with pytest.raises(ValueError, match="share_labels=False"):
        reconstruct(lenet, update, replace(AttackConfig.ig(), iterations=1))
    result = reconstruct(lenet, update, replace(AttackConfig.idlg(), iterations=1))
    assert torch.equal(result.labels, y)  # inferred from the gradient alone


def test_dlg_optimizes_labels_jointly(lenet, image_batch):
    x, y = image_batch[0][:2], image_batch[1][:2]
    update = client_update(lenet, x, y, per_example=True).shared
    result = reconstruct(lenet, update, replace(AttackConfig.dlg(), iterations=40),
                         generator=torch.Generator().manual_seed(0))
    assert result.labels.shape == (2,)
    # L-BFGS at lr 1 without line search does not always converge (as in DLG): a poor result is
    # still a result ("ok"), a blow-up is recorded ("diverged"); at least one image converges here.
    assert all(s == "ok" or s.startswith("diverged") for s in result.status)
    assert float(result.loss.min()) < 0.1


def test_divergence_is_a_recorded_failure(resnet, image_batch):
    x, y = image_batch[0][:1], image_batch[1][:1]
    update = client_update(resnet, x, y, per_example=True).shared
    config = replace(AttackConfig.adam_l2(), optimizer="sgd", lr=1e6, signed=False, boxed=False, iterations=5)
    result = reconstruct(resnet, update, config, generator=torch.Generator().manual_seed(0))
    assert result.status[0].startswith(("diverged", "failed"))
    assert torch.isfinite(result.images).all()


def test_joint_attack_of_an_aggregated_gradient(lenet, image_batch):
    x, y = image_batch[0][:2], image_batch[1][:2]
    assert y[0] != y[1]
    update = client_update(lenet, x, y).shared  # one gradient for the batch
    result = reconstruct(lenet, update, replace(AttackConfig.idlg(), iterations=3),
                         generator=torch.Generator().manual_seed(0))
    assert result.images.shape == (2, 3, 32, 32) and len(result.status) == 1
    assert sorted(result.labels.tolist()) == sorted(y.tolist())
    with pytest.raises(ValueError, match="jointly"):
        reconstruct(lenet, update, AttackConfig.idlg(), joint=False)


def test_non_finite_gradient_is_a_recorded_failure(resnet, image_batch):
    x, y = image_batch[0][:2], image_batch[1][:2]
    update = client_update(resnet, x, y, per_example=True).shared
    poisoned = tuple(torch.cat([g[:1], torch.full_like(g[1:], float("nan"))]) for g in update.gradients)
    update = replace(update, gradients=poisoned)
    result = reconstruct(resnet, update, replace(AttackConfig.ig(), iterations=5),
                         generator=torch.Generator().manual_seed(0))
    assert result.status[0] == "ok"
    assert result.status[1].startswith("failed")
    assert torch.isfinite(result.images).all()


def test_restarts_keep_the_best(lenet, image_batch):
    x, y = image_batch[0][:1], image_batch[1][:1]
    update = client_update(lenet, x, y, per_example=True).shared
    config = replace(AttackConfig.ig(), iterations=10, restarts=3)
    result = reconstruct(lenet, update, config, generator=torch.Generator().manual_seed(0))
    singles = [reconstruct(lenet, update, replace(config, restarts=1),
                           init=result_init) for result_init in
               torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)).split(1)]
    batched = reconstruct(lenet, update, config,
                          init=torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)))
    assert float(batched.loss[0]) == pytest.approx(min(float(s.loss[0]) for s in singles), abs=1e-5)
    assert result.images.shape == (1, 3, 32, 32)


def test_runs_on_every_device(device, image_batch):
    model = build_model("lenet", 100, seed=0).to(device).eval()
    x, y = image_batch[0][:1].to(device), image_batch[1][:1].to(device)
    update = client_update(model, x, y, per_example=True).shared
    result = reconstruct(model, update, replace(AttackConfig.ig(), iterations=3),
                         generator=torch.Generator(device=device).manual_seed(0))
    assert result.images.device.type == "cpu" and result.status == ("ok",)


# --- the policy-aware attacker ---------------------------------------------------------------------

def test_shift_hypotheses_follow_the_policy_and_the_crop():
    reach, starts, flips = attacks.shift_hypotheses("3-1-7", True, 4)
    x, y = 150 / 331 * 32, 150 / 331 * 2 / 9 * 32  # translateX level 9, translateY level 2
    assert reach.tolist() == pytest.approx([x + 4, y + 4], abs=1e-4)
    assert torch.allclose(starts, torch.tensor([[x, y], [x, y], [-x, y], [-x, y]]), atol=1e-4)
    assert flips.tolist() == [False, True, False, True]
    reach, starts, flips = attacks.shift_hypotheses("none", False, 2)
    assert reach.tolist() == [0, 0] and starts.abs().sum() == 0 and not flips.any()
    hybrid_reach = attacks.shift_hypotheses("3-1-7+43-18-18", True, 1)[0]
    assert (hybrid_reach >= attacks.shift_hypotheses("3-1-7", True, 1)[0]).all()
    assert (hybrid_reach >= attacks.shift_hypotheses("43-18-18", True, 1)[0]).all()
    assert AttackConfig.preset("aware").aware and AttackConfig.preset("aware").restarts == 8
    with pytest.raises(ValueError, match="joint"):
        AttackConfig(aware=True, labels="joint")


def test_aware_warp_is_a_black_filled_shift_and_flip(image_batch):
    x = image_batch[0][:2]
    shifted = warp(x, torch.tensor([3.0, -2.0]), torch.tensor(False))
    expected = torch.zeros_like(x)
    expected[..., :30, 3:] = x[..., 2:, :-3]  # right by 3, up by 2
    assert torch.allclose(shifted, expected, atol=1e-5)
    flipped = warp(x, torch.zeros(2), torch.tensor(True))
    assert torch.allclose(flipped, x.flip(-1), atol=1e-6)


@pytest.mark.parametrize("preset", ["ig", "idlg"])
def test_screening_keeps_each_targets_cheapest_restart_and_its_optimizer_state(lenet, image_batch, preset,
                                                                               monkeypatch):
    """Restart 1 starts near the true image, so it is the cheapest at the screen and at the end:
    the screened run must then end exactly where the full run's best restart does (Adam's moments
    and L-BFGS's curvature history carried over), having evaluated R·s + (T − s) candidates a target."""
    from ats.objective import Problem

    x, y = image_batch[0][:2], image_batch[1][:2]
    update = client_update(lenet, x, y, per_example=True).shared
    mean, std = (t.view(3, 1, 1) for t in input_stats(lenet))
    init = torch.randn(2, 3, *x.shape[1:], generator=torch.Generator().manual_seed(3))
    init[:, 1] = (x - mean) / std + 0.05 * init[:, 1]  # (target, restart, C, H, W)
    init = init.reshape(6, *x.shape[1:])
    full_config = replace(AttackConfig.preset(preset), iterations=5, restarts=3, inner=3)
    evaluated = []
    original = Problem.costs_and_grads
    monkeypatch.setattr(Problem, "costs_and_grads",
                        lambda self, z, with_tv=True, rows=None:
                        evaluated.append(z.shape[0] if rows is None else len(rows)) or original(self, z, with_tv, rows))
    costs_alone = Problem.costs  # the final rescore: costs without their gradients
    monkeypatch.setattr(Problem, "costs", lambda self, z, with_tv=True: evaluated.append(z.shape[0]) or costs_alone(self, z, with_tv))
    full = reconstruct(lenet, update, full_config, init=init)
    full_count, evaluated[:] = sum(evaluated), []
    screened = reconstruct(lenet, update, replace(full_config, screen=2), init=init)
    assert (screened.images - full.images).abs().max() < 1e-3  # batch size changes float rounding only
    assert torch.allclose(screened.loss, full.loss, rtol=1e-3)
    per_step = full_config.inner if preset == "idlg" else 1  # L-BFGS: up to `inner` evaluations an iteration
    bound = 2 * (3 * 2 * per_step + 1 * 3 * per_step + 1)  # 3 restarts × 2 its, then 1 × 3 its, + the rescore
    if preset == "ig":
        assert (full_count, sum(evaluated)) == (2 * 3 * (5 + 1), bound)
    else:
        assert sum(evaluated) <= bound < full_count
    with pytest.raises(ValueError, match="screen"):
        AttackConfig(screen=-1)


def test_aware_attack_learns_a_bounded_shift_and_scores_its_own_transform(resnet, image_batch):
    from ats.evaluation import evaluate_reconstruction

    x, y = image_batch[0][:2], image_batch[1][:2]
    update, private = client_update(resnet, x, y, "3-1-7", crop_flip=True, per_example=True,
                                    generator=torch.Generator().manual_seed(0))
    config = replace(AttackConfig.aware_ig(), iterations=3)
    with pytest.raises(ValueError, match="policy="):
        reconstruct(resnet, update, config)  # the aware attacker must be told the policy
    recon = reconstruct(resnet, update, config, generator=torch.Generator().manual_seed(1),
                        policy=private.policy, crop_flip=private.crop_flip)
    reach = attacks.shift_hypotheses("3-1-7", True, 1)[0]
    assert recon.shifts.shape == (2, 2) and bool((recon.shifts.abs() <= reach + 1e-5).all())
    assert recon.flips.shape == (2,) and recon.transformed.shape == recon.images.shape
    assert recon.shifts.abs()[:, 0].min() > 10  # started from the policy's ±14.5 px, not from 0
    results = evaluate_reconstruction(recon, private, x)
    assert results[0].psnr_x == pytest.approx(float(psnr(recon.images[:1], x[:1])), abs=1e-4)
    assert results[0].psnr_tx == pytest.approx(float(psnr(recon.transformed[:1], private.transformed[:1])),
                                                        abs=1e-4)


class _Wavy:
    """N independent non-convex problems on R^8 (a quadratic of condition 10^scale plus a sine ripple),
    on which L-BFGS rejects curvature pairs and candidates end their iterations at different times."""

    def __init__(self, scales: list[float]):
        self.a = torch.stack([torch.logspace(0, s, 8) for s in scales])
        self.c = torch.randn(len(scales), 8, generator=torch.Generator().manual_seed(0))
        self.evaluations = torch.zeros(len(scales), dtype=torch.long)  # per problem

    def part(self, n: int) -> _Wavy:
        one = _Wavy([0.0])
        one.a, one.c = self.a[n : n + 1], self.c[n : n + 1]
        return one

    def cost(self, z: torch.Tensor, n: int) -> torch.Tensor:
        d = z - self.c[n]
        return 0.5 * (self.a[n] * d * d).sum() + 2.0 * torch.sin(3 * z).sum()

    def costs_and_grads(self, z: torch.Tensor, with_tv: bool = True,
                        rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(z.shape[0]) if rows is None else rows
        z = z.detach()[rows].requires_grad_(True)
        costs = torch.stack([self.cost(v, int(n)) for v, n in zip(z, rows)])
        (g,) = torch.autograd.grad(costs.sum(), z)
        self.evaluations[rows] += 1
        return costs.detach(), g


def test_batched_lbfgs_is_each_candidates_own_run_and_torchs():
    """Each candidate keeps its own curvature ring: batched, it ends where it ends alone (a rejected pair
    or another candidate's longer iteration must not cost it a stored pair), and where torch.optim.LBFGS
    (no line search) ends; and it is evaluated as often as alone: a candidate whose iteration has
    ended costs no evaluation while the others go on."""
    from ats.optim import BatchedLBFGS

    problems = _Wavy([0.5, 1.0, 2.0, 3.0])
    config = replace(AttackConfig.idlg(), lr=0.5, history=5, inner=20, boxed=False)
    start = 2 * torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    together = BatchedLBFGS(problems, config, start.clone().requires_grad_(True))
    for iteration in range(4):
        together.step(iteration)
    for n in range(4):
        part = problems.part(n)
        alone = BatchedLBFGS(part, config, start[n : n + 1].clone().requires_grad_(True))
        for iteration in range(4):
            alone.step(iteration)
        assert torch.allclose(alone.z[0], together.z[n], rtol=0, atol=1e-7), n
        p = start[n].clone().requires_grad_(True)
        reference = torch.optim.LBFGS([p], lr=0.5, max_iter=20, history_size=5, line_search_fn=None)

        def closure(n=n, p=p, reference=reference):
            reference.zero_grad()
            loss = problems.cost(p, n)
            loss.backward()
            return loss
        for _ in range(4):
            reference.step(closure)
        assert torch.allclose(p.detach(), together.z[n].detach(), rtol=0, atol=1e-3), n
        assert int(problems.evaluations[n]) == int(part.evaluations[0]) <= 4 * 20, n
    assert len(set(problems.evaluations.tolist())) > 1  # the candidates did stop at different times


def test_precision_is_an_option_that_restores_the_settings():
    """float32 (TF32 off) is the default; tf32 is an option; the settings come back after either."""
    from ats.runtime import precision

    assert AttackConfig().precision == "float32"
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with precision("tf32"):
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    with precision("float32"):
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == saved
    with pytest.raises(ValueError, match="precision 'bf16' is not one of float32, tf32"):
        AttackConfig(precision="bf16")
    with pytest.raises(ValueError, match="precision"):
        with precision("fp8"):
            pass


def test_batched_lbfgs_direction_is_torchs_two_loop_over_each_candidates_ring():
    """The compact form (two triangular solves over the stored pairs' inner products) gives the
    direction torch's two-loop recursion gives, pair by pair, for candidates whose rings hold
    different numbers of pairs, some wrapped around and some with rejected (negative-curvature) pairs."""
    from ats.optim import BatchedLBFGS

    gen = torch.Generator().manual_seed(0)
    n, d, m = 5, 12, 4
    config = replace(AttackConfig.idlg(), history=m)
    stepper = BatchedLBFGS(None, config, torch.zeros(n, d))
    history: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(n)]  # torch's lists, oldest first
    for round_ in range(7):
        active = torch.tensor([round_ < stop for stop in (0, 1, 3, 5, 7)])  # 0, 1, 3, 5 and 7 offers
        s = torch.randn(n, d, generator=gen)
        y = s + 0.3 * torch.randn(n, d, generator=gen)
        if round_ == 2:
            y[1::2] *= -1  # negative curvature: rejected, as torch rejects it
        q = -torch.randn(n, d, generator=gen)  # the new gradient is -q, and y = g - g_previous
        stepper.prev_grad, stepper.prev_step = -q - y, s
        direction, _ = stepper._direction(-q, torch.zeros(n), active)
        for c in range(n):
            ys = float(y[c] @ s[c])
            if bool(active[c]) and ys > 1e-10:
                history[c] = (history[c] + [(s[c], y[c])])[-m:]
                assert float(stepper.h_diag[c]) == pytest.approx(ys / float(y[c] @ y[c]), rel=1e-5)
            r = q[c].clone()  # torch.optim.LBFGS's two-loop, newest pair first
            alphas = []
            for s_i, y_i in reversed(history[c]):
                alphas.append(float(s_i @ r) / float(y_i @ s_i))
                r = r - alphas[-1] * y_i
            r = r * float(stepper.h_diag[c])
            for (s_i, y_i), alpha in zip(history[c], reversed(alphas)):
                beta = float(y_i @ r) / float(y_i @ s_i)
                r = r + (alpha - beta) * s_i
            assert torch.allclose(direction[c], r, rtol=1e-4, atol=1e-5), (round_, c)
    counts = stepper.count.tolist()
    assert counts[0] == 0 and max(counts) > m and len(set(counts)) >= 4  # empty, partial and wrapped rings
