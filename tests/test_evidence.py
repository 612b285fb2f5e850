"""The evidence behind a report on constructed cells: leakage against the mean-colour baseline,
paired comparisons with Holm's correction, and the stage table."""
from __future__ import annotations

import numpy as np
import pytest

from ats import evidence
from ats.store import BenchmarkRow


def _row(study, policy, defense, psnr, baseline=14.0, stage=5, aligned=None):
    images = tuple({"index": i, "status": "ok", "psnr_x": float(v), "baseline_mean_colour": baseline,
                    "psnr_x_aligned": float(v if aligned is None else aligned[i])} for i, v in enumerate(psnr))
    return BenchmarkRow(study, policy, defense, "idlg", "hash", len(psnr), 100, 0, {"stage": stage}, images, 1.0)


RNG = np.random.default_rng(0)
LEAKY = 14.0 + 8 + RNG.normal(0, 2, 32)  # 8 dB above the mean colour


def test_a_cell_leaks_only_when_significantly_above_its_mean_colour():
    assert evidence.leakage(_row("table", "none", "none", LEAKY))["leaks"]
    noise = 14.0 + RNG.normal(0, 2, 32)
    assert not evidence.leakage(_row("table", "none", "none", noise))["leaks"]
    below = 9.0 + RNG.normal(0, 1, 32)  # the 9.85 dB of the old laptop report: below the baseline
    assert not evidence.leakage(_row("table", "none", "none", below))["leaks"]


def test_comparisons_are_paired_on_the_same_images_and_holm_adjusted():
    base = _row("table", "none", "none", LEAKY)
    hidden = _row("table", "3-1-7", "none", LEAKY - 5)  # exactly 5 dB lower on every image
    same = _row("table", "none", "prune-70", LEAKY + RNG.normal(0, 0.5, 32))
    aware = _row("aware", "3-1-7", "none", LEAKY - 1)
    found = {c.what: c for c in evidence.comparisons([base, hidden, same, aware])}
    assert set(found) == {"policy 3-1-7", "defense prune-70", "aware attacker on 3-1-7"}
    assert found["policy 3-1-7"].psnr_x["median_diff"] == pytest.approx(-5)
    assert found["policy 3-1-7"].significant and not found["defense prune-70"].significant
    assert found["aware attacker on 3-1-7"].reference is hidden  # against the plain attack on that policy
    raw = sorted(c.psnr_x["p"] for c in found.values())
    adjusted = sorted(c.p_adjusted for c in found.values())
    assert adjusted[0] == pytest.approx(min(1, 3 * raw[0]))  # Holm multiplies the smallest by m = 3


def test_an_image_missing_from_one_side_is_left_out_of_the_pair():
    base = _row("table", "none", "none", LEAKY)
    failed = _row("table", "3-1-7", "none", LEAKY - 2)
    failed = BenchmarkRow(*failed.key, failed.summary, ({**failed.per_image[0], "status": "failed"},
                                                         *failed.per_image[1:]), 1.0)
    (c,) = evidence.comparisons([base, failed])
    assert c.psnr_x["n"] == 31 and c.psnr_x["median_diff"] == pytest.approx(-2)


def test_the_stage_table_lists_policies_attacked_at_several_stages():
    rows = [_row("table", "none", "none", LEAKY, stage=5), _row("stages", "none", "none", LEAKY, stage=0),
            _row("table", "3-1-7", "none", LEAKY, stage=5), _row("table", "none", "prune-70", LEAKY, stage=5)]
    assert [(r.policy, r.summary["stage"]) for r in evidence.stage_rows(rows)] == [("none", 0), ("none", 5)]


def test_p_values_read_as_prose_in_the_report():
    from ats.tables import _p_is

    assert _p_is(0.0004) == "p < 0.001"  # not "p = < 0.001"
    assert _p_is(0.01234) == "p = 0.012"
