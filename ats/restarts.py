"""Restart bookkeeping: each candidate's last good state, and which restart of a target wins.

Inverting Gradients (Geiping et al., NeurIPS 2020) runs several restarts per target and keeps the
one whose final gradient-matching cost, without the TV prior, is lowest (its "loss" scoring);
Gao et al. (CVPR 2021) evaluate it that way. Here the restarts run side by side as candidates
(target-major: candidate g·R + r is restart r of group g). A candidate whose cost turns NaN or
infinite keeps its last finite state and is out of the running; a group fails only when all of
its restarts did, and a finished group whose cost rose `DIVERGED`-fold is reported as diverged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ats.objective import Problem

DIVERGED = 10.0  # a final cost this many times the first one marks the attack as diverged


@dataclass
class RestartTracker:
    """Per candidate: the last finite state and cost; per group: which restart is best."""

    last_good: Tensor  # (N, D)
    cost: Tensor  # (N,)
    failed_at: Tensor  # (N,) iteration of the first non-finite loss, 0 if none
    initial: Tensor  # (N,) the first cost, to tell divergence
    iteration: int = 0

    @classmethod
    def start(cls, z: Tensor) -> RestartTracker:
        """Track the candidates `z` (N, D) from their starting state, no cost known yet."""
        n = z.shape[0]
        inf = torch.full((n,), float("inf"), device=z.device)
        return cls(z.detach().clone(), inf, torch.zeros(n, dtype=torch.long, device=z.device), inf.clone())

    @property
    def all_failed(self) -> bool:
        return bool((self.failed_at > 0).all())

    def track(self, z: Tensor, cost: Tensor) -> None:
        """Record one iteration: the states `z` (N, D) and their costs (N,), NaN where non-finite."""
        self.iteration += 1
        finite = torch.isfinite(cost)
        self.failed_at = torch.where(~finite & (self.failed_at == 0), self.iteration, self.failed_at)
        ok = finite & (self.failed_at == 0)
        self.last_good = torch.where(ok[:, None], z.detach(), self.last_good)  # no index: no host sync
        self.cost = torch.where(ok, cost, self.cost)
        if self.iteration == 1:
            self.initial = torch.where(ok, cost, self.initial)

    def narrow(self, chosen: Tensor) -> RestartTracker:
        """Only the candidates `chosen` (one per group) tracked from here on (see `Problem.narrow`)."""
        return RestartTracker(self.last_good[chosen], self.cost[chosen], self.failed_at[chosen],
                              self.initial[chosen], self.iteration)

    def rescore(self, problem: Problem, z: Tensor) -> None:
        """Score every candidate's final state by its cost without TV (IG's 'loss' scoring)."""
        with torch.no_grad():
            ok = self.failed_at == 0
            self.last_good[ok] = z.detach()[ok]
        costs = problem.costs(self.last_good, with_tv=False)
        self.cost = torch.where(torch.isfinite(costs) & (self.failed_at == 0), costs.detach(), self.cost)

    def choose(self, groups: int, restarts: int, done: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
        """Per group, the best restart: its candidate index (G,), its cost (G,), and a status each.

        The status is "ok", or why the group failed; divergence is judged only when `done`.
        """
        cost = self.cost.view(groups, restarts)
        usable = torch.where(torch.isfinite(cost), cost, torch.full_like(cost, float("inf")))
        pick = usable.argmin(dim=1)  # (G,)
        chosen = torch.arange(groups, device=pick.device) * restarts + pick
        best_cost = cost.gather(1, pick[:, None]).squeeze(1)
        start = self.initial.view(groups, restarts).gather(1, pick[:, None]).squeeze(1)
        failed = self.failed_at.view(groups, restarts)
        status = tuple(_status(failed[g], float(best_cost[g]), float(start[g]), done) for g in range(groups))
        return chosen, best_cost, status


def _status(failed_at: Tensor, cost: float, start: float, done: bool) -> str:
    """One group's status from its restarts' failure iterations (R,) and its best cost."""
    if bool((failed_at > 0).all()):
        return f"failed: non-finite loss at iteration {int(failed_at.min())} in every restart"
    if done and cost > DIVERGED * start:
        return f"diverged: the cost rose from {start:.3g} to {cost:.3g}"
    return "ok"
