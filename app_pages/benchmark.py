"""Benchmark: attack PSNR and model accuracy per policy and gradient defense, from `ats benchmark` or run here."""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from ats import benchmark, report
from ats.federated import DEFENSES
from ats.runtime import pick_device
from ats.store import Store

DEFAULT_FILES = (Path("benchmark.csv"), Path("runs") / "*" / "benchmark.csv")  # where `ats benchmark --out` writes
APP_RUN = Path("runs") / "app-benchmark"  # where a benchmark run from this page goes


@st.cache_data
def read_table(content: bytes) -> pd.DataFrame:
    try:
        table = pd.read_csv(io.BytesIO(content))
    except (ValueError, UnicodeDecodeError) as error:  # pandas' ParserError is a ValueError
        raise ValueError(f"not a readable CSV table ({error})") from error
    table.columns = report.normalize_columns(table.columns)  # a table written by an older version
    report.check_columns(table.columns)
    return table


def run_here() -> None:
    """A small benchmark with smoke-trained models, run in this page with a progress bar."""
    with st.form("benchmark_run"):
        st.markdown("Models are trained for seconds (the smoke recipe: 200 images, 2 epochs), so the numbers only "
                    "show the protocol at work. For real numbers run `ats benchmark --preset laptop` (about 45 min on "
                    "a 2-core CPU) or `--preset paper` on a GPU.")
        left, right = st.columns(2)
        policies = left.text_input("Policies, comma-separated", "none,3-1-7")
        defenses = left.multiselect("Gradient defenses", DEFENSES, default=["none", "prune-70"])
        images = right.slider("Attack-set images", 1, 8, 2)
        iterations = right.slider("Attack iterations", 2, 200, 20)
        aware = right.checkbox("Also the policy-aware attacker", value=True)
        submitted = st.form_submit_button("Run benchmark", type="primary")
    if not submitted:
        return
    try:
        config = benchmark.BenchmarkConfig.smoke()
        config = replace(config, policies=tuple(p.strip() for p in policies.split(",") if p.strip()),
                         defenses=tuple(defenses), images=images, aware=aware, correlation=0,
                         attack=replace(config.attack, iterations=iterations))
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
    except ValueError as error:  # no CIFAR-100 copy, a foreign model file, …
        st.error(str(error))
        return
    report.write_csv(result, APP_RUN / "benchmark.csv")
    bar.progress(1.0, text=f"{result.computed} cells computed, {len(result.rows) - result.computed} reused, "
                           f"{result.seconds:.0f} s")
    st.session_state["benchmark_file"] = str(APP_RUN / "benchmark.csv")


st.title("Benchmark")
st.markdown("How well each policy and gradient defense protects against the attack (PSNR of the reconstruction; "
            "**lower is more private**) and what it costs in accuracy, over the attack set (CIFAR-100 test images "
            "0–99). `ats benchmark` writes this table; the paper's numbers stand beside ours where they exist.")
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
studies = table["study"] if "study" in table else pd.Series(["table"] * len(table))
main = table[studies == "table"]
st.dataframe(main, hide_index=True, width="stretch")
left, right = st.columns(2)
bars = px.bar(main, x="policy", y="psnr_tx_mean", error_y="psnr_tx_std", color="defense", barmode="group",
              title="PSNR of the reconstruction vs T(x) (↓ more private)", labels={"psnr_tx_mean": "PSNR (dB)"})
left.plotly_chart(bars, width="stretch")
trade = px.scatter(main, x="psnr_tx_mean", y="accuracy", color="defense", text="policy",
                   title="Privacy against accuracy", labels={"psnr_tx_mean": "PSNR (dB, ← more private)",
                                                             "accuracy": "test accuracy"})
trade.update_traces(textposition="top center")
right.plotly_chart(trade, width="stretch")
if (studies == "aware").any():
    st.subheader("An attacker who knows the policy")
    plain = main[main["defense"] == "none"].set_index("policy")["psnr_x_mean"]
    aware = table[studies == "aware"].set_index("policy")["psnr_x_mean"]
    st.dataframe(pd.DataFrame({"IG: PSNR vs x": plain.reindex(aware.index), "aware: PSNR vs x": aware}),
                 width="stretch")
if (studies == "correlation").any() and "privacy" in table:
    st.subheader("Does S_pri predict attack PSNR?")
    points = table[studies == "correlation"]
    st.plotly_chart(px.scatter(points, x="privacy", y="psnr_tx_mean", text="policy",
                               labels={"privacy": "S_pri (← more private)", "psnr_tx_mean": "PSNR vs T(x) (dB)"}),
                    width="stretch")
