"""The benchmark's tables: every cell with its evidence, as Markdown beside the published numbers
(Gao et al., CVPR 2021, Tables 1 and 3), and the findings the data support.

`evidence_table` is `BenchmarkResult.table()` with each cell's leakage test and paired comparison
(`ats.evidence`); the Markdown tables and `findings` are rendered from it, so no statement about
the results is hand-written: an effect is stated only when its interval excludes zero after Holm.
"""
from __future__ import annotations

import math

from ats import evidence
from ats.benchmark import BenchmarkResult
from ats.published import PAPER_CORRELATION, RESCIENCE_AWARE


_TABLES: dict[int, tuple[BenchmarkResult, list[dict]]] = {}  # the last result's table, computed once


def evidence_table(result: BenchmarkResult) -> list[dict]:
    """`result.table()` with each cell's leakage test and its paired comparison (`ats.evidence`)."""
    cached = _TABLES.get(id(result))
    if cached is not None and cached[0] is result:
        return [dict(flat) for flat in cached[1]]
    compared = {id(c.row): c for c in evidence.comparisons(result.rows)}
    out = []
    for row, flat in zip(result.rows, result.table()):
        leak = evidence.leakage(row)
        flat.update(leaks=leak["leaks"], leak_margin=leak["median_diff"], leak_ci_low=leak["ci_low"],
                    leak_ci_high=leak["ci_high"])
        c = compared.get(id(row))
        if c is not None:
            flat.update(reference=f"{c.reference.study} {c.reference.policy}/{c.reference.defense}",
                        diff_median=c.psnr_x["median_diff"], diff_ci_low=c.psnr_x["ci_low"],
                        diff_ci_high=c.psnr_x["ci_high"], diff_aligned_median=c.aligned["median_diff"],
                        p=c.psnr_x["p"], p_adjusted=c.p_adjusted)
        out.append(flat)
    _TABLES.clear()
    _TABLES[id(result)] = (result, out)
    return [dict(flat) for flat in out]


