"""Search explorer: a results database of policy scores, its Pareto front, and the selected policies."""
from __future__ import annotations

import hashlib
import importlib.util
import tempfile
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ats import data, scores, search
from ats.distributed import RayOptions
from ats.published import PAPER_POLICIES
from ats.scoring import ScoringSetup
from ats.selection import Selection, pareto_front, select
from ats.store import Store, existing_database

SOURCES = {"path": "Open a database file", "upload": "Upload a database", "run": "Run a small search"}
DEFAULT_DB = "results.db"


def data_problem() -> str | None:
    """Why a search cannot run here (no CIFAR-100 test set), or None."""
    try:
        data.load_dataset("cifar100", "test")
    except data.DataNotFoundError as error:
        return str(error).split(". ")[0]
    return None


def in_app_words(error: ValueError, path: Path, shown: str) -> str:
    """A store's message with the file's own name and without command-line wording."""
    return str(error).replace(str(path), shown).replace("another --db", "another file")


def describe_group(definition: str, checkpoint: str, seed: int, rows: int) -> str:
    """"resnet20 · S_pri on 4 images × 21 points · S_acc on 2 windows of 100 …" from a score definition."""
    fields = dict(part.split("=", 1) for part in definition.split() if "=" in part)
    if not {"arch", "pri", "acc"} <= set(fields):
        return f"{definition} · checkpoint {checkpoint} · seed {seed} ({rows} policies)"
    images, _, points = fields["pri"].partition("x")
    images = images.replace("cvpr:", "").replace("per-class:", "per class ")
    runs, _, window = fields["acc"].partition("x")
    return (f"{fields['arch']} · S_pri on {images} images × {points} points · S_acc on {runs} windows of {window} · "
            f"checkpoint {checkpoint[:12]} · seed {seed} ({rows} policies)")


@st.cache_resource
def scoring(checkpoint: str, stamp: float) -> ScoringSetup:
    """Smoke-preset scoring on `checkpoint`, else ("") an untrained resnet20; `stamp` is the file's mtime."""
    return ScoringSetup.load("smoke", checkpoint=checkpoint or None, untrained=not checkpoint, seed=0)


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def small_search(path: Path, count: int, images: int, seed: int, on_ray: bool = False) -> None:
    """Score `count` seeded candidates (and the paper's policies) into `path`, with a progress bar;
    `on_ray`: as Ray tasks on this machine's cluster (`ats.distributed`; started on first use)."""
    checkpoint = scores.default_score_checkpoint()
    found = checkpoint.is_file()
    if not found:
        st.info(f"The tiny-data S_pri model `{checkpoint.name}` is not available yet; this search uses an "
                "untrained resnet20, so its S_pri values are not the paper's.")
    setup = scoring(str(checkpoint) if found else "", checkpoint.stat().st_mtime if found else 0.0)
    setup = setup.with_config(privacy_images=images)
    policies = list(PAPER_POLICIES) + [str(p) for p in search.candidates(count, seed)]
    bar = st.progress(0.0, text="scoring…")

    def report(progress: search.SearchProgress) -> None:
        bar.progress(progress.done / max(1, progress.total),
                     text=f"{progress.stage}: {progress.policy} ({progress.done}/{progress.total})")

    existed = path.exists()
    try:
        with Store.open(path) as store:
            result = search.run_search(policies, store=store, **setup.inputs(seed),
                                       checkpoint_hash=setup.checkpoint_hash, callback=report,
                                       ray=RayOptions() if on_ray else None)
    except BaseException:  # leave no empty database behind for the next visit to open
        if not existed:
            path.unlink(missing_ok=True)
        raise
    bar.progress(1.0, text=f"scored {result.scored} policies ({result.skipped} already stored) in "
                           f"{result.seconds:.0f} s" + (" on Ray" if on_ray else ""))
    if result.failed:
        st.warning(f"{result.failed} policies failed on Ray and were left out; run the search again to retry them.")


def database_path(source: str) -> tuple[Path, str] | None:
    """The database the user chose and the name to call it by, or None (with a message) when there is none."""
    if source == "path":
        text = st.text_input("Results database", value=st.session_state.get("search_db", DEFAULT_DB))
        if text.strip() == DEFAULT_DB and not Path(DEFAULT_DB).is_file():
            st.info(f"There is no {DEFAULT_DB} in this folder yet: type the path of a database written by "
                    "`ats search`, upload one, or run a small search.")
            return None
        path = existing_database(text)
        return path, str(path)
    if source == "upload":
        file = st.file_uploader("A results .db written by `ats search`", type=None)
        if file is None:
            st.info("Upload a results database to explore it.")
            return None
        path = Path(tempfile.gettempdir()) / f"ats-upload-{hashlib.sha256(file.getvalue()).hexdigest()[:16]}.db"
        path.write_bytes(file.getvalue())
        return path, file.name
    problem = data_problem()
    if problem:
        st.info(f"A search scores policies on the CIFAR-100 test set, which is not here ({problem}). Point "
                "`ATS_DATA_DIR` at a folder holding `cifar100_test.npz` and restart the app; meanwhile open or "
                "upload a database.")
    with st.form("search"):
        left, right = st.columns(2)
        target = left.text_input("Write results to", value=str(Path(tempfile.gettempdir()) / "ats-app-search.db"))
        count = left.slider("Random candidates (the paper: 1,500)", 1, 64, 8)
        images = right.slider("Privacy images per policy", 1, 100, 4)
        seed = right.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0)
        on_ray = right.checkbox("Run on Ray", value=False, disabled=not ray_installed(),
                                help="Score the policies as Ray tasks, one CPU each, on this machine's Ray cluster "
                                     "(started on first use: about 15 s)" if ray_installed() else
                                "Ray is not installed: pip install 'ats[ray]'")
        submitted = st.form_submit_button("Run search", type="primary", disabled=bool(problem))
    path = Path(target).expanduser()
    if submitted:
        small_search(path, int(count), int(images), int(seed), on_ray=bool(on_ray))
        st.session_state["search_db"] = str(path)
    if not path.is_file():
        st.caption("No results yet: press **Run search**.")
        return None
    return path, str(path)


