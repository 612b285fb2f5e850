"""Attack playground: pick an image, a model, a policy and an attack; watch the reconstruction."""
from __future__ import annotations

from dataclasses import replace

import streamlit as st
import torch

from ats import attacks, data, models
from ats.evaluation import evaluate_reconstruction
from ats.federated import client_update, parse_defense
from ats.policy import parse_policy
from ats.runtime import describe_device, make_generator, pick_device


@st.cache_resource
def get_model(arch: str, seed: int) -> torch.nn.Module:
    return models.build_model(arch, 100, seed=seed).to(pick_device()).eval()


@st.cache_data
def get_images(source: str) -> data.ImageSet:
    return data.load_samples() if source == "samples" else data.load_dataset("cifar100", "test").subset(range(100))


def show(images: torch.Tensor) -> list:
    return [img.permute(1, 2, 0).numpy() for img in images]


device = pick_device()
st.sidebar.markdown(f"**Device:** {describe_device(device)}")
st.title("Attack playground")
st.caption("A client shares the gradient of its loss on a private image. The server inverts it.")

with st.form("attack"):
    left, right = st.columns(2)
    source = left.radio("Images", ["cifar100", "samples"], horizontal=True,
                        format_func={"cifar100": "CIFAR-100 attack set", "samples": "Sample photos"}.get)
    index = left.number_input("Image index", min_value=0, max_value=99, value=0)
    arch = left.selectbox("Model (untrained)", ["lenet", "resnet20"], index=0)
    policy_text = right.text_input("Policy (e.g. 3-1-7 or 3-1-7+43-18-18)", value="none")
    defense_text = right.selectbox("Gradient defense", ["none", "prune-70", "prune-95", "gauss-1e-3", "lap-1e-3"])
    preset = right.selectbox("Attack", list(attacks.PRESETS), index=list(attacks.PRESETS).index("idlg"))
    iterations = right.slider("Iterations", 10, 2000, 200, step=10)
    submitted = st.form_submit_button("Run attack", type="primary")

if submitted:
    try:
        policy = parse_policy(policy_text)
        defense = parse_defense(defense_text)
        images = get_images(source)
        if index >= len(images):
            raise ValueError(f"image index {index} is out of range 0–{len(images) - 1} for {source}")
    except ValueError as error:
        st.error(str(error))
        st.stop()
    model = get_model(arch, 0)
    x, y = images.batch([int(index)])
    x, y = x.to(device), y.to(device)
    generator = make_generator(0, device)
    update = client_update(model, x, y, None if str(policy) == "none" else policy, defense,
                           generator=generator, per_example=True)
    config = replace(attacks.AttackConfig.preset(preset), iterations=int(iterations))
    cols = st.columns(3)
    cols[0].image(show(x.cpu()), caption="private image", width=160)
    cols[1].image(show(update.transformed.cpu()), caption="what the client trains on", width=160)
    frame = cols[2].empty()
    status = st.empty()
    final = None
    for snapshot in attacks.iter_reconstruct(model, update, config, generator=generator,
                                             every=max(1, iterations // 20)):
        frame.image(show(snapshot.images), caption=f"reconstruction, iteration {snapshot.iteration}", width=160)
        status.progress(snapshot.iteration / snapshot.iterations, text=f"loss {float(snapshot.loss[0]):.4g}")
        final = snapshot
    result = evaluate_reconstruction(final, update, x)[0]
    m = st.columns(4)
    m[0].metric("PSNR vs original", f"{result.psnr:.2f} dB")
    m[1].metric("PSNR vs transformed", f"{result.psnr_transformed:.2f} dB")
    m[2].metric("SSIM vs original", f"{result.ssim:.3f}")
    m[3].metric("Label recovered", "yes" if result.label_recovered else "no")
    if result.status != "ok":
        st.warning(f"The attack failed: {result.status}")
