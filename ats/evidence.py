"""What a benchmark's cells support: leakage against trivial baselines, paired comparisons with
corrected p-values, and leakage over training.

Gao et al. (CVPR 2021, §5) compare policies by mean PSNR on 100 images, without intervals. Here a
number is a finding only beside its baseline and its interval:

* **Leakage.** A cell leaks when its per-image PSNR against x is significantly above what each
  image's own mean colour scores (`baseline_mean_colour`), paired on the same images: the 95 %
  bootstrap interval of the median difference lies above zero and the Wilcoxon signed-rank test
  rejects at 0.05. Otherwise it is marked "no leakage measured", whatever its number.
* **Comparisons.** Every policy and defense of the table is compared with no defense on the same
  images (and at the same stage); the aware attacker with the plain attack on the same policy.
  Each comparison is the paired difference of PSNR against x (its median, 95 % bootstrap interval,
  Wilcoxon p), and the p-values of all comparisons are adjusted together (Holm).
* **Stages.** The undefended attack at every training stage, beside the model's accuracy.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ats.stats import holm, paired_difference
from ats.store import BenchmarkRow

ALPHA = 0.05


def per_image(row: BenchmarkRow, key: str) -> dict[int, float]:
    """Image index -> the value of `key` for the finished images of `row` (NaN for missing values)."""
    out = {}
    for image in row.per_image:
        if image.get("status", "ok") != "ok":
            continue
        value = image.get(key)
        out[int(image["index"])] = math.nan if value is None else float(value)
    return out


def paired(a: BenchmarkRow, b: BenchmarkRow | None, key: str = "psnr_x", key_b: str | None = None) -> dict:
    """`paired_difference` of `key` in `a` against `key_b` (default `key`) in `b` (default: `a`
    itself), on the images both finished."""
    values_a, values_b = per_image(a, key), per_image(b if b is not None else a, key_b or key)
    common = sorted(set(values_a) & set(values_b))
    return paired_difference([values_a[i] for i in common], [values_b[i] for i in common])


def leakage(row: BenchmarkRow) -> dict:
    """Does `row` score above each image's own mean colour? The paired difference, and `leaks`."""
    d = paired(row, None, "psnr_x", "baseline_mean_colour")
    d["leaks"] = bool(d["n"] >= 2 and d["ci_low"] > 0 and d["p"] < ALPHA)
    return d


@dataclass(frozen=True)
class Comparison:
    """A cell against its reference on the same images: PSNR vs x (and aligned), paired."""

    row: BenchmarkRow
    reference: BenchmarkRow
    what: str  # "policy 3-1-7", "defense prune-70", "aware attacker on 3-1-7"
    psnr_x: dict  # paired_difference of psnr_x
    aligned: dict  # paired_difference of psnr_x_aligned
    p_adjusted: float  # Holm over every comparison of the run

    @property
    def significant(self) -> bool:
        return self.p_adjusted < ALPHA and not (self.psnr_x["ci_low"] <= 0 <= self.psnr_x["ci_high"])


def comparisons(rows: Sequence[BenchmarkRow]) -> list[Comparison]:
    """Every table cell against no defense at its stage, every aware cell and every threat cell
    (a batch's gradient, a FedAvg update) against the plain FedSGD attack on its policy; p-values
    Holm-adjusted over all of them."""
    table = {(r.policy, r.defense, r.summary.get("stage")): r for r in rows if r.study == "table"}
    pairs = []
    for (policy, defense, stage), row in table.items():
        reference = table.get(("none", "none", stage))
        if reference is None or row is reference:
            continue
        what = f"policy {policy}" if defense == "none" else (
            f"defense {defense}" if policy == "none" else f"policy {policy} with defense {defense}")
        pairs.append((row, reference, what))
    for row in rows:
        plain = table.get((row.policy, "none", row.summary.get("stage")))
        if row.study == "aware" and plain is not None:
            pairs.append((row, plain, f"aware attacker on {row.policy}"))
        if row.study == "threat" and plain is not None:
            pairs.append((row, plain, f"threat {row.summary.get('threat')} on {row.policy}"))
    tests = [(row, ref, what, paired(row, ref, "psnr_x"), paired(row, ref, "psnr_x_aligned"))
             for row, ref, what in pairs]
    adjusted = holm([t[3]["p"] for t in tests])
    return [Comparison(row, ref, what, d, a, p) for (row, ref, what, d, a), p in zip(tests, adjusted)]


def stage_rows(rows: Sequence[BenchmarkRow]) -> list[BenchmarkRow]:
    """The undefended attack at each training stage (table and stages studies), by policy then stage."""
    staged = [r for r in rows if r.study in ("table", "stages") and r.defense == "none"]
    counts = {}
    for r in staged:
        counts[r.policy] = counts.get(r.policy, 0) + 1
    staged = [r for r in staged if counts[r.policy] > 1]  # policies attacked at more than one stage
    return sorted(staged, key=lambda r: (r.policy != "none", r.policy, r.summary.get("stage", 0)))