def scatter(rows: list, selection: Selection) -> go.Figure:
    figure = go.Figure()
    passed = {r.policy for r in selection.ranked}
    top = {r.policy for r in selection.top}
    for name, members, marker in (
        ("rejected (S_acc below threshold)", [r for r in rows if r.policy not in passed], {"color": "#bbbbbb"}),
        ("passed", [r for r in rows if r.policy in passed and r.policy not in top], {"color": "#1f77b4"}),
        ("selected (top)", [r for r in rows if r.policy in top], {"color": "#d62728", "symbol": "star", "size": 16}),
    ):
        figure.add_scatter(x=[r.privacy for r in members], y=[r.accuracy for r in members], mode="markers",
                           name=name, marker={"size": 9, **marker}, customdata=[r.policy for r in members],
                           hovertemplate="%{customdata}<br>S_pri %{x:.4f}<br>S_acc %{y:.2f}<extra></extra>")
    pareto = pareto_front(selection.ranked)  # of the policies that pass, by S_pri: a staircase, no rejected point
    figure.add_scatter(x=[r.privacy for r in pareto], y=[r.accuracy for r in pareto], mode="lines",
                       name="Pareto front of the passing policies", line={"dash": "dot", "color": "#2ca02c"},
                       hoverinfo="skip")
    figure.add_hline(y=selection.threshold, line_dash="dash", annotation_text=f"threshold {selection.threshold:g}")
    figure.update_layout(height=480, xaxis_title="S_pri (← more private)", yaxis_title="S_acc (↑ better accuracy)",
                         clickmode="event+select", legend={"orientation": "h", "y": -0.2})
    return figure


def send_to_playground(policy: str) -> None:
    st.session_state["send_policy"] = policy
    st.session_state["current_policy"] = policy
    st.switch_page("app_pages/playground.py")


st.title("Search explorer")
st.markdown("Each point is a candidate policy scored by `ats search`: left is more private, up is better expected "
            "accuracy. The search keeps the policies above the threshold, ranks them by S_pri, and proposes the "
            "best and a hybrid of policies that share no op. **Click a point** to try that policy in the playground.")
opened = "search_db" in st.session_state or Path("results.db").is_file()
source = st.radio("Results", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="search_source",
                  index=0 if opened else 2)
try:
    chosen_db = database_path(source)
except ValueError as error:
    st.error(str(error))
    st.stop()
if chosen_db is None:
    st.stop()
path, shown = chosen_db
try:
    with Store.open(path) as store:
        groups = store.groups()
        if not groups:
            st.info(f"{shown} holds no scores yet.")
            st.stop()
        group = st.selectbox("Scores of", groups, key="search_group",
                             format_func=lambda g: describe_group(g.definition, g.checkpoint, g.seed, g.rows))
        rows = store.get_scores(group.definition, group.checkpoint, group.seed)
except ValueError as error:
    st.error(in_app_words(error, path, shown))
    st.stop()

threshold = st.number_input("Accuracy threshold on S_acc (the paper: −85 for windows of 100 images)",
                            value=scores.ACCURACY_THRESHOLD, step=5.0)
selection = select(rows, threshold=float(threshold))
m = st.columns(3)
m[0].metric("policies", selection.candidates)
m[1].metric("pass the threshold", len(selection.ranked))
m[2].metric("best", selection.top[0].policy if selection.top else "—")
st.markdown(f"**Hybrid of disjoint top policies:** `{selection.hybrid}`" if selection.hybrid else
            "**Hybrid:** none (the top policies share an op, or too few pass)")
if selection.note:
    st.warning(selection.note)
event = st.plotly_chart(scatter(rows, selection), width="stretch", key="search_scatter", on_select="rerun",
                        selection_mode="points")
clicked = [p.get("customdata") for p in (event.selection.points if event else []) if p.get("customdata")]
if clicked:
    send_to_playground(clicked[0])

left, right = st.columns([3, 1])
options = [str(selection.hybrid)] * bool(selection.hybrid) + [r.policy for r in selection.ranked] or [r.policy for r in rows]
chosen = left.selectbox("Or choose a policy", options)
right.write("")
if right.button("Open in the playground", type="primary"):
    send_to_playground(chosen)
table = pd.DataFrame([{**r.to_dict(), "passes": r.passes(selection.threshold),
                       "Pareto": r in selection.pareto} for r in rows]).sort_values("privacy")
st.dataframe(table, hide_index=True, width="stretch")
