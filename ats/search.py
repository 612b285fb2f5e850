"""Automatic Transformation Search: candidates, resumable scoring into the store, selection.

Gao et al., "Privacy-preserving Collaborative Learning with Automatic Transformation Search"
(CVPR 2021), §4.4, Algorithm 1: draw C_max = 1,500 random policies of at most 3 ops from the
50-op pool, drop those whose accuracy score S_acc falls below T_acc (−85), rank the rest by the
privacy score S_pri (lower = more private), keep the top n = 2 and their hybrid, whose policies
must share no op.

The original (`reference/ats-method.md` §4.2–4.3, §8 items 2, 3, 11) drew 1,600 unseeded
candidates with index 50 (which crashed) and duplicates, printed a ranking and left the top-n
and the hybrid to a person. Here the draw is seeded, in range and unique (`candidates`), the
selection is automatic (`select`: threshold, ranking, top-n, a greedy disjoint hybrid, and the
whole privacy/accuracy Pareto front), and `run_search` writes each finished policy to the results
database so that an interrupted search resumes where it stopped. `racing=True` spends less: every
candidate is first scored on a few images, and only those that can still reach the top set are
scored on all of them (successive halving; only full-definition scores are stored).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from ats.ops import POOL
from ats.policy import Hybrid, Policy, parse_policy
from ats.runtime import make_generator
from ats.scores import ACCURACY_THRESHOLD
from ats.store import ScoreRow, Store

MAX_OPS = 3
SEARCH_SPACE = sum(len(POOL) ** k for k in range(1, MAX_OPS + 1))  # 127,550 policies of 1–3 ops


# --- candidates --------------------------------------------------------------------------------

def candidates(n: int = 1500, seed: int = 0) -> tuple[Policy, ...]:
    """`n` distinct random policies of 1–3 ops, in the order drawn; the same for the same seed.

    As in the original's `batch_generate.py`, each of 3 slots holds an op index or stays empty
    (so most policies have 3 ops and repeats within a policy are allowed), but indices are 0–49,
    empty candidates and duplicates are drawn again, and the draw is seeded.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= SEARCH_SPACE:
        raise ValueError(f"candidates: n={n!r} must be a whole number in 1–{SEARCH_SPACE:,} "
                         f"(the number of policies of 1–{MAX_OPS} ops)")
    generator = make_generator(seed)
    chosen: dict[tuple[int, ...], None] = {}
    while len(chosen) < n:
        slots = torch.randint(-1, len(POOL), (max(64, 2 * (n - len(chosen))), MAX_OPS), generator=generator)
        for row in slots.tolist():
            indices = tuple(i for i in row if i >= 0)
            if indices and indices not in chosen:
                chosen[indices] = None
                if len(chosen) == n:
                    break
    return tuple(Policy(indices) for indices in chosen)


def single_ops() -> tuple[Policy, ...]:
    """Every one-op policy, 0 … 49."""
    return tuple(Policy((i,)) for i in range(len(POOL)))


def parse_policies(texts: str | Iterable[str]) -> tuple[Policy | Hybrid, ...]:
    """User-given policies ("3-1-7,43-18-18" or a list of strings), canonical, duplicates dropped."""
    if isinstance(texts, str):
        texts = texts.split(",")
    parsed = {str(p): p for p in (parse_policy(t.strip()) for t in texts)}
    if not parsed:
        raise ValueError("no policies given; write them as 3-1-7,43-18-18")
    return tuple(parsed.values())


# --- scoring into the store --------------------------------------------------------------------

@dataclass(frozen=True)
class SearchProgress:
    """Sent to `run_search`'s callback each time a policy is finished (or dropped by racing)."""

    done: int  # policies finished in this run, stored or dropped
    total: int  # policies this run had to score (those already stored are not counted)
    skipped: int  # policies found in the store at the start
    policy: str
    row: ScoreRow | None  # None when racing dropped the policy
    stage: str = "full"  # "full", or "race k/K" while racing


@dataclass(frozen=True)
class SearchResult:
    """All stored rows of the searched policies, and what this run did."""

    rows: tuple[ScoreRow, ...]  # in the order of the policies given; dropped ones are absent
    scored: int  # policies scored on the full definition in this run
    skipped: int  # policies that were already in the store
    dropped: int  # policies racing eliminated early
    image_scores: int  # privacy evaluations spent in this run (images × policies), racing's cost unit
    seconds: float


