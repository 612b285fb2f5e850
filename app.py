"""The ats app: `streamlit run app.py` (or `make app`). A router over the pages in app_pages/."""
from __future__ import annotations

import streamlit as st

from ats.runtime import describe_device, pick_device

st.set_page_config(page_title="ats: gradient leakage", page_icon="🔓", layout="wide")

pages = [
    st.Page("app_pages/playground.py", title="Attack playground", icon="🎯", default=True),
    st.Page("app_pages/scores.py", title="Scores", icon="📏"),
    st.Page("app_pages/search_explorer.py", title="Search explorer", icon="🔎"),
    st.Page("app_pages/benchmark.py", title="Benchmark", icon="📊"),
    st.Page("app_pages/about.py", title="About", icon="📖"),
]
page = st.navigation(pages)
st.sidebar.markdown(f"**Device:** {describe_device(pick_device())}")
st.sidebar.caption("GPU when present, CPU otherwise (`ATS_DEVICE` overrides).")
page.run()
