"""Scores: S_pri and S_acc of a policy, the similarity curve behind S_pri, and reference points."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from ats import data, scores
from ats.policy import parse_policy
from ats.published import PAPER_POLICIES
from ats.scoring import ScoringSetup
from ats.search import reference_policies

UNTRAINED = "untrained resnet20 (quick look; not the paper's setting)"


@st.cache_resource
def scoring(choice: str, stamp: float) -> ScoringSetup:
    """Smoke-preset scoring on the checkpoint `choice` (or UNTRAINED); `stamp` is the file's mtime."""
    untrained = choice == UNTRAINED
    return ScoringSetup.load("smoke", checkpoint=None if untrained else choice, untrained=untrained, seed=0)


@st.cache_data(show_spinner=False)
def score(policy: str, choice: str, stamp: float, images: int, windows: int, seed: int) -> dict:
    """S_pri, S_acc and the mean similarity curve of one policy (cached per setting)."""
    setup = scoring(choice, stamp).with_config(privacy_images=images, accuracy_runs=windows)
    privacy, accuracy = setup.score(policy, seed=seed)
    return {"policy": policy, "S_pri": privacy.value, "S_acc": accuracy.value,
            "S_acc per image": accuracy.normalized, "passes": accuracy.passes, "curve": privacy.curve.tolist()}


st.title("Privacy and accuracy scores")
st.markdown(
    "ATS ranks a policy **without running an attack**. **S_pri** walks a straight path from noise to the "
    "transformed image and asks how similar the model's gradient is along the way to the gradient at the image: "
    "if the gradient already points the right way far from the image, an attacker who follows it finds the image "
    "(high similarity = leaky, **lower is more private**). **S_acc** scores how well an untrained network "
    "separates the transformed images (Jacobian correlation; **higher is better**); policies below "
    f"{scores.ACCURACY_THRESHOLD:g} are rejected by the search.")

try:
    data.load_dataset("cifar100", "test")
    missing = None
except data.DataNotFoundError as error:
    missing = str(error).split(". ")[0]
if missing:
    st.info(f"Scores are computed on CIFAR-100 test images, which are not here ({missing}). Point `ATS_DATA_DIR` at "
            "a folder holding `cifar100_test.npz` and restart the app.")
checkpoint = scores.default_score_checkpoint()
choices = ([str(checkpoint)] if checkpoint.is_file() else []) + [UNTRAINED]
if not checkpoint.is_file():
    st.info(f"The tiny-data S_pri model `{checkpoint.name}` is not available yet (build it with "
            f"`ats train --recipe tiny --out {checkpoint}`); scores below use an untrained model instead.")
with st.form("scores"):
    left, right = st.columns(2)
    policy_text = left.text_input("Policy", value=st.session_state.get("current_policy", "3-1-7"))
    choice = left.selectbox("S_pri model", choices)
    images = right.slider("Privacy images (the paper: 100)", 1, 100, 8)
    windows = right.slider("Accuracy windows of 100 images (the paper: 10)", 1, 10, 2)
    extra = right.slider("Random reference policies", 0, 8, 3)
    submitted = st.form_submit_button("Compute scores", type="primary", disabled=bool(missing))

if not submitted:
    st.caption("Press **Compute scores**: each policy takes a few seconds on a CPU; results are cached.")
    st.stop()
stamp = checkpoint.stat().st_mtime if choice == str(checkpoint) else 0.0  # a retrained model is a new one
try:
    policy = str(parse_policy(policy_text))
    scoring(choice, stamp)
except ValueError as error:
    st.error(str(error))
    st.stop()
st.session_state["current_policy"] = policy
references = [p for p in reference_policies(extra, seed=0) if p != policy]
rows = []
bar = st.progress(0.0, text="scoring…")
try:
    for number, name in enumerate([policy, *references], start=1):
        bar.progress((number - 1) / (len(references) + 1), text=f"scoring {name} ({number}/{len(references) + 1})")
        rows.append(score(name, choice, stamp, images, windows, 0))
except ValueError as error:  # e.g. a checkpoint that is not an ats checkpoint
    st.error(str(error))
    st.stop()
bar.progress(1.0, text=f"scored {len(rows)} policies")
current = rows[0]
none = next((r for r in rows if r["policy"] == "none"), None) or score("none", choice, stamp, images, windows, 0)
m = st.columns(3)
m[0].metric("S_pri (lower = more private)", f"{current['S_pri']:.4f}",
            delta=f"{current['S_pri'] - none['S_pri']:+.4f} vs no policy", delta_color="inverse")
m[1].metric("S_acc (higher = better)", f"{current['S_acc']:.2f}", delta=f"{current['S_acc'] - none['S_acc']:+.2f} vs no policy")
m[2].metric(f"passes the paper's threshold {scores.ACCURACY_THRESHOLD:g}", "yes" if current["passes"] else "no")
if not current["passes"]:
    st.caption(f"**Why no:** the threshold {scores.ACCURACY_THRESHOLD:g} is the paper's, tuned on ResNet20-4 (width 64) "
               f"over windows of 100 images. These scores use a {scoring(choice, stamp).config.arch} (width 16), whose "
               f"S_acc is lower for every policy (no policy: {none['S_acc']:.1f} here), so the threshold rejects even "
               f"the paper's own 3-1-7. Per image it does not help: S_acc per image is {current['S_acc per image']:.2f} "
               f"against the threshold's {scores.ACCURACY_THRESHOLD / 100:g} (−85 over 100 images). Compare S_acc "
               "with no policy's (the delta above) instead.")

left, right = st.columns(2)
curve = go.Figure()
for row in rows[:1] + [r for r in rows if r["policy"] == "none"]:
    k = torch.linspace(0, 1, len(row["curve"])).tolist()
    curve.add_scatter(x=k, y=row["curve"], mode="lines+markers", name=row["policy"])
curve.update_layout(title="Gradient similarity along the path noise → T(x)", height=380,
                    xaxis_title="position on the path (0 = noise, 1 = the image)",
                    yaxis_title="mean cosine to the image's gradient")
left.plotly_chart(curve, width="stretch")
table = pd.DataFrame([{k: v for k, v in r.items() if k not in ("curve", "passes")} for r in rows])
table["kind"] = ["this policy"] + ["the paper's" if p in PAPER_POLICIES else "random" for p in table["policy"][1:]]
scatter = go.Figure()
for kind, symbol, size in (("random", "circle", 9), ("the paper's", "diamond", 11), ("this policy", "star", 18)):
    part = table[table["kind"] == kind]
    scatter.add_scatter(x=part["S_pri"], y=part["S_acc"], mode="markers+text", text=part["policy"],
                        textposition="top center", name=kind, marker={"symbol": symbol, "size": size})
scatter.add_hline(y=scores.ACCURACY_THRESHOLD, line_dash="dash", annotation_text="accuracy threshold")
scatter.update_layout(title="Where the policy sits", height=380, xaxis_title="S_pri (← more private)",
                      yaxis_title="S_acc (↑ better accuracy)")
right.plotly_chart(scatter, width="stretch")
st.dataframe(table, hide_index=True, width="stretch")
