"""Automatic Transformation Search: the candidates, and their resumable scoring into the store.

Gao et al., "Privacy-preserving Collaborative Learning with Automatic Transformation Search"
(CVPR 2021), §4.4, Algorithm 1: draw C_max = 1,500 random policies of at most 3 ops from the
50-op pool and score each with S_pri and S_acc (`ats.scores`); the selection that follows
(threshold, ranking, top-n and their hybrid) is `ats.selection`.

The original drew 1,600 unseeded candidates with index 50 (which crashed) and duplicates (see
`docs/method.md`). Here the draw is seeded, in range and unique (`candidates`), and `run_search`
writes each finished policy to the results database so that an interrupted search resumes where it
stopped. Two searches on one database split the work: each claims a policy in the store before
scoring it (`Store.claim`), skips those another writer holds, and at the end waits for them.
`racing=True` spends less: every candidate is first scored on a few images, and only those that
can still reach the top set are scored on all of them (`ats.racing`; only full-definition scores
are stored).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch

from ats.limits import MAX_CANDIDATES
from ats.pool import POOL
from ats.policy import Hybrid, Policy, parse_policy
from ats.published import PAPER_POLICIES
from ats.racing import Racing, race
from ats.runtime import make_generator
from ats.store import ScoreRow, Store

if TYPE_CHECKING:
    from ats.distributed import RayOptions

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
    """User-given policies ("3-1-7,43-18-18" or a list of strings), canonical, duplicates dropped.

    An empty list (or string) is refused, and so are more than `ats.limits.MAX_CANDIDATES` policies."""
    if isinstance(texts, str):
        texts = texts.split(",") if texts.strip(" ") else []
    texts = list(texts)
    if not texts:
        raise ValueError("no policies given; write them as 3-1-7,43-18-18")
    if len(texts) > MAX_CANDIDATES:
        raise ValueError(f"{len(texts):,} policies given; at most {MAX_CANDIDATES:,} a search")
    parsed = {str(p): p for p in (parse_policy(t) for t in texts)}
    return tuple(parsed.values())


def reference_policies(random: int = 3, seed: int = 0) -> tuple[str, ...]:
    """The paper's policies and "none", then `random` seeded random candidates to compare with."""
    drawn = [str(p) for p in candidates(random, seed)] if random > 0 else []
    return PAPER_POLICIES + tuple(p for p in drawn if p not in PAPER_POLICIES)


# --- scoring into the store --------------------------------------------------------------------

@dataclass(frozen=True)
class SearchProgress:
    """Sent to `run_search`'s callback each time a policy is finished (or dropped by racing)."""

    done: int  # policies finished in this run, stored or dropped
    total: int  # policies this run had to score (those already stored are not counted)
    skipped: int  # policies found in the store at the start
    policy: str
    row: ScoreRow | None  # None when racing dropped the policy or another writer scored it
    stage: str = "full"  # "full", or "race: accuracy" / "race: m/N images" while racing


@dataclass(frozen=True)
class SearchResult:
    """All stored rows of the searched policies, and what this run did."""

    rows: tuple[ScoreRow, ...]  # in the order of the policies given; dropped ones are absent
    scored: int  # policies scored on the full definition in this run
    skipped: int  # policies that were already in the store
    dropped: int  # policies racing eliminated early
    image_scores: int  # privacy evaluations spent in this run (images × policies), racing's cost unit
    seconds: float
    by_others: int = 0  # policies another writer of the same store scored while this run went on
    failed: int = 0  # policies whose Ray task kept failing (recorded in the store's failures)


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


def _reporter(callback: Callable[[SearchProgress], None] | None, skipped: int):
    """Racing's (number, total, policy, stage) reports as SearchProgress events, or None."""
    if callback is None:
        return None
    return lambda number, total, name, stage: callback(SearchProgress(number, total, skipped, name, None, stage=stage))


def run_search(policies: Sequence[Policy | Hybrid | str], *, store: Store, privacy_model, accuracy_model, data,
               config, seed: int, checkpoint_hash: str, callback: Callable[[SearchProgress], None] | None = None,
               racing: bool | Racing = False, scorer: Scorer | None = None, poll: float = 1.0,
               ray: RayOptions | None = None) -> SearchResult:
    """Score every policy not yet in `store` under (config.definition(), checkpoint_hash, seed).

    Each row is written (and committed) as soon as its policy is done, so an interrupted search
    resumes by calling this again with the same arguments. A policy is claimed in `store` before
    it is scored, so another search on the same database takes the others; policies held by
    another writer are waited for (checked every `poll` seconds) and taken over if it dies.
    `scorer` defaults to `ats.scores.score_policy`; tests pass a cheap stand-in. With `racing`, see
    `ats.racing.Racing`. With `ray`, the policies are scored as Ray tasks (`ats.distributed`; racing's
    rounds still run here), the rows written here as they come back; a policy whose task keeps
    failing is recorded in the store (`Store.failures`) and left out, and the next run retries it.
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
    dropped, spent = 0, 0
    if racing and todo:
        anchors = store.get_scores(definition, checkpoint_hash, seed)
        todo, spent = race(todo, objects, racing if isinstance(racing, Racing) else Racing(), anchors=anchors,
                           report=_reporter(callback, skipped), **common)
        dropped = len(names) - skipped - len(todo)
    failed = 0
    if ray is not None and todo:
        from ats.distributed import score_on_ray

        done = [0]

        def report(name: str, row: ScoreRow | None) -> None:
            done[0] += 1
            if callback is not None:
                callback(SearchProgress(done[0], len(todo), skipped, name, row))

        mine, held = score_on_ray(todo, objects, store, scorer, ray, definition=definition,
                                  checkpoint_hash=checkpoint_hash, report=report, **common)
        failed = done[0] - len(mine)
        mine += _score_claimed(held, objects, store, scorer, callback, skipped, poll, definition=definition,
                               checkpoint_hash=checkpoint_hash, **common)
    else:
        mine = _score_claimed(todo, objects, store, scorer, callback, skipped, poll, definition=definition,
                              checkpoint_hash=checkpoint_hash, **common)
    spent += sum(row.images for row in mine)
    rows = {r.policy: r for r in store.get_scores(definition, checkpoint_hash, seed)}
    return SearchResult(tuple(rows[n] for n in names if n in rows), len(mine), skipped, dropped, spent,
                        time.perf_counter() - started, by_others=len(todo) - len(mine) - failed, failed=failed)


def _score_claimed(todo: list[str], objects: dict, store: Store, scorer: Scorer, callback, skipped: int,
                   poll: float, *, definition: str, checkpoint_hash: str, seed: int, **common) -> list[ScoreRow]:
    """Score each policy of `todo` this writer can claim; then wait for those another writer holds,
    taking over any whose writer died. Returns the rows this writer scored."""
    mine: list[ScoreRow] = []
    waiting, done = list(todo), 0
    while waiting:
        held = []
        for name in waiting:
            if store.claim(name, definition, checkpoint_hash, seed):
                row = _score(objects[name], scorer, definition=definition, checkpoint_hash=checkpoint_hash,
                             seed=seed, **common)
                store.put_score(row)
                mine.append(row)
            elif store.has(name, definition, checkpoint_hash, seed):
                row = None  # another writer scored it
            else:
                held.append(name)  # another writer is on it: look again later
                continue
            done += 1
            if callback is not None:
                callback(SearchProgress(done, len(todo), skipped, name, row))
        if held and len(held) == len(waiting):
            time.sleep(poll)  # nothing to do but wait for the other writers
        waiting = held
    return mine
