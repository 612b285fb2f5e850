"""Tests for the interval and paired-test statistics in ats.stats, on data with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ats import stats


def test_holm_matches_hand_computed_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, max(2*0.03, .), max(1*0.04, 0.06)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_passes_nan_through_and_does_not_count_it():
    adjusted = stats.holm([0.02, math.nan, 0.01])
    assert math.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.02)
    assert adjusted[2] == pytest.approx(0.02)
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0] and stats.holm([]) == []


def test_bootstrap_interval_contains_true_median_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = stats.bootstrap_ci(rng.normal(10.0, 2.0, 200))
    large = stats.bootstrap_ci(rng.normal(10.0, 2.0, 5000))
    for estimate, low, high in (small, large):
        assert low <= estimate <= high and low < 10.0 < high
    assert large[2] - large[1] < (small[2] - small[1]) / 2


def test_bootstrap_is_deterministic_drops_nan_and_handles_edge_sizes():
    values = [1.0, 2.0, 3.0, 4.0, math.nan, 9.0]
    assert stats.bootstrap_ci(values, "mean", seed=3) == stats.bootstrap_ci(values, "mean", seed=3)
    assert stats.bootstrap_ci(values, "mean")[0] == pytest.approx(3.8)
    assert stats.bootstrap_ci([5.0] * 20) == (5.0, 5.0, 5.0)
    single = stats.bootstrap_ci([7.0, math.nan])
    assert single[0] == 7.0 and math.isnan(single[1]) and math.isnan(single[2])
    assert all(math.isnan(v) for v in stats.bootstrap_ci([]))
    with pytest.raises(ValueError, match="statistic"):
        stats.bootstrap_ci(values, "mode")


def test_paired_constant_shift_is_exact_and_significant():
    b = np.random.default_rng(0).normal(20.0, 3.0, 32)
    result = stats.paired_difference(b + 2.0, b)
    assert result["n"] == 32 and result["median_diff"] == pytest.approx(2.0)
    assert result["mean_diff"] == pytest.approx(2.0)
    assert result["ci_low"] == pytest.approx(2.0) and result["ci_high"] == pytest.approx(2.0)
    assert result["p"] < 0.001


def test_paired_identical_values_give_p_one():
    b = np.random.default_rng(0).normal(20.0, 3.0, 32)
    result = stats.paired_difference(b, b)
    assert result["p"] == 1.0 and result["median_diff"] == 0.0


def test_paired_zero_mean_noise_is_not_significant_and_nan_pairs_drop():
    rng = np.random.default_rng(1)
    b = rng.normal(20.0, 3.0, 32)
    a = b + rng.normal(0.0, 1.0, 32)
    a[0], b[1] = math.nan, math.nan
    result = stats.paired_difference(a, b)
    assert result["n"] == 30 and result["p"] > 0.05
    assert result["ci_low"] < 0.0 < result["ci_high"]
    assert math.isnan(stats.paired_difference([1.0], [0.0])["p"])


def test_paired_length_mismatch_raises():
    with pytest.raises(ValueError, match="length"):
        stats.paired_difference([1.0, 2.0], [1.0])


def test_correlation_ci_matches_fisher_z_by_hand():
    low, high = stats.correlation_ci(0.5, 30)
    half = 1.959964 / math.sqrt(27)
    assert low == pytest.approx(math.tanh(math.atanh(0.5) - half), abs=1e-5)
    assert high == pytest.approx(math.tanh(math.atanh(0.5) + half), abs=1e-5)
    assert low == pytest.approx(0.170, abs=1e-3) and high == pytest.approx(0.729, abs=1e-3)
    assert all(math.isnan(v) for v in stats.correlation_ci(0.5, 3))
    assert all(math.isnan(v) for v in stats.correlation_ci(math.nan, 30))


def test_correlation_carries_a_fisher_interval_that_brackets_r():
    x = np.arange(12.0)
    y = x + np.random.default_rng(2).normal(0.0, 3.0, 12)
    c = stats.correlation(list(x), list(y))
    assert c["pearson_ci_low"] < c["pearson"] < c["pearson_ci_high"]
    assert (c["pearson_ci_low"], c["pearson_ci_high"]) == stats.correlation_ci(c["pearson"], 12)
    assert math.isnan(stats.correlation([1, 2], [1, 2])["pearson_ci_low"])


def test_median_of_an_even_count_is_the_mean_of_the_middle_two():
    from ats.stats import median

    assert median([6.621, 5.167]) == pytest.approx(5.894)  # torch's median() said 5.167
    assert median([3.0, 1.0, 2.0]) == 2.0 and math.isnan(median([]))
