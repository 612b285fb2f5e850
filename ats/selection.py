"""Selection: which scored policies a search keeps, their ranking, the top-n, the hybrid, the Pareto front.

Gao et al., "Privacy-preserving Collaborative Learning with Automatic Transformation Search"
(CVPR 2021), §4.4, Algorithm 1's last step: drop the policies whose accuracy score S_acc falls
below T_acc (−85), rank the rest by the privacy score S_pri (lower = more private), keep the top
n = 2 and their hybrid, whose policies must share no op.

The original printed a ranking and left the top-n and the hybrid to a person (see
`docs/method.md`); here `select` does it all from stored rows: the threshold, the ranking (by mean
S_pri, or the HEAD code's blend of mean and variance with `alpha`), the top-n, a greedy disjoint
hybrid, and the whole privacy/accuracy Pareto front. `policies_for_benchmark` is what a search
hands on to `ats benchmark --from-search`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from ats.policy import Hybrid, Policy, parse_policy
from ats.scores import ACCURACY_THRESHOLD
from ats.store import ScoreRow, Store


@dataclass(frozen=True)
class Selection:
    """The outcome of a search: what passed the accuracy filter, ranked, and what to use."""

    threshold: float
    alpha: float | None  # None: rank by mean S_pri (CVPR code); else the HEAD code's mean/variance blend
    ranked: tuple[ScoreRow, ...]  # rows with S_acc ≥ threshold, best (most private) first
    ranking: tuple[float, ...]  # the value each ranked row was sorted by
    top: tuple[ScoreRow, ...]  # the first `top` of `ranked`
    hybrid: Hybrid | None  # the best policy and the next best ones sharing no op with it
    pareto: tuple[ScoreRow, ...]  # rows no other row beats on both S_pri (↓) and S_acc (↑), by S_pri
    candidates: int  # rows considered
    rejected: int  # rows below the accuracy threshold (or with a failed score)
    note: str = ""  # why nothing was selected, when nothing was

    @property
    def ok(self) -> bool:
        return bool(self.top)

    def to_dict(self, limit: int = 10) -> dict:
        return {"threshold": self.threshold, "alpha": self.alpha, "candidates": self.candidates,
                "passed": len(self.ranked), "rejected": self.rejected,
                "top": [r.to_dict() for r in self.top], "hybrid": None if self.hybrid is None else str(self.hybrid),
                "best": [dict(r.to_dict(), rank_value=v) for r, v in zip(self.ranked[:limit], self.ranking)],
                "pareto": [r.to_dict() for r in self.pareto], "note": self.note}


def _valid(row: ScoreRow) -> bool:
    return math.isfinite(row.privacy) and math.isfinite(row.accuracy)


def _minmax(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    return [0.0 if high == low else (v - low) / (high - low) for v in values]


def rank_values(rows: Sequence[ScoreRow], alpha: float | None = None) -> list[float]:
    """What `select` sorts by: S_pri, or α·minmax(mean) + (1−α)·minmax(variance) across `rows`."""
    if alpha is None or not rows:
        return [r.privacy for r in rows]
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must lie in [0, 1] (the HEAD code used 0.7)")
    means, spreads = _minmax([r.privacy for r in rows]), _minmax([r.variance for r in rows])
    return [alpha * m + (1 - alpha) * v for m, v in zip(means, spreads)]


def disjoint_hybrid(rows: Sequence[ScoreRow], size: int = 2) -> Hybrid | None:
    """Greedy: the first single policy of `rows`, then each next one sharing no op with those taken."""
    chosen: list[Policy] = []
    for row in rows:
        policy = parse_policy(row.policy)
        if not isinstance(policy, Policy) or not policy.indices:
            continue  # hybrids and "none" cannot be members
        if not chosen or Hybrid(tuple(chosen) + (policy,)).is_disjoint():
            chosen.append(policy)
            if len(chosen) == size:
                break
    return Hybrid(tuple(chosen)) if len(chosen) >= 2 else None


def pareto_front(rows: Iterable[ScoreRow]) -> tuple[ScoreRow, ...]:
    """Rows not dominated in (S_pri lower, S_acc higher), sorted by S_pri; failed scores left out."""
    front: list[ScoreRow] = []
    best = -math.inf
    for row in sorted((r for r in rows if _valid(r)), key=lambda r: (r.privacy, -r.accuracy)):
        if row.accuracy > best:
            front.append(row)
            best = row.accuracy
        elif front and (row.privacy, row.accuracy) == (front[-1].privacy, front[-1].accuracy):
            front.append(row)  # an exact tie is not dominated either
    return tuple(front)


def _note(rows: Sequence[ScoreRow], valid: Sequence[ScoreRow], passed: int, threshold: float) -> str:
    """Why nothing was selected ("" when something was): no rows, none above the threshold, or all NaN."""
    if not rows:
        return "no scored policies"
    if passed:
        return ""
    best = max(valid, key=lambda r: r.accuracy, default=None)
    if best is None:
        return f"all {len(rows)} scores failed (NaN)"
    return (f"no policy passes the accuracy threshold {threshold:g} (of {len(rows)}; best S_acc "
            f"{best.accuracy:.2f} for {best.policy})")


def select(rows: Iterable[ScoreRow], *, threshold: float = ACCURACY_THRESHOLD, top: int = 2,
           alpha: float | None = None) -> Selection:
    """Algorithm 1's last step: filter by S_acc ≥ threshold, rank, take the top-n and their hybrid."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top={top!r} must be a whole number ≥ 1")
    rows = list(rows)
    valid = [r for r in rows if _valid(r)]
    values = rank_values(valid, alpha)  # normalised across all candidates, as the HEAD code
    passed = sorted(((v, r) for v, r in zip(values, valid) if r.passes(threshold)), key=lambda vr: (vr[0], vr[1].policy))
    ranked = tuple(r for _, r in passed)
    return Selection(threshold=threshold, alpha=alpha, ranked=ranked, ranking=tuple(v for v, _ in passed),
                     top=ranked[:top], hybrid=disjoint_hybrid(ranked, max(2, top)), pareto=pareto_front(valid),
                     candidates=len(rows), rejected=len(rows) - len(ranked),
                     note=_note(rows, valid, len(ranked), threshold))


# --- what a search hands on to the benchmark ---------------------------------------------------

def search_rows(store: Store) -> list[ScoreRow]:
    """The rows of the search a benchmark takes from `store`: its largest (definition, checkpoint,
    seed) group; [] when it holds no scores."""
    groups = store.groups()  # largest first
    if not groups:
        return []
    return store.get_scores(groups[0].definition, groups[0].checkpoint, groups[0].seed)


def policies_for_benchmark(rows: Iterable[ScoreRow], *, threshold: float = ACCURACY_THRESHOLD,
                           top: int = 2) -> tuple[str, ...]:
    """The policies a search proposes for training and attack: its top `top`, then their hybrid."""
    chosen = select(rows, threshold=threshold, top=top)
    return tuple(r.policy for r in chosen.top) + ((str(chosen.hybrid),) if chosen.hybrid else ())
