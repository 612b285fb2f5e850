"""Benchmark: does the undefended attack leak, and how much does each policy and gradient defense lower
what it recovers, with intervals and paired tests (Gao et al., CVPR 2021, Tables 1 and 3), from
`ats benchmark` or run here. Every number comes from `ats` (`ats.report.write_csv`'s table)."""
from __future__ import annotations

import io
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from ats import benchmark, data, figures, report
from ats.benchmark import BenchmarkResult
from ats.federated import DEFENSES
from ats.indices import ATTACK_SET
from ats.privacy import DP_DELTA
from ats.runtime import pick_device
from ats.store import Store
from ats.threats import parse_threat

DEFAULT_FILES = (Path("benchmark.csv"), Path("runs") / "*" / "benchmark.csv")  # where `ats benchmark --out` writes
APP_RUN = Path("runs") / "app-benchmark"  # where a benchmark run from this page goes
# The columns of `report.CSV_COLUMNS` behind the evidence (baselines, intervals, leakage, paired tests);
# tables written by older versions lack them and are shown without it.
EVIDENCE_COLUMNS = ("stage", "psnr_x_median", "psnr_x_ci_low", "psnr_x_ci_high", "psnr_x_aligned_median",
                    "psnr_tx_median", "baseline_grey_median", "baseline_mean_colour_median", "baseline_tx_median",
                    "leaks", "leak_margin", "diff_median", "diff_ci_low", "diff_ci_high", "p_adjusted")
PSNR_X = "PSNR vs x, median [95 % CI]"
DIFF = "Δ vs reference [95 % CI]"


@st.cache_data
def read_table(content: bytes) -> pd.DataFrame:
    try:
        table = pd.read_csv(io.BytesIO(content))
    except (ValueError, UnicodeDecodeError) as error:  # pandas' ParserError is a ValueError
        raise ValueError(f"not a readable CSV table ({error})") from error
    table.columns = report.normalize_columns(table.columns)  # a table written by an older version
    missing = [c for c in report.REQUIRED_COLUMNS if c not in table.columns]
    if missing:  # the uploader's label already lists what a table needs: name only what this one lacks
        raise ValueError(f"lacks the column{'s' * (len(missing) > 1)} {', '.join(missing)}")
    return table


def data_problem() -> str | None:
    """Why a benchmark cannot run here, or None. Only the test split is looked for (the train split, 150 MB,
    is read when a run starts and comes with it in every layout `ats.data` reads)."""
    try:
        data.load_dataset("cifar100", "test")
    except data.DataNotFoundError as error:
        return str(error).split(". ")[0]
    return None


# --- showing the table's columns ------------------------------------------------------------------

def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _round(value, digits: int = 1) -> float | None:
    value = _number(value)
    return None if value is None else round(value, digits)


def _count(images, failed) -> int | None:
    """The images a cell finished: its images less the failed ones."""
    images, failed = _number(images), _number(failed)
    return None if images is None else int(images - (failed or 0))


def _interval(row, prefix: str) -> str:
    """"8.2 [8.0, 8.4]": `<prefix>_median` and its interval `<prefix>_ci_low/high` ("–" when absent)."""
    median = _number(row[f"{prefix}_median"])
    if median is None:
        return "–"
    low, high = (_number(row[f"{prefix}_ci_{side}"]) for side in ("low", "high"))
    return f"{median:.1f} [{'–' if low is None else f'{low:.1f}'}, {'–' if high is None else f'{high:.1f}'}]"


def _leaks(row) -> str:
    """Whether the cell scores significantly above the mean-colour baseline (`ats.evidence.leakage`)."""
    leaks = row["leaks"]
    if isinstance(leaks, str):
        leaks = {"true": True, "false": False}.get(leaks.strip().lower())
    elif _number(leaks) is None:
        leaks = None
    if leaks is None:
        return "–"
    margin = _number(row["leak_margin"])
    return f"yes ({margin:+.1f} dB)" if bool(leaks) and margin is not None else (
        "yes" if bool(leaks) else "no leakage measured")


def _p(row) -> str:
    p = _number(row["p_adjusted"])
    return "–" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


