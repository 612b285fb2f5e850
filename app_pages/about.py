"""About: the threat model and the ATS method in a few pictures, with references."""
from __future__ import annotations

import streamlit as st
import torch

from ats import data
from ats.policy import parse_policy
from ats.runtime import make_generator
from ats.viz import to_display

THREAT = """digraph {
  rankdir=LR; node [shape=box, style="rounded,filled", fillcolor="#f5f5f5", fontname="sans-serif"];
  x [label="private image x\\n(stays on the client)", fillcolor="#fde2e2"];
  t [label="policy T\\n(e.g. 3-1-7)", fillcolor="#e2f0fd"];
  g [label="gradient ∇θ loss(f(T(x)), y)\\n(+ optional defense D)"];
  s [label="server\\n(sees model, gradient,\\nbatch size, maybe labels)", fillcolor="#fff4d6"];
  r [label="reconstruction x̂\\n(optimize x̂ until its\\ngradient matches)", fillcolor="#fde2e2"];
  x -> t -> g -> s -> r;
}"""

SEARCH = """digraph {
  rankdir=LR; node [shape=box, style="rounded,filled", fillcolor="#f5f5f5", fontname="sans-serif"];
  c [label="1,500 random policies\\n(1–3 of 50 ops)"];
  a [label="S_acc ≥ −85?\\n(untrained net, Jacobian)"];
  p [label="rank by S_pri ↓\\n(trained briefly, gradient\\nsimilarity along a path)"];
  h [label="top policies + a hybrid\\nof disjoint ones", fillcolor="#e2f0fd"];
  c -> a -> p -> h; a -> x [label="reject"]; x [label="dropped", shape=plaintext];
}"""


@st.cache_data
def examples() -> tuple[list, list[str]]:
    """A sample photo and what the paper's policies make of it (seeded)."""
    x, _ = data.load_samples().batch([0, 1])
    rows, captions = [x], ["x (no policy)"] * len(x)
    for text in ("3-1-7", "43-18-18", "3-1-7+43-18-18"):
        rows.append(parse_policy(text).transform(x, make_generator(0)))
        captions += [f"T(x), {text}"] * len(x)
    return to_display(torch.cat(rows), scale=3), captions


st.title("About: gradient leakage and ATS")
st.markdown("""
In **federated learning** clients never send their images, only the gradient of the model's loss on them.
That gradient still leaks the images: a curious server can start from noise and optimize a dummy image until
its gradient matches the shared one (**Deep Leakage from Gradients**). On small models the result is often a
near-perfect copy. Try it in the **Attack playground**.
""")
st.subheader("Threat model")
st.graphviz_chart(THREAT)
st.markdown("""
**The defense of Gao et al. (CVPR 2021)**: before computing the gradient, the client transforms its images with a
*policy*, a short chain of data-augmentation ops (shifts, shears, contrast, …). The model still learns from the
transformed images, but the attacker's optimization now has a much harder landscape and recovers T(x) badly, if
at all. Which policy? Training and attacking for each candidate would take days, so ATS **searches** with two
cheap scores (see the **Scores** page) and keeps the most private policies that do not hurt accuracy.
""")
images, captions = examples()
st.image(images, caption=captions, width=96)
st.subheader("The search")
st.graphviz_chart(SEARCH)
st.markdown("""
**What this app does not claim.** The paper measures PSNR against the *transformed* image T(x); this kit also
reports PSNR against the original x, which is what a person cares about. Scores are computed at small presets in
the app; the paper's numbers need the `paper` preset on a GPU.

### References
- W. Gao, S. Guo, T. Zhang, H. Qiu, Y. Wen, Y. Liu. *Privacy-preserving Collaborative Learning with Automatic
  Transformation Search.* CVPR 2021. (Extended: *Automatic Transformation Search Against Deep Leakage from
  Gradients*, TPAMI 45(9), 2023.)
- L. Zhu, Z. Liu, S. Han. *Deep Leakage from Gradients.* NeurIPS 2019.
- B. Zhao, K. R. Mopuri, H. Bilen. *iDLG: Improved Deep Leakage from Gradients.* arXiv:2001.02610, 2020.
- J. Geiping, H. Bauermeister, H. Dröge, M. Moeller. *Inverting Gradients: How easy is it to break privacy in
  federated learning?* NeurIPS 2020.
- J. Taboada Warmerdam, J. Loerakker, B. Meijer, S. Nissen. *[Re] Privacy-preserving collaborative learning with
  automatic transformation search.* ReScience C 8(2), 2022. doi:10.5281/zenodo.6574713.
""")