def _num(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _ci(median, low, high) -> str:
    """"19.8 [18.1, 21.5]": a median and its 95 % interval."""
    if median is None or (isinstance(median, float) and math.isnan(median)):
        return "–"
    return f"{median:.1f} [{_num(low, 1)}, {_num(high, 1)}]"


def _psnr_ci(cell: dict) -> str:
    """A cell's median PSNR against x with its 95 % interval."""
    return _ci(cell.get("psnr_x_median"), cell.get("psnr_x_ci_low"), cell.get("psnr_x_ci_high"))


def _p(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _p_is(value) -> str:
    """"p = 0.012" or "p < 0.001", for prose."""
    shown = _p(value)
    return f"p {shown}" if shown.startswith("<") else f"p = {shown}"


def _leak(flat: dict) -> str:
    return (f"yes (+{flat['leak_margin']:.1f} dB)" if flat["leaks"]
            else "**no leakage measured**")


def markdown_baselines(result: BenchmarkResult) -> str:
    """The undefended cells (table at every stage, and the regimes) beside what trivial guesses score."""
    lines = ["| study | model | stage | attack | n | PSNR vs x, median [95 % CI] | aligned | grey | mean colour "
             "| T(x) | leaks? |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for flat in evidence_table(result):
        if flat["policy"] != "none" or flat["defense"] != "none" or flat["study"] not in ("table", "stages", "regime"):
            continue
        lines.append(f"| {flat['study']} | {flat.get('arch', '–')} | {flat['stage']} | {flat['attack']} "
                     f"| {flat['images'] - flat['failed']} "
                     f"| {_psnr_ci(flat)} "
                     f"| {_num(flat['psnr_x_aligned_median'], 1)} | {_num(flat['baseline_grey_median'], 1)} "
                     f"| {_num(flat['baseline_mean_colour_median'], 1)} | {_num(flat['baseline_tx_median'], 1)} "
                     f"| {_leak(flat)} |")
    return "\n".join(lines)


def defense_label(flat: dict) -> str:
    """A defense as the tables name it; DP-SGD with its budget: "dp-1-1.1 (ε 4.24 one update, 0.59 its training, δ = 1e-05)"."""
    if flat.get("epsilon_update") is None or (isinstance(flat["epsilon_update"], float)
                                              and math.isnan(flat["epsilon_update"])):
        return flat["defense"]
    trained = flat.get("epsilon_train")
    budget = f"ε {_num(flat['epsilon_update'], 2)} one update"
    if trained is not None and not (isinstance(trained, float) and math.isnan(trained)):
        budget += f", {_num(trained, 2)} its training"
    return f"{flat['defense']} ({budget}, δ = {flat.get('delta', 1e-5):g})"


def markdown_table(result: BenchmarkResult) -> str:
    """The policy × defense table at the main stage: medians with intervals, the baselines, the paired
    difference against no defense with its Holm-adjusted p, accuracy, and the paper's numbers."""
    lines = ["| policy | defense | n | PSNR vs x [95 % CI] | aligned | vs T(x) | mean colour | leaks? "
             "| Δ vs none [95 % CI] | p (Holm) | accuracy | paper PSNR | paper acc. |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for flat in evidence_table(result):
        if flat["study"] != "table":
            continue
        diff = "–" if flat.get("diff_median") is None else _ci(flat["diff_median"], flat["diff_ci_low"],
                                                               flat["diff_ci_high"])
        lines.append(f"| {flat['policy']} | {defense_label(flat)} | {flat['images'] - flat['failed']} "
                     f"| {_psnr_ci(flat)} "
                     f"| {_num(flat['psnr_x_aligned_median'], 1)} | {_num(flat['psnr_tx_median'], 1)} "
                     f"| {_num(flat['baseline_mean_colour_median'], 1)} | {_leak(flat)} | {diff} "
                     f"| {_p(flat.get('p_adjusted'))} | {_num(100 * flat['accuracy'], 1)} % "
                     f"| {_num(flat['paper_psnr'])} | {_num(flat['paper_accuracy'])} |")
    return "\n".join(lines)


def markdown_aware(result: BenchmarkResult) -> str:
    """The plain attack and the policy-aware attacker on each policy, paired on the same images."""
    plain = {r.policy: r for r in result.rows if r.study == "table" and r.defense == "none"}
    seconds = {r.policy: r.seconds for r in result.rows if r.study == "aware"}
    lines = ["| policy | plain: PSNR vs x [95 % CI] | aware: PSNR vs x [95 % CI] | aligned: plain → aware "
             "| Δ (aware − plain) [95 % CI] | p (Holm) | cost: plain → aware | ReScience aware (vs T(x) / vs x) |",
             "|---|---|---|---|---|---|---|---|"]
    for flat in evidence_table(result):
        if flat["study"] != "aware" or flat["policy"] not in plain:
            continue
        base, ref = plain[flat["policy"]].summary, RESCIENCE_AWARE.get(flat["policy"])
        lines.append(f"| {flat['policy']} | {_psnr_ci(base)} "
                     f"| {_psnr_ci(flat)} "
                     f"| {_num(base.get('psnr_x_aligned_median'), 1)} → {_num(flat['psnr_x_aligned_median'], 1)} "
                     f"| {_ci(flat.get('diff_median'), flat.get('diff_ci_low'), flat.get('diff_ci_high'))} "
                     f"| {_p(flat.get('p_adjusted'))} | {plain[flat['policy']].seconds:.0f} s → {seconds[flat['policy']]:.0f} s "
                     f"| {f'{ref[0]} / {ref[1]}' if ref else '–'} |")
    return "\n".join(lines)


def markdown_threats(result: BenchmarkResult) -> str:
    """Beyond one gradient: each threat model (a batch's one gradient, a FedAvg update) against the
    FedSGD attack on the same policy and images, paired."""
    plain = {r.policy: r for r in result.rows if r.study == "table" and r.defense == "none"}
    lines = ["| threat | policy | clients × images | PSNR vs x [95 % CI] | aligned | mean colour | leaks? "
             "| Δ vs FedSGD [95 % CI] | p (Holm) | cost: FedSGD → threat |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row, flat in zip(result.rows, evidence_table(result)):
        if flat["study"] != "threat":
            continue
        threat = flat.get("threat", "fedsgd")
        per_client = {"batch": threat.split("-")[-1], "fedavg": threat.split("-")[-1]}.get(threat.split("-")[0], "1")
        base = plain.get(flat["policy"])
        cost = f"{base.seconds:.0f} s → {row.seconds:.0f} s" if base is not None else f"{row.seconds:.0f} s"
        lines.append(f"| {threat} | {flat['policy']} | {flat['images'] // int(per_client)} × {per_client} "
                     f"| {_psnr_ci(flat)} | {_num(flat['psnr_x_aligned_median'], 1)} "
                     f"| {_num(flat['baseline_mean_colour_median'], 1)} | {_leak(flat)} "
                     f"| {_ci(flat.get('diff_median'), flat.get('diff_ci_low'), flat.get('diff_ci_high'))} "
                     f"| {_p(flat.get('p_adjusted'))} | {cost} |")
    return "\n".join(lines) if len(lines) > 2 else "No other threat model was run (`--threats`)."


def markdown_stages(result: BenchmarkResult) -> str:
    """Leakage over training: the undefended attack per policy and stage, beside the model's accuracy."""
    lines = ["| policy | stage (epochs) | model accuracy | PSNR vs x [95 % CI] | aligned | mean colour | leaks? |",
             "|---|---|---|---|---|---|---|"]
    flats = {id(r): f for r, f in zip(result.rows, evidence_table(result))}
    for row in evidence.stage_rows(result.rows):
        flat = flats[id(row)]
        lines.append(f"| {row.policy} | {flat['stage']} | {_num(100 * flat['accuracy'], 1)} % "
                     f"| {_psnr_ci(flat)} "
                     f"| {_num(flat['psnr_x_aligned_median'], 1)} | {_num(flat['baseline_mean_colour_median'], 1)} "
                     f"| {_leak(flat)} |")
    return "\n".join(lines) if len(lines) > 2 else "No policy was attacked at more than one training stage."


def markdown_correlation(result: BenchmarkResult) -> str:
    if not result.correlation:
        return "The correlation study was not run (`correlation=0`)."
    rows = [r for r in result.rows if r.study == "correlation"]
    lines = ["| policy | S_pri | PSNR vs T(x), median | PSNR vs x, median [95 % CI] |", "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r.summary.get("privacy", math.nan)):
        s = r.summary
        lines.append(f"| {r.policy} | {_num(s.get('privacy'), 3)} | {_num(s.get('psnr_tx_median'))} "
                     f"| {_psnr_ci(s)} |")
    for name, c in result.correlation.items():
        target = "T(x)" if name == "vs_transformed" else "x"
        lines.append(f"\nS_pri against median PSNR vs {target} over n = {c['n']} policies: Pearson r = "
                     f"{_num(c['pearson'], 3)} [95 % CI {_num(c.get('pearson_ci_low'), 2)}, "
                     f"{_num(c.get('pearson_ci_high'), 2)}] ({_p_is(c['pearson_p'])}), Spearman ρ = "
                     f"{_num(c['spearman'], 3)} ({_p_is(c['spearman_p'])}).")
    return "\n".join(lines)


def findings(result: BenchmarkResult) -> list[str]:
    """What the data support, computed from them: whether the undefended attack leaks, then only the
    effects whose interval excludes zero (after Holm), then the expected effects that were not found."""
    table = [f for f in evidence_table(result) if f["study"] == "table"]
    base = next((f for f in table if f["policy"] == "none" and f["defense"] == "none"), None)
    out = []
    if base is not None:
        verdict = ("leaks" if base["leaks"] else "does **not** leak measurably, so no defense can be shown to help "
                   "at this setting")
        out.append(f"The undefended {base['attack']} attack {verdict}: median PSNR vs x "
                   f"{_psnr_ci(base)} dB against "
                   f"{_num(base['baseline_mean_colour_median'], 1)} dB for each image's mean colour and "
                   f"{_num(base['baseline_grey_median'], 1)} dB for flat grey (n = {base['images'] - base['failed']}).")
    found, missing = [], []
    for c in evidence.comparisons(result.rows):
        d = c.psnr_x
        text = (f"{c.what}: PSNR vs x {d['median_diff']:+.1f} dB [{_num(d['ci_low'], 1)}, {_num(d['ci_high'], 1)}] "
                f"against {c.reference.policy}/{c.reference.defense} ({c.reference.attack}), aligned "
                f"{c.aligned['median_diff']:+.1f} dB, {_p_is(c.p_adjusted)} (Holm), n = {d['n']}")
        (found if c.significant else missing).append(text)
    out += [f"Supported: {t}." for t in found]
    out += [f"Not supported (interval includes zero or p ≥ 0.05 after Holm): {t}." for t in missing]
    for f in evidence_table(result):
        if f["study"] == "regime":
            out.append(f"Regime {f.get('arch')} / {f['attack']} at {f['stage']} epochs: "
                       f"{_psnr_ci(f)} dB vs "
                       f"{_num(f['baseline_mean_colour_median'], 1)} dB mean colour: "
                       + ("leaks." if f["leaks"] else "no leakage measured."))
    if result.correlation:
        c = result.correlation["vs_transformed"]
        holds = c["pearson"] > 0 and c.get("pearson_ci_low", math.nan) > 0
        opposite = c["pearson"] < 0 and c.get("pearson_ci_high", math.nan) < 0
        verdict = ("a positive correlation is supported" if holds else
                   "a positive correlation is not supported; the interval excludes zero on the other side: "
                   "policies S_pri calls more leaky were attacked less well here" if opposite else
                   "a positive correlation is not supported")
        out.append(f"S_pri vs median PSNR vs T(x): r = {_num(c['pearson'], 2)} [{_num(c.get('pearson_ci_low'), 2)}, "
                   f"{_num(c.get('pearson_ci_high'), 2)}], n = {c['n']}: {verdict}"
                   f" (the paper reports r = {PAPER_CORRELATION}; the ReScience reproduction found none).")
    return out