# label -> (the CSV columns it needs, how a row shows it)
COLUMNS = {
    "study": (("study",), lambda r: r["study"]),
    "model": (("arch",), lambda r: r["arch"]),
    "stage (epochs)": (("stage",), lambda r: None if _number(r["stage"]) is None else int(r["stage"])),
    "policy": (("policy",), lambda r: r["policy"]),
    "threat": (("threat",), lambda r: r["threat"] if isinstance(r["threat"], str) else "fedsgd"),
    "defense": (("defense",), lambda r: r["defense"]),
    "attack": (("attack",), lambda r: r["attack"]),
    "n": (("images", "failed"), lambda r: _count(r["images"], r["failed"])),
    PSNR_X: (("psnr_x_median", "psnr_x_ci_low", "psnr_x_ci_high"), lambda r: _interval(r, "psnr_x")),
    "aligned": (("psnr_x_aligned_median",), lambda r: _round(r["psnr_x_aligned_median"])),
    "vs T(x), median": (("psnr_tx_median",), lambda r: _round(r["psnr_tx_median"])),
    "PSNR vs x, mean": (("psnr_x_mean",), lambda r: _round(r["psnr_x_mean"], 2)),
    "PSNR vs T(x), mean": (("psnr_tx_mean",), lambda r: _round(r["psnr_tx_mean"], 2)),
    "grey": (("baseline_grey_median",), lambda r: _round(r["baseline_grey_median"])),
    "mean colour": (("baseline_mean_colour_median",), lambda r: _round(r["baseline_mean_colour_median"])),
    "T(x) as the guess": (("baseline_tx_median",), lambda r: _round(r["baseline_tx_median"])),
    "leaks?": (("leaks", "leak_margin"), _leaks),
    DIFF: (("diff_median", "diff_ci_low", "diff_ci_high"), lambda r: _interval(r, "diff")),
    "p (Holm)": (("p_adjusted",), _p),
    "accuracy (%)": (("accuracy",), lambda r: _round(100 * (_number(r["accuracy"]) or math.nan))),
    "ε one update": (("epsilon_update",), lambda r: _round(r["epsilon_update"], 2)),
    "ε its training": (("epsilon_train",), lambda r: _round(r["epsilon_train"], 2)),
    "paper PSNR": (("paper_psnr",), lambda r: _round(r["paper_psnr"], 2)),
    "paper acc.": (("paper_accuracy",), lambda r: _round(r["paper_accuracy"], 2)),
}


def shown(rows: pd.DataFrame, labels, rename: dict | None = None) -> pd.DataFrame:
    """`rows` as the columns `labels` (`COLUMNS`) whose CSV columns the table holds."""
    present = [label for label in labels if set(COLUMNS[label][0]) <= set(rows.columns)]
    out = pd.DataFrame({label: [COLUMNS[label][1](r) for _, r in rows.iterrows()] for label in present},
                       columns=present)
    return out.rename(columns=rename or {})


# --- running a small benchmark here --------------------------------------------------------------

def draw_grids(result: BenchmarkResult, workdir: Path) -> list[str]:
    """The reconstruction grids of the table and the regimes (`ats.figures`), as PNGs in `workdir`."""
    n = min(result.config.grid_images, result.config.images)
    if n <= 0:
        return []
    x = data.load_dataset("cifar100", "test").batch(ATTACK_SET[:n], "cpu")[0]
    out = []
    for study in ("table", "regime"):
        saved = figures.save_grid(figures.grid_rows(result, workdir, x, study), workdir / f"grid-{study}.png",
                                  title=f"{study}: run on this page")
        if saved is not None:
            out.append(str(saved))
    return out


