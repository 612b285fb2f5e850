"""The ats app: `streamlit run app.py` (or `make app`). A router over the pages in app_pages/."""
from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="ats: gradient leakage", page_icon="🔓", layout="wide")

pages = [
    st.Page("app_pages/playground.py", title="Attack playground", icon="🎯", default=True),
]
st.navigation(pages).run()
