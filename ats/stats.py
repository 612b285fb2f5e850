"""Statistics over benchmark cells: how well the privacy score S_pri predicts attack PSNR.

Gao et al. (CVPR 2021, §4.2, Fig. 2) report Pearson r = 0.697 between S_pri and the PSNR of
attacks on 100 random policies; the ReScience 2022 reproduction found no such correlation.
Correlations come from `scipy.stats`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from ats.store import BenchmarkRow


def correlation(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """Pearson and Spearman correlation of paired values, with two-sided p-values (NaNs dropped)."""
    from scipy import stats

    pairs = [(a, b) for a, b in zip(xs, ys) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return {"n": len(pairs), "pearson": math.nan, "pearson_p": math.nan, "spearman": math.nan,
                "spearman_p": math.nan}
    a, b = zip(*pairs)
    pearson, spearman = stats.pearsonr(a, b), stats.spearmanr(a, b)
    return {"n": len(pairs), "pearson": float(pearson[0]), "pearson_p": float(pearson[1]),
            "spearman": float(spearman[0]), "spearman_p": float(spearman[1])}


def correlation_study(rows: Sequence[BenchmarkRow]) -> dict | None:
    """S_pri against PSNR (vs T(x) and vs x) over the correlation cells; None when there are none."""
    points = [r for r in rows if r.study == "correlation"]
    if not points:
        return None
    privacy = [r.summary.get("privacy", math.nan) for r in points]
    return {"vs_transformed": correlation(privacy, [r.summary["psnr_tx_mean"] for r in points]),
            "vs_original": correlation(privacy, [r.summary["psnr_x_mean"] for r in points])}