def run_here() -> None:
    """A small benchmark with smoke-trained models, run in this page with a progress bar."""
    problem = data_problem()
    if problem:
        st.info(f"A benchmark trains and attacks on CIFAR-100, which is not here ({problem}). Point `ATS_DATA_DIR` "
                "at a folder holding `cifar100_train.npz` (or its parts) and `cifar100_test.npz`, then restart the "
                "app; a table from `ats benchmark` can still be uploaded below.")
    with st.form("benchmark_run"):
        st.markdown("Models are trained for seconds (the smoke recipe: 200 images, 2 epochs), so the numbers only "
                    "show the protocol at work. With an even number of images, the undefended attack also runs on a "
                    "batch of 2 and on a FedAvg client's update (`batch-2`, `fedavg-1-2`). For real numbers run "
                    "`ats benchmark --preset laptop` (about 51 min on a 2-core CPU) or `--preset paper` on a GPU.")
        left, right = st.columns(2)
        policies = left.text_input("Policies, comma-separated", "none,3-1-7")
        defenses = left.multiselect("Gradient defenses", DEFENSES, default=["none", "prune-70"])
        images = right.slider("Attack-set images", 1, 8, 2)
        iterations = right.slider("Attack iterations", 2, 200, 20)
        aware = right.checkbox("Also the policy-aware attacker", value=True)
        submitted = st.form_submit_button("Run benchmark", type="primary", disabled=bool(problem))
    if not submitted:
        return
    try:
        config = benchmark.BenchmarkConfig.smoke()
        config = replace(config, policies=tuple(p.strip() for p in policies.split(",") if p.strip()),
                         defenses=tuple(defenses), images=images, aware=aware, correlation=0,
                         attack=replace(config.attack, iterations=iterations),
                         threats=tuple(t for t in config.threats if images % parse_threat(t).client_images == 0))
    except ValueError as error:
        st.error(str(error))
        return
    APP_RUN.mkdir(parents=True, exist_ok=True)
    bar = st.progress(0.0, text="starting")
    try:
        with Store.open(APP_RUN / "results.db") as store:
            result = benchmark.run_benchmark(
                config, store=store, workdir=APP_RUN, device=pick_device(),
                callback=lambda e: bar.progress(min(1.0, e.done / max(1, e.total)), text=e.message[:120]))
        grids = draw_grids(result, APP_RUN)
    except ValueError as error:  # no CIFAR-100 copy, a foreign model file, …
        st.error(str(error))
        return
    report.write_csv(result, APP_RUN / "benchmark.csv")
    bar.progress(1.0, text=f"{result.computed} cells computed, {len(result.rows) - result.computed} reused, "
                           f"{result.seconds:.0f} s")
    st.session_state["benchmark_file"] = str(APP_RUN / "benchmark.csv")
    st.session_state["benchmark_grids"] = grids


# --- the results -------------------------------------------------------------------------------

def show_baselines(table: pd.DataFrame, studies: pd.Series) -> None:
    st.subheader("Does the undefended attack leak?")
    if "baseline_mean_colour_median" not in table:
        st.caption("This table has no baselines (what trivial guesses score), so whether the attack leaks at all "
                   "cannot be read from it.")
        return
    undefended = table[(table["policy"] == "none") & (table["defense"] == "none")
                       & studies.isin(["table", "stages", "regime"])]
    st.dataframe(shown(undefended, ["study", "model", "stage (epochs)", "attack", "n", PSNR_X, "aligned", "grey",
                                    "mean colour", "T(x) as the guess", "leaks?"]), hide_index=True, width="stretch")
    st.caption("PSNR (dB) against the original x on the same images: of the reconstruction, of flat grey, and of "
               "each image's own mean colour. A cell **leaks** when it scores significantly above the mean colour "
               "(paired 95 % bootstrap interval above zero and Wilcoxon p < 0.05); otherwise it says "
               "*no leakage measured*, and no defense can be shown to help there.")


def show_table(main: pd.DataFrame) -> None:
    st.subheader("Policies and defenses")
    means = [] if "psnr_x_median" in main else ["PSNR vs x, mean", "PSNR vs T(x), mean"]
    budgets = dp_columns(main)
    st.dataframe(shown(main, ["policy", "defense", "stage (epochs)", "n", PSNR_X, "aligned", "vs T(x), median", *means,
                              "mean colour", "leaks?", DIFF, "p (Holm)", "accuracy (%)", *budgets],
                       rename={DIFF: "Δ vs none [95 % CI]"}), hide_index=True, width="stretch")
    st.caption("Δ vs none: the median paired difference of PSNR vs x against no defense on the same images, its "
               "95 % bootstrap interval and the Wilcoxon p-value, Holm-adjusted over every comparison of the run."
               + (f" DP-SGD rows carry their privacy budget ε at δ = {DP_DELTA:g}: of the one update the attacker "
                  "inverts, and of the training that gave their model." if budgets else ""))
    show_paper(main)
    left, right = st.columns(2)
    if {"psnr_x_median", "psnr_x_ci_low", "psnr_x_ci_high"} <= set(main.columns):
        y, plot = "psnr_x_median", main.assign(above=main["psnr_x_ci_high"] - main["psnr_x_median"],
                                               below=main["psnr_x_median"] - main["psnr_x_ci_low"])
        bars = px.bar(plot, x="policy", y=y, error_y="above", error_y_minus="below", color="defense", barmode="group",
                      title="PSNR vs x, median and 95 % CI (↓ more private)", labels={y: "PSNR (dB)"})
        if "baseline_mean_colour_median" in main and main["baseline_mean_colour_median"].notna().any():
            bars.add_hline(y=float(main["baseline_mean_colour_median"].median()), line_dash="dash",
                           annotation_text="mean-colour baseline")
    else:  # a table of an older version: means and standard deviations against T(x)
        y, bars = "psnr_tx_mean", px.bar(main, x="policy", y="psnr_tx_mean", error_y="psnr_tx_std", color="defense",
                                         barmode="group", title="PSNR of the reconstruction vs T(x) (↓ more private)",
                                         labels={"psnr_tx_mean": "PSNR (dB)"})
    left.plotly_chart(bars, width="stretch")
    right.plotly_chart(trade_off(main, y), width="stretch")


