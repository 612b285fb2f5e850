"""The attack's optimizers, stepping all N candidates of a `Problem` at once.

* Adam (Inverting Gradients, Geiping et al., NeurIPS 2020, as Gao et al., CVPR 2021, configure
  it: on the sign of the image gradient, lr ×0.1 at 3/8, 5/8 and 7/8 of the run) and Nesterov SGD
  (Gao et al.'s Table 2). Both act elementwise, so batching the candidates changes nothing.
* L-BFGS (Deep Leakage from Gradients, Zhu et al., NeurIPS 2019, and iDLG): `torch.optim.LBFGS`
  without line search, re-implemented batched with one curvature history per candidate; one
  candidate alone runs torch's own (its two-loop on one vector is cheaper than ours on a batch).

After every update the images may be clamped to the image of the pixel box [0, 1] (and an aware
attacker's shift to its reach). A candidate whose cost or gradient turns non-finite is frozen
and its cost reported as NaN; the others go on.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ats.attacks import AttackConfig
    from ats.objective import Problem


def make_stepper(problem: Problem, config: AttackConfig, z: Tensor) -> Stepper:
    """A `Stepper` advancing every candidate of `z` by one iteration per `step(iteration)` call."""
    if config.optimizer == "lbfgs":
        return SingleLBFGS(problem, config, z) if z.shape[0] == 1 else BatchedLBFGS(problem, config, z)
    return FirstOrder(problem, config, z)


class Stepper:
    """`step(iteration) -> costs (N,)` (NaN where non-finite) advances every candidate one iteration
    and returns the costs they had before it; `narrow(index)` keeps only the candidates `index`,
    with their optimizer state, for a problem narrowed the same way (see `Problem.narrow`)."""

    problem: Problem
    z: Tensor

    def step(self, iteration: int) -> Tensor:
        raise NotImplementedError

    def narrow(self, index: Tensor, problem: Problem) -> Tensor:
        raise NotImplementedError


class FirstOrder(Stepper):
    """Adam (optionally on the gradient's sign) or Nesterov SGD, with IG's lr decay."""

    def __init__(self, problem: Problem, config: AttackConfig, z: Tensor):
        self.problem, self.config, self.z = problem, config, z
        if config.optimizer == "adam":
            self.optimizer = torch.optim.Adam([z], lr=config.lr)
        else:
            self.optimizer = torch.optim.SGD([z], lr=config.lr, momentum=config.momentum, nesterov=True)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=lr_milestones(config),
                                                              gamma=0.1)
        self.alive = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)

    def step(self, iteration: int) -> Tensor:
        z, config = self.z, self.config
        costs, grads = self.problem.costs_and_grads(z)
        finite = finite_rows(costs, grads)
        self.alive.logical_and_(finite)
        grads = torch.where(self.alive[:, None], grads, torch.zeros_like(grads))
        z.grad = grads.sign() if config.signed else grads
        self.optimizer.step()
        self.scheduler.step()
        if config.boxed:
            clamp_to_box(self.problem, z)
        return torch.where(self.alive, costs.detach(), torch.full_like(costs, float("nan")))

    def narrow(self, index: Tensor, problem: Problem) -> Tensor:
        kept = self.z.detach()[index].clone().requires_grad_(True)
        state = self.optimizer.state.pop(self.z, {})
        self.optimizer.state[kept] = {k: v[index].clone() if torch.is_tensor(v) and v.dim() > 0 else v
                                      for k, v in state.items()}
        self.optimizer.param_groups[0]["params"] = [kept]
        self.problem, self.z, self.alive = problem, kept, self.alive[index]
        return kept


def finite_rows(costs: Tensor, grads: Tensor) -> Tensor:
    """(N,) True where a candidate's cost and every entry of its gradient are finite."""
    return torch.isfinite(costs) & torch.isfinite(grads).all(dim=1)


def lr_milestones(config: AttackConfig) -> list[int]:
    """Iterations after which the lr drops ×0.1: about 3/8, 5/8 and 7/8 of the run.

    Computed exactly as Inverting Gradients does (`iterations // 2.667`, `// 1.6`, `// 1.142`):
    1799, 3000 and 4203 for 4,800 iterations.
    """
    if not config.lr_decay:
        return []
    return [int(config.iterations // f) for f in (2.667, 1.6, 1.142)]


def clamp_to_box(problem: Problem, z: Tensor) -> None:
    """In place: the images into the normalized image of [0, 1], an aware shift into its reach."""
    low, high = problem.bounds()
    with torch.no_grad():
        images = z[:, : problem.image_size].view(-1, problem.k, *problem.shape)
        images.copy_(torch.maximum(torch.minimum(images, high), low))
        if problem.config.aware:
            z[:, -2:].copy_(torch.maximum(torch.minimum(z[:, -2:], problem.reach), -problem.reach))


class _NonFinite(Exception):
    """Raised inside torch's L-BFGS closure to end the step when the cost turns non-finite."""


class SingleLBFGS(Stepper):
    """One candidate: `torch.optim.LBFGS` itself (no line search), with the batched engine's rules.

    The same iteration as `BatchedLBFGS` at N = 1 (tested): clamped to the box after every update,
    frozen when its cost turns non-finite, and stopped for good where torch would only repeat
    itself (a step that made one evaluation and did not move: a vanishing gradient or a
    non-descent direction, which torch's loop would re-evaluate, unchanged, every iteration).
    """

    def __init__(self, problem: Problem, config: AttackConfig, z: Tensor):
        self.problem, self.config, self.z = problem, config, z
        self.optimizer = torch.optim.LBFGS([z], lr=config.lr, max_iter=config.inner,
                                           history_size=config.history, line_search_fn=None)
        self.alive = torch.ones(1, dtype=torch.bool, device=z.device)
        self.cost = torch.full((1,), float("nan"), device=z.device)  # at its last evaluation

    def _closure(self) -> Tensor:
        if self.config.boxed and self.evaluations:  # after torch's update (the last one: after step)
            clamp_to_box(self.problem, self.z)
        cost, g = self.problem.costs_and_grads(self.z)
        if not bool(finite_rows(cost, g).all()):
            raise _NonFinite
        if self.evaluations == 0:
            self.first = cost.detach().clone()
        self.cost, self.evaluations = cost.detach(), self.evaluations + 1
        self.z.grad = g
        return cost[0]

    def step(self, iteration: int) -> Tensor:
        if not bool(self.alive[0]):
            return self.cost.clone()  # its last cost, NaN if it turned non-finite
        before, self.evaluations = self.z.detach().clone(), 0
        self.first = torch.full_like(self.cost, float("nan"))
        try:
            first = self.optimizer.step(self._closure)
        except _NonFinite:
            self.alive[0], self.cost = False, torch.full_like(self.cost, float("nan"))
            return self.first
        if self.config.boxed:
            clamp_to_box(self.problem, self.z)
        if self.evaluations == 1 and torch.equal(self.z.detach(), before):
            self.alive[0] = False  # converged or stuck: torch would repeat this step unchanged
        return first.detach().reshape(1)

    def narrow(self, index: Tensor, problem: Problem) -> Tensor:
        kept = self.z.detach()[index].clone().requires_grad_(True)
        state = self.optimizer.state.pop(self.z, {})
        self.optimizer.state[kept] = state
        self.optimizer.param_groups[0]["params"] = self.optimizer._params = [kept]
        self.problem, self.z = problem, kept
        self.alive, self.cost = self.alive[index], self.cost[index]
        return kept


class BatchedLBFGS(Stepper):
    """torch.optim.LBFGS (no line search) run for N independent problems at once.

    One iteration is one `LBFGS.step()`: up to `config.inner` gradient evaluations and updates
    (torch's `max_iter`, 20 by default), as DLG counts its 300 iterations. Each candidate keeps
    its own curvature history and torch's stopping rules: a non-descent direction or a vanishing
    gradient stops it for good; a negligible step or change of loss ends its current iteration.
    """

    def __init__(self, problem: Problem, config: AttackConfig, z: Tensor):
        self.problem, self.config, self.z = problem, config, z
        n, d, m = z.shape[0], z.shape[1], config.history
        self.s = torch.zeros(n, m, d, device=z.device)
        self.y = torch.zeros(n, m, d, device=z.device)
        self.rho = torch.zeros(n, m, device=z.device)  # 0 marks an unused slot: a no-op in the recursion
        self.sy = torch.zeros(n, m, m, device=z.device)  # s_i · y_j between each candidate's stored pairs (slots)
        self.yy = torch.zeros(n, m, m, device=z.device)  # y_i · y_j
        self.h_diag = torch.ones(n, device=z.device)
        self.prev_grad: Tensor | None = None
        self.prev_step = torch.zeros(n, d, device=z.device)
        self.alive = torch.ones(n, dtype=torch.bool, device=z.device)  # not failed, not converged
        self.finite = torch.ones(n, dtype=torch.bool, device=z.device)
        self.count = torch.zeros(n, dtype=torch.long, device=z.device)  # pairs each candidate stored
        self.costs = torch.full((n,), float("nan"), device=z.device)  # each one's cost at its last evaluation

    def step(self, iteration: int) -> Tensor:
        """One L-BFGS iteration for every candidate; returns the costs (N,) it started from.

        Only the candidates still in their iteration are evaluated: one that has converged, failed
        or ended its iteration early costs nothing more, as in torch's loop run one at a time."""
        n = self.z.shape[0]
        active = self.alive.clone()
        first_costs = None
        previous = torch.full((n,), float("inf"), device=self.z.device)
        costs = self.costs.clone()
        g = torch.zeros_like(self.z.detach())
        # torch also caps an iteration's evaluations at max_eval = max_iter·5//4, which leaves
        # max_iter = 2 or 3 one update short (the evaluation after it is thrown away)
        updates = min(self.config.inner, max(1, self.config.inner * 5 // 4 - 1))
        for _ in range(updates):
            rows = active.nonzero().squeeze(1)
            if rows.numel():
                costs[rows], g[rows] = self.problem.costs_and_grads(self.z, rows=rows)
            evaluated = torch.zeros_like(active)
            evaluated[rows] = True
            finite = finite_rows(costs, g)
            self.finite &= finite | ~evaluated
            self.alive &= self.finite
            self.costs = torch.where(evaluated, costs, self.costs)
            if first_costs is None:
                first_costs = torch.where(self.finite, self.costs, torch.full_like(costs, float("nan")))
            g = torch.where(self.alive[:, None], g, torch.zeros_like(g))
            self.alive &= (g.abs().amax(dim=1) > 1e-7) | ~evaluated  # torch's tolerance_grad
            active &= self.alive & ((costs - previous).abs() >= 1e-9)  # tolerance_change on the loss
            previous = costs.clone()
            if not bool(active.any()):
                break
            direction, t = self._direction(g, costs, active)
            descent = (g * direction).sum(dim=1) < -1e-9  # torch stops on a non-descent direction
            self.alive &= descent | ~active
            active &= descent
            step = torch.where(active[:, None], t[:, None] * direction, torch.zeros_like(direction))
            self.prev_grad = torch.where(active[:, None], g, self.prev_grad if self.prev_grad is not None else g)
            self.prev_step = torch.where(active[:, None], step, self.prev_step)
            with torch.no_grad():
                self.z += step
            if self.config.boxed:
                clamp_to_box(self.problem, self.z)
            active &= step.abs().amax(dim=1) > 1e-9
        return first_costs

    def narrow(self, index: Tensor, problem: Problem) -> Tensor:
        for name in ("s", "y", "rho", "sy", "yy", "h_diag", "prev_step", "alive", "finite", "count", "costs"):
            setattr(self, name, getattr(self, name)[index])
        if self.prev_grad is not None:
            self.prev_grad = self.prev_grad[index]
        self.problem, self.z = problem, self.z.detach()[index].clone().requires_grad_(True)
        return self.z

    def _direction(self, g: Tensor, costs: Tensor, active: Tensor) -> tuple[Tensor, Tensor]:
        """The search direction (N, D) and step size (N,): steepest descent first, then L-BFGS."""
        if self.prev_grad is None:
            return -g, (1.0 / g.abs().sum(dim=1).clamp_min(1e-30)).clamp(max=1.0) * self.config.lr
        y, s, q = g - self.prev_grad, self.prev_step, -g
        stored = self._remember(y, s, active)
        # every inner product this step needs, each candidate's ring read once: (N, m, 3) and (N, m, 2)
        with_y = torch.einsum("nmd,nkd->nmk", self.y, torch.stack([s, y, q], dim=1))
        with_s = torch.einsum("nmd,nkd->nmk", self.s, torch.stack([y, q], dim=1))
        rows = stored.nonzero().squeeze(1)
        if rows.numel():  # the new pair's row and column of the pairs' inner products
            slot = (self.count[rows] - 1) % self.config.history
            self.sy[rows, slot] = with_y[rows, :, 0]  # s_new · y_j
            self.sy[rows, :, slot] = with_s[rows, :, 0]  # s_j · y_new
            self.yy[rows, slot] = self.yy[rows, :, slot] = with_y[rows, :, 1]  # y_new · y_j
        return self._two_loop(q, with_s[:, :, 1], with_y[:, :, 2]), torch.full_like(costs, self.config.lr)

    def _remember(self, y: Tensor, s: Tensor, active: Tensor) -> Tensor:
        """Append the pair (s, y) to each active candidate's own ring where its curvature is positive,
        as torch does: a rejected pair, or a candidate whose iteration has ended, keeps its history.
        Returns which candidates stored it (N,)."""
        ys = (y * s).sum(dim=1)  # (N,)
        ok = (ys > 1e-10) & active
        rows = ok.nonzero().squeeze(1)
        slot = self.count[rows] % self.config.history
        self.s[rows, slot] = s[rows]
        self.y[rows, slot] = y[rows]
        self.rho[rows, slot] = 1.0 / ys[rows]
        self.count += ok.long()
        yy = (y * y).sum(dim=1).clamp_min(1e-30)
        self.h_diag = torch.where(ok, ys / yy, self.h_diag)
        return ok

    def _two_loop(self, q: Tensor, s_q: Tensor, y_q: Tensor) -> Tensor:
        """H·q as torch's two-loop recursion computes it over each candidate's own history (newest
        pair first), given the slots' s_j · q and y_j · q (N, m).

        In closed form (the compact form of Byrd, Nocedal and Schnabel, 1994): the recursion's
        sequential dot products follow from the pairs' stored inner products (`sy`, `yy`) through
        two unit-triangular solves of size m, so the (N, m, D) rings are read in batched
        matrix-vector products, not gathered pair by pair. Equal to the loop up to float rounding."""
        m, n = self.config.history, q.shape[0]
        ages = int(self.count.clamp(max=m).max())
        if ages == 0:
            return q * self.h_diag.unsqueeze(1)
        age = torch.arange(ages, device=q.device)
        slot = (self.count[:, None] - 1 - age) % m  # (N, K): the slot of each candidate's k-th newest pair
        valid = age < self.count.clamp(max=m)[:, None]
        rho = torch.where(valid, self.rho.gather(1, slot), torch.zeros((), device=q.device))  # (N, K), 0: no pair
        pairs = (slot[:, :, None] * m + slot[:, None, :]).reshape(n, 1, -1)  # (age k, age j) -> slot pair
        sy, yy = torch.stack([self.sy, self.yy], 1).reshape(n, 2, m * m).gather(
            2, pairs.expand(n, 2, -1)).reshape(n, 2, ages, ages).unbind(1)  # (N, K, K): s_k · y_j, y_k · y_j
        eye = torch.eye(ages, device=q.device)
        # first loop, newest first: α_k = ρ_k s_k · (q − Σ_{j<k} α_j y_j)
        lower = eye + rho[:, :, None] * sy.tril(-1)
        alpha = torch.linalg.solve_triangular(lower, (rho * s_q.gather(1, slot)).unsqueeze(2), upper=False,
                                              unitriangular=True).squeeze(2)
        # r = H0 (q − Σ_j α_j y_j); second loop, oldest first: with δ = α − β and
        # β_k = ρ_k y_k · (r + Σ_{j>k} δ_j s_j):  (I + ρ · triu(yᵀs, 1)) δ = α − ρ (y · r)
        y_r = self.h_diag[:, None] * (y_q.gather(1, slot) - torch.einsum("nkj,nj->nk", yy, alpha))
        upper = eye + rho[:, :, None] * sy.transpose(1, 2).triu(1)
        delta = torch.linalg.solve_triangular(upper, (alpha - rho * y_r).unsqueeze(2), upper=True,
                                              unitriangular=True).squeeze(2)

        def by_slot(v: Tensor) -> Tensor:  # (N, K) by age -> (N, m) by slot, 0 where no pair
            return torch.zeros(n, m, device=q.device).scatter_(1, slot, torch.where(valid, v, 0.0))

        r = (q - torch.einsum("nm,nmd->nd", by_slot(alpha), self.y)) * self.h_diag.unsqueeze(1)
        return r + torch.einsum("nm,nmd->nd", by_slot(delta), self.s)