Scorer = Callable[..., tuple]  # (policy, *, privacy_model, accuracy_model, data, config, seed) -> (PrivacyScore, AccuracyScore)


def _score(policy, scorer: Scorer, *, privacy_model, accuracy_model, data, config, seed: int,
           definition: str, checkpoint_hash: str) -> ScoreRow:
    started = time.perf_counter()
    privacy, accuracy = scorer(policy, privacy_model=privacy_model, accuracy_model=accuracy_model,
                               data=data, config=config, seed=seed)
    values = privacy.class_means if getattr(config, "variant", "cvpr") == "per-class" else privacy.per_image
    per_image = tuple(float(v) for v in torch.as_tensor(values).reshape(-1).tolist())
    images = int(torch.as_tensor(privacy.per_image).numel())
    return ScoreRow(str(policy), definition, checkpoint_hash, int(seed), float(privacy.value), float(accuracy.value),
                    float(accuracy.normalized), per_image, images, time.perf_counter() - started)


def run_search(policies: Sequence[Policy | Hybrid | str], *, store: Store, privacy_model, accuracy_model, data,
               config, seed: int, checkpoint_hash: str, callback: Callable[[SearchProgress], None] | None = None,
               racing: bool | Racing = False, scorer: Scorer | None = None) -> SearchResult:
    """Score every policy not yet in `store` under (config.definition(), checkpoint_hash, seed).

    Each row is written (and committed) as soon as its policy is done, so an interrupted search
    resumes by calling this again with the same arguments. `scorer` defaults to
    `ats.scores.score_policy`; tests pass a cheap stand-in. With `racing`, see `Racing`.
    """
    if scorer is None:
        from ats.scores import score_policy as scorer
    started = time.perf_counter()
    definition = config.definition()
    store.check_definition(definition)
    objects = {str(p): p for p in (parse_policy(p) if isinstance(p, str) else p for p in policies)}
    names = list(objects)
    stored = {r.policy for r in store.get_scores(definition, checkpoint_hash, seed)}
    todo = [n for n in names if n not in stored]
    skipped = len(names) - len(todo)
    common = dict(privacy_model=privacy_model, accuracy_model=accuracy_model, data=data, config=config, seed=seed)
    dropped, spent, done = 0, 0, 0
    if racing and todo:
        race = racing if isinstance(racing, Racing) else Racing()
        anchors = store.get_scores(definition, checkpoint_hash, seed)
        todo, spent = _race(todo, objects, race, anchors=anchors, callback=callback, skipped=skipped, **common)
        dropped = len(names) - skipped - len(todo)
    for name in todo:
        row = _score(objects[name], scorer, definition=definition, checkpoint_hash=checkpoint_hash, **common)
        store.put_score(row)
        spent += row.images
        done += 1
        if callback is not None:
            callback(SearchProgress(done, len(todo), skipped, name, row))
    rows = {r.policy: r for r in store.get_scores(definition, checkpoint_hash, seed)}
    return SearchResult(tuple(rows[n] for n in names if n in rows), len(todo), skipped, dropped, spent,
                        time.perf_counter() - started)


# --- racing ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Racing:
    """Successive halving for the search: cheap partial S_pri first, the full score only for contenders.

    Every candidate gets its (full) S_acc first; those below `threshold` leave the race. The rest
    are scored on `first` privacy images, then twice as many, and so on; after each round a
    candidate is dropped when at least `keep` others beat it surely: their paired mean difference
    over the same images exceeds `z` standard errors. Survivors get the full definition's score,
    which alone is stored. Dropped candidates get no row, so the Pareto front only covers survivors.
    """

    keep: int = 10  # the size of the top set racing protects
    first: int = 8  # privacy images in the first round
    z: float = 3.0  # confidence, in standard errors of the paired difference
    threshold: float = ACCURACY_THRESHOLD

    def rounds(self, images: int) -> list[int]:
        """Cumulative images per partial round, below `images` (the full score comes after)."""
        sizes, m = [], max(2, self.first)
        while m < images:
            sizes.append(m)
            m *= 2
        return sizes