def dp_columns(rows: pd.DataFrame) -> list[str]:
    """The ε columns, where some row of `rows` is a DP-SGD defense with its budget."""
    return [label for label in ("ε one update", "ε its training")
            if COLUMNS[label][0][0] in rows and pd.to_numeric(rows[COLUMNS[label][0][0]], errors="coerce").notna().any()]


def show_threats(threats: pd.DataFrame) -> None:
    """The threat study: the undefended attack on a batch's one gradient or a FedAvg client's weight
    difference, paired with FedSGD (every image its own gradient) on the same images."""
    st.subheader("Beyond one gradient: other threat models")
    st.dataframe(shown(threats, ["threat", "policy", "attack", "n", PSNR_X, "aligned", "mean colour", "leaks?",
                                 DIFF, "p (Holm)"], rename={DIFF: "Δ vs FedSGD [95 % CI]"}),
                 hide_index=True, width="stretch")
    st.caption("`batch-B`: B images behind one gradient, labels inferred from the last layer; `fedavg-E-K`: a "
               "client's weight difference after E local epochs over K one-image batches, inverted by simulating the "
               "local steps. Δ vs FedSGD: paired with the same images attacked one gradient each.")


def trade_off(main: pd.DataFrame, y: str):
    """Privacy against accuracy, in percent (the table holds fractions); policies told apart by symbol, not
    by labels that would sit on top of each other when accuracies tie."""
    plot = main.assign(accuracy_percent=100 * pd.to_numeric(main["accuracy"], errors="coerce"))
    figure = px.scatter(plot, x=y, y="accuracy_percent", color="defense", symbol="policy", title="Privacy against accuracy",
                        labels={y: "PSNR (dB, ← more private)", "accuracy_percent": "test accuracy (%)"},
                        hover_data=["policy", "defense"])
    figure.update_traces(marker={"size": 12})
    top = plot["accuracy_percent"].max()
    figure.update_yaxes(range=[0, 100.0 if math.isnan(top) else max(1.0, 1.2 * top)])
    return figure


def show_paper(main: pd.DataFrame) -> None:
    """Ours beside the paper's numbers, where the table has them (kept out of the wide table above)."""
    if "paper_psnr" not in main or not pd.to_numeric(main["paper_psnr"], errors="coerce").notna().any():
        return
    with st.expander("Beside the paper's numbers (Gao et al., Tables 1 and 3)"):
        st.dataframe(shown(main, ["policy", "defense", "vs T(x), median", "PSNR vs T(x), mean", "paper PSNR",
                                  "accuracy (%)", "paper acc."]), hide_index=True, width="stretch")
        st.caption("The paper's PSNR is against T(x), on ResNet20-4 with IG × 4,800; ours at this table's preset.")


def show_stages(table: pd.DataFrame, studies: pd.Series) -> None:
    """The undefended attack per policy attacked at more than one training stage."""
    if "stage" not in table:
        return
    staged = table[studies.isin(["table", "stages"]) & (table["defense"] == "none")]
    staged = staged[staged.groupby("policy")["stage"].transform("nunique") > 1]
    if staged.empty:
        return
    staged = staged.assign(other=staged["policy"] != "none").sort_values(["other", "policy", "stage"])
    st.subheader("Leakage over training")
    st.dataframe(shown(staged, ["policy", "stage (epochs)", "accuracy (%)", PSNR_X, "aligned", "mean colour",
                                "leaks?"]), hide_index=True, width="stretch")
    if not {"psnr_x_median", "psnr_x_ci_low", "psnr_x_ci_high", "baseline_mean_colour_median"} <= set(staged.columns):
        return
    plot = staged.assign(above=staged["psnr_x_ci_high"] - staged["psnr_x_median"],
                         below=staged["psnr_x_median"] - staged["psnr_x_ci_low"])
    fig = px.line(plot, x="stage", y="psnr_x_median", color="policy", error_y="above", error_y_minus="below",
                  markers=True, title="Leakage over training (95 % bootstrap intervals)",
                  labels={"stage": "training stage (epochs)", "psnr_x_median": "PSNR vs x, median (dB)"})
    for policy, rows in plot.groupby("policy", sort=False):
        fig.add_scatter(x=rows["stage"], y=rows["baseline_mean_colour_median"], mode="lines",
                        line={"dash": "dash", "width": 1}, name=f"{policy}: mean-colour baseline")
    st.plotly_chart(fig, width="stretch")


