"""Racing: successive halving for the search, so that hopeless candidates cost a few images, not all.

Gao et al. (CVPR 2021, §4.4) score every one of 1,500 candidates on all 100 privacy images. A
search only needs the candidates that can still reach its top set, so `race` (used by
`ats.search.run_search(racing=...)`, `ats search --racing`) spends less: every candidate first
gets its full S_acc, those below the threshold leave; the rest are scored on a few privacy images,
then twice as many, and so on, and after each round a candidate that at least `keep` others beat
*surely* (a paired difference over the same images beyond `z` standard errors, `surely_beaten`)
is dropped. Only the survivors get the full definition's score, which alone is stored. Policies
already in the store take part as anchors (they can beat, but are never rescored). This is an
addition of this kit, not the paper's; see `docs/design.md`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ats import scores
from ats.indices import accuracy_windows
from ats.runtime import make_generator
from ats.scores import ACCURACY_THRESHOLD
from ats.store import ScoreRow

Report = Callable[[int, int, str, str], None]  # (number, total, policy, stage), after each policy of a round


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


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _accuracy_round(todo: list[str], objects: dict, threshold: float, report: Report | None, *,
                    accuracy_model, data, config, seed: int) -> list[str]:
    """The policies of `todo` whose full S_acc reaches `threshold`."""
    device = _device(accuracy_model)
    windows = [data.batch(w, device) for w in accuracy_windows(config.accuracy_runs, config.accuracy_window)]
    alive = []
    for number, name in enumerate(todo, start=1):
        score = scores.accuracy_score(accuracy_model, objects[name], windows, generator=make_generator(seed, device),
                                      config=config)
        if score.value >= threshold:
            alive.append(name)
        if report is not None:
            report(number, len(todo), name, "race: accuracy")
    return alive


def _anchor_values(anchors: list[ScoreRow], threshold: float, config, indices, order: list[int]) -> torch.Tensor:
    """Per-image S_pri of the stored rows that may beat candidates, in race order: (a, images) float64."""
    usable = [r for r in anchors if r.passes(threshold) and config.variant == "cvpr"
              and len(r.per_image) == len(indices)]
    return torch.tensor([[r.per_image[i] for i in order] for r in usable], dtype=torch.float64).reshape(
        len(usable), len(indices))


def race(todo: list[str], objects: dict, racing: Racing, *, anchors: list[ScoreRow], report: Report | None,
         privacy_model, accuracy_model, data, config, seed: int) -> tuple[list[str], int]:
    """The policies of `todo` that survive the race, and the privacy images spent on it.

    `objects` maps each name of `todo` to its Policy or Hybrid; `anchors` are the rows already
    stored under the same definition, checkpoint and seed. The privacy images are taken in a
    seeded random order, so each round's images are a fair sample of all of them.
    """
    alive = _accuracy_round(todo, objects, racing.threshold, report, accuracy_model=accuracy_model, data=data,
                            config=config, seed=seed)
    indices = scores.privacy_indices(data, config)
    order = torch.randperm(len(indices), generator=make_generator(seed)).tolist()
    device = _device(privacy_model)
    x, y = data.batch([indices[i] for i in order], device)
    anchor_values = _anchor_values(anchors, racing.threshold, config, indices, order)  # (a, images)
    values = {name: torch.empty(0) for name in alive}
    spent, previous = 0, 0
    for k, m in enumerate(racing.rounds(len(indices)), start=1):
        stage = f"race: {m}/{len(indices)} images"
        for number, name in enumerate(alive, start=1):
            part = scores.privacy_score(privacy_model, objects[name], x[previous:m], y[previous:m],
                                        generator=make_generator(seed * 1000 + k, device), config=config)
            values[name] = torch.cat([values[name], part.per_image.double()])
            spent += m - previous
            if report is not None:
                report(number, len(alive), name, stage)
        previous = m
        if len(alive) + len(anchor_values) <= racing.keep:
            continue
        table = torch.stack([values[n] for n in alive])  # (n, m)
        everyone = torch.cat([table, anchor_values[:, :m]]) if len(anchor_values) else table
        beaten = surely_beaten(table, everyone, racing.z)
        alive = [n for n, b in zip(alive, beaten.tolist()) if b < racing.keep]
    return alive, spent
