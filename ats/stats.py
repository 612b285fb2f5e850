"""Statistics the benchmark report relies on: correlations, bootstrap intervals, paired tests.

Gao et al. (CVPR 2021, §4.2, Fig. 2) report Pearson r = 0.697 between S_pri and the PSNR of
attacks on 100 random policies; the ReScience 2022 reproduction found no such correlation. To say
which of the two a run supports, every number the report shows carries an uncertainty: a Fisher-z
interval on Pearson r, a percentile-bootstrap interval on per-image medians and means, and a
Wilcoxon signed-rank test of each policy against the no-defense baseline on the same images, with
Holm–Bonferroni adjustment across policies. The tests and the bootstrap come from `scipy.stats`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ats.store import BenchmarkRow

STATISTICS = {"median": np.median, "mean": np.mean}


def median(values: Sequence[float]) -> float:
    """The median of `values`, the mean of the middle two for an even count (torch's `median()`
    returns the lower one); nan for none."""
    return float(np.median(np.asarray(values, dtype=float))) if len(values) else math.nan


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence!r} must lie strictly between 0 and 1")


def correlation_ci(r: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Fisher-z interval on a Pearson r from n pairs; (nan, nan) when n <= 3 or r is nan."""
    from scipy import stats

    _check_confidence(confidence)
    if n <= 3 or not math.isfinite(r):
        return math.nan, math.nan
    half = stats.norm.ppf((1 + confidence) / 2) / math.sqrt(n - 3)
    z = math.atanh(min(max(r, -1 + 1e-15), 1 - 1e-15))  # |r| = 1 gives the interval (±1, ±1)
    return math.tanh(z - half), math.tanh(z + half)


def correlation(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """Pearson (with a 95 % Fisher-z interval) and Spearman correlation of paired values, with
    two-sided p-values; pairs with a NaN on either side are dropped."""
    from scipy import stats

    pairs = [(a, b) for a, b in zip(xs, ys) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return {"n": len(pairs), "pearson": math.nan, "pearson_p": math.nan, "spearman": math.nan,
                "spearman_p": math.nan, "pearson_ci_low": math.nan, "pearson_ci_high": math.nan}
    a, b = zip(*pairs)
    pearson, spearman = stats.pearsonr(a, b), stats.spearmanr(a, b)
    low, high = correlation_ci(float(pearson[0]), len(pairs))
    return {"n": len(pairs), "pearson": float(pearson[0]), "pearson_p": float(pearson[1]),
            "spearman": float(spearman[0]), "spearman_p": float(spearman[1]),
            "pearson_ci_low": low, "pearson_ci_high": high}


def correlation_study(rows: Sequence[BenchmarkRow]) -> dict | None:
    """S_pri against PSNR (vs T(x) and vs x) over the correlation cells; None when there are none."""
    points = [r for r in rows if r.study == "correlation"]
    if not points:
        return None
    privacy = [r.summary.get("privacy", math.nan) for r in points]
    return {"vs_transformed": correlation(privacy, [r.summary["psnr_tx_mean"] for r in points]),
            "vs_original": correlation(privacy, [r.summary["psnr_x_mean"] for r in points])}


def bootstrap_ci(values: Sequence[float], statistic: str = "median", *, confidence: float = 0.95,
                 resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high): the statistic of the finite values and its percentile-bootstrap
    interval, deterministic given seed. No values gives (nan, nan, nan); one value v gives
    (v, nan, nan), since one image says nothing about spread; all-equal values v give (v, v, v)."""
    from scipy import stats

    if statistic not in STATISTICS:
        raise ValueError(f"statistic {statistic!r} is not one of {sorted(STATISTICS)}")
    _check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples {resamples!r} must be at least 1")
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    estimate = float(STATISTICS[statistic](x))
    if x.size == 1:
        return estimate, math.nan, math.nan
    if np.ptp(x) == 0:
        return estimate, estimate, estimate
    result = stats.bootstrap((x,), STATISTICS[statistic], n_resamples=resamples,
                             confidence_level=confidence, method="percentile", vectorized=True,
                             rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return estimate, float(interval.low), float(interval.high)


def paired_difference(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
                      resamples: int = 2000, seed: int = 0) -> dict:
    """Policy values a against baseline values b on the same images (e.g. PSNR under a defense vs
    under none): n, median_diff and mean_diff of a - b, ci_low/ci_high (bootstrap interval of the
    median difference) and p (two-sided Wilcoxon signed-rank; 1.0 when every difference is zero,
    nan when n < 2). Pairs with a NaN on either side are dropped."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if x.size != y.size:
        raise ValueError(f"paired values differ in length: {x.size} policy vs {y.size} baseline")
    d = (x - y)[np.isfinite(x) & np.isfinite(y)]
    median, low, high = bootstrap_ci(d, "median", confidence=confidence, resamples=resamples,
                                     seed=seed)
    if d.size < 2:
        p = math.nan
    elif not np.any(d):
        p = 1.0
    else:
        p = float(stats.wilcoxon(d).pvalue)
    return {"n": int(d.size), "median_diff": median,
            "mean_diff": float(np.mean(d)) if d.size else math.nan,
            "ci_low": low, "ci_high": high, "p": p}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values in input order; NaNs pass through and do not count in m."""
    p = np.asarray(pvalues, dtype=float).ravel()
    adjusted = p.copy()
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    steps = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted[order] = np.minimum(steps, 1.0)
    return [float(v) for v in adjusted]