def show_aware(main: pd.DataFrame, aware: pd.DataFrame) -> None:
    st.subheader("An attacker who knows the policy")
    value = PSNR_X if "psnr_x_median" in aware else "PSNR vs x, mean"
    plain = main[main["defense"] == "none"].drop_duplicates("policy")
    plain_shown = shown(plain, [value])
    plain_values = dict(zip(plain["policy"], plain_shown[value])) if value in plain_shown else {}
    view = shown(aware, ["policy", "attack", value, "aligned", DIFF, "p (Holm)"],
                 rename={value: f"aware: {value}", "aligned": "aware: aligned", DIFF: "Δ (aware − plain) [95 % CI]"})
    view.insert(2 if "attack" in view else 1, f"plain: {value}", [plain_values.get(p) for p in aware["policy"]])
    st.dataframe(view, hide_index=True, width="stretch")


def show_grids(grids: list[str] | None, uploaded: bool) -> None:
    st.subheader("Reconstructions")
    if not grids:
        st.caption("No reconstruction grid: " + ("an uploaded table holds no reconstructions." if uploaded else
                   "only a run made on this page keeps its reconstructions here (`ats benchmark --report` draws "
                   "them in its report)."))
        return
    for path in grids:
        st.image(path, caption="Rows: x, then per policy T(x), the plain attack's and the aware attacker's "
                               "reconstruction; captions: PSNR vs x / aligned PSNR (dB).")


st.title("Benchmark")
st.markdown("Does the attack recover anything at all, and how much does each policy and gradient defense lower it "
            "(PSNR of the reconstruction against the original x; **lower is more private**), at what cost in "
            "accuracy, over the attack set (CIFAR-100 test images 0–99)? Every number stands beside what trivial "
            "guesses score and a 95 % interval. `ats benchmark` writes this table; the paper's numbers stand "
            "beside ours where they exist.")
with st.expander("Run a small benchmark here"):
    run_here()
upload = st.file_uploader("A benchmark table (.csv) with the columns " + ", ".join(report.REQUIRED_COLUMNS), type=None)
found = [Path(st.session_state["benchmark_file"])] if "benchmark_file" in st.session_state else []
found += sorted((p for pattern in DEFAULT_FILES for p in Path().glob(str(pattern))), key=lambda p: -p.stat().st_mtime)
found = [p for p in dict.fromkeys(found) if p.is_file()]
present = st.selectbox("Benchmark table", found, format_func=str) if upload is None and len(found) > 1 else \
    (found[0] if found else None)
if upload is None and present is None:
    st.info("**Not computed yet.** Run `ats benchmark` (its CSV goes to "
            f"{' or '.join(f'`{p}`' for p in DEFAULT_FILES)}), run a small one above, or upload a CSV.")
    st.stop()
name = upload.name if upload is not None else str(present)
try:
    table = read_table(upload.getvalue() if upload is not None else present.read_bytes())
except ValueError as error:
    st.error(f"{name}: {error}")
    st.stop()
st.caption(f"From {name}: {len(table)} rows.")
missing = [c for c in EVIDENCE_COLUMNS if c not in table]
if missing:
    st.warning(f"This table lacks the evidence columns {', '.join(missing)} (it was written by an older "
               "`ats benchmark`): shown is what it holds; rerun the benchmark for baselines, intervals and "
               "paired tests.")
studies = table["study"] if "study" in table else pd.Series(["table"] * len(table), index=table.index)
main = table[studies == "table"]
show_baselines(table, studies)
show_table(main)
show_stages(table, studies)
if (studies == "threat").any():
    show_threats(table[studies == "threat"])
if (studies == "aware").any():
    show_aware(main, table[studies == "aware"])
if (studies == "correlation").any() and "privacy" in table:
    st.subheader("Does S_pri predict attack PSNR?")
    points, y = table[studies == "correlation"], "psnr_tx_median" if "psnr_tx_median" in table else "psnr_tx_mean"
    st.plotly_chart(px.scatter(points, x="privacy", y=y, text="policy",
                               labels={"privacy": "S_pri (← more private)", y: "PSNR vs T(x) (dB)"}),
                    width="stretch")
ours = upload is None and name == st.session_state.get("benchmark_file")
show_grids(st.session_state.get("benchmark_grids") if ours else None, upload is not None)