def surely_beaten(values: torch.Tensor, contenders: torch.Tensor, z: float) -> torch.Tensor:
    """How many `contenders` rows beat each `values` row surely (paired over columns): (n,) counts.

    values (n, m), contenders (k, m): per-image S_pri on the same m images (lower is better); j
    beats i surely when mean(v_i − c_j) > z·sd(v_i − c_j)/√m. A row never beats an identical copy.
    """
    m = values.shape[1]
    if m < 2:
        return torch.zeros(len(values), dtype=torch.long)
    v, c = values.double(), contenders.double()
    dv, dc = v - v.mean(1, keepdim=True), c - c.mean(1, keepdim=True)
    variance = (dv.pow(2).sum(1)[:, None] + dc.pow(2).sum(1)[None] - 2 * dv @ dc.T) / (m - 1)  # (n, k)
    gap = v.mean(1)[:, None] - c.mean(1)[None]  # (n, k)
    return (gap > z * (variance.clamp_min(0) / m).sqrt() + 1e-12).sum(1)


def _race(todo: list[str], objects: dict, race: Racing, *, anchors: list[ScoreRow], callback, skipped: int,
          privacy_model, accuracy_model, data, config, seed: int) -> tuple[list[str], int]:
    """The policies of `todo` that survive the race, and the privacy images spent on it."""
    from ats import scores
    from ats.data import accuracy_windows

    device = next(accuracy_model.parameters()).device
    windows = [data.batch(w, device) for w in accuracy_windows(config.accuracy_runs, config.accuracy_window)]
    alive = []
    for number, name in enumerate(todo, start=1):
        score = scores.accuracy_score(accuracy_model, objects[name], windows, generator=make_generator(seed, device),
                                      config=config)
        if score.value >= race.threshold:
            alive.append(name)
        if callback is not None:
            callback(SearchProgress(number, len(todo), skipped, name, None, stage="race: accuracy"))
    indices = scores.privacy_indices(data, config)
    order = torch.randperm(len(indices), generator=make_generator(seed)).tolist()
    device = next(privacy_model.parameters()).device
    x, y = data.batch([indices[i] for i in order], device)
    usable = [r for r in anchors if r.passes(race.threshold) and config.variant == "cvpr"
              and len(r.per_image) == len(indices)]
    anchor_values = torch.tensor([[r.per_image[i] for i in order] for r in usable], dtype=torch.float64).reshape(
        len(usable), len(indices))
    values = {name: torch.empty(0) for name in alive}
    spent, previous = 0, 0
    rounds = race.rounds(len(indices))
    for k, m in enumerate(rounds, start=1):
        stage = f"race: {m}/{len(indices)} images"
        for number, name in enumerate(alive, start=1):
            part = scores.privacy_score(privacy_model, objects[name], x[previous:m], y[previous:m],
                                        generator=make_generator(seed * 1000 + k, device), config=config)
            values[name] = torch.cat([values[name], part.per_image.double()])
            spent += m - previous
            if callback is not None:
                callback(SearchProgress(number, len(alive), skipped, name, None, stage=stage))
        previous = m
        if len(alive) + len(usable) <= race.keep:
            continue
        table = torch.stack([values[n] for n in alive])  # (n, m)
        everyone = torch.cat([table, anchor_values[:, :m].double()]) if len(usable) else table
        beaten = surely_beaten(table, everyone, race.z)
        alive = [n for n, b in zip(alive, beaten.tolist()) if b < race.keep]
    return alive, spent


# --- selection ---------------------------------------------------------------------------------

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
    note = ""
    if not rows:
        note = "no scored policies"
    elif not ranked:
        best = max(valid, key=lambda r: r.accuracy, default=None)
        note = (f"no policy passes the accuracy threshold {threshold:g} (of {len(rows)}; best S_acc "
                f"{best.accuracy:.2f} for {best.policy})" if best else f"all {len(rows)} scores failed (NaN)")
    return Selection(threshold=threshold, alpha=alpha, ranked=ranked, ranking=tuple(v for v, _ in passed),
                     top=ranked[:top], hybrid=disjoint_hybrid(ranked, max(2, top)), pareto=pareto_front(valid),
                     candidates=len(rows), rejected=len(rows) - len(ranked), note=note)
