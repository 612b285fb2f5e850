"""Benchmark: attack PSNR and model accuracy per policy and gradient defense, from a benchmark CSV."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from ats import ui

DEFAULT_FILES = (Path("benchmark.csv"), Path("results") / "benchmark.csv")


@st.cache_data
def read_table(content: bytes) -> pd.DataFrame:
    import io

    try:
        table = pd.read_csv(io.BytesIO(content))
    except (ValueError, UnicodeDecodeError) as error:  # pandas' ParserError is a ValueError
        raise ValueError(f"not a readable CSV table ({error})") from error
    ui.check_benchmark_columns(table.columns)
    return table


st.title("Benchmark")
st.markdown("How well each policy and gradient defense protects against the attack (PSNR of the reconstruction; "
            "**lower is more private**) and what it costs in accuracy, over the attack set (CIFAR-100 test images "
            "0–99). Columns: " + ", ".join(f"`{c}`" for c in ui.BENCHMARK_COLUMNS) + ".")
upload = st.file_uploader("A benchmark table (.csv)", type=None)
present = next((p for p in DEFAULT_FILES if p.is_file()), None)
if upload is None and present is None:
    st.info("**Not computed yet.** The `ats benchmark` command is not available yet; when it is, its CSV "
            f"(written to {' or '.join(f'`{p}`' for p in DEFAULT_FILES)}) shows here. You can also upload a CSV "
            "with the columns above.")
    st.stop()
name = upload.name if upload is not None else str(present)
try:
    table = read_table(upload.getvalue() if upload is not None else present.read_bytes())
except ValueError as error:
    st.error(f"{name}: {error}")
    st.stop()
st.caption(f"From {name}: {len(table)} rows.")
st.dataframe(table, hide_index=True, width="stretch")
left, right = st.columns(2)
bars = px.bar(table, x="policy", y="psnr_mean", error_y="psnr_std", color="defense", barmode="group",
              title="PSNR of the reconstruction vs T(x) (↓ more private)",
              labels={"psnr_mean": "PSNR (dB)"})
left.plotly_chart(bars, width="stretch")
trade = px.scatter(table, x="psnr_mean", y="accuracy", color="defense", text="policy",
                   title="Privacy against accuracy", labels={"psnr_mean": "PSNR (dB, ← more private)",
                                                             "accuracy": "test accuracy"})
trade.update_traces(textposition="top center")
right.plotly_chart(trade, width="stretch")
