"""Attack playground: pick an image, a model, a policy and an attack; watch the reconstruction sharpen."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import streamlit as st
import torch

from ats import attacks, checkpoints, data, metrics, models, viz
from ats.evaluation import evaluate_reconstruction
from ats.federated import DEFENSES, client_update, parse_defense
from ats.images import load_image
from ats.pool import POOL
from ats.policy import Policy, parse_policy, transform
from ats.runtime import make_generator, pick_device

ARCHS = {"lenet": "LeNet (DLG's)", "resnet20": "ResNet20", "resnet20-4": "ResNet20-4", "convnet": "ConvNet"}
SOURCES = {"cifar100": "CIFAR-100 attack set", "samples": "Sample photos", "upload": "Upload an image"}
GALLERY = 12  # attack-set images shown as thumbnails
HISTORY = 6  # runs kept for comparison


@st.cache_resource
def untrained_model(arch: str, seed: int) -> torch.nn.Module:
    return models.build_model(arch, 100, seed=seed).to(pick_device()).eval()


@st.cache_resource
def shipped_model(path: str, expect_arch: str) -> torch.nn.Module:
    model, meta = checkpoints.load_checkpoint(path, device=pick_device(), expect_arch=expect_arch)
    checkpoints.check_classes(meta, 100)
    return model.eval()


@st.cache_resource
def uploaded_model(content: bytes, expect_arch: str) -> torch.nn.Module:
    model, _ = checkpoints.load_checkpoint_bytes(content, device=pick_device(), expect_arch=expect_arch, num_classes=100)
    return model.eval()


@st.cache_data
def image_set(source: str) -> data.ImageSet:
    return data.load_samples() if source == "samples" else data.load_dataset("cifar100", "test").subset(range(100))


@st.cache_data
def cifar_available() -> bool:
    try:
        image_set("cifar100")
    except ValueError:
        return False
    return True


@st.cache_data
def uploaded_image(content: bytes) -> torch.Tensor:
    return load_image(content)  # (3, 32, 32)


@st.cache_data
def op_gallery(image: np.ndarray) -> list:
    return viz.to_display(viz.op_gallery(torch.from_numpy(image)), scale=2)


def choose_image() -> tuple[torch.Tensor, int, str] | None:
    """The private image (3, 32, 32), its label and a name, from the gallery or an upload."""
    source = st.radio("Image", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="source",
                      index=0 if cifar_available() else 1)  # no CIFAR-100 copy: start on the sample photos
    if source == "upload":
        file = st.file_uploader("An image (PNG, JPEG, …); it is centre-cropped and resized to 32×32",
                                type=None, key="image_upload")
        label = st.selectbox("Its label (a CIFAR-100 class)", range(100), format_func=lambda i: data.CIFAR100_CLASSES[i])
        if file is None:
            st.info("Upload an image to attack it.")
            return None
        try:
            return uploaded_image(file.getvalue()), int(label), file.name
        except ValueError as error:
            st.error(f"That upload cannot be used: {error}")
            return None
    try:
        images = image_set(source)
    except ValueError as error:  # no CIFAR-100 copy found
        st.error(f"{error}. The sample photos work without it.")
        return None
    count = min(GALLERY, len(images))
    names = [f"#{i} {images.classes[int(images.labels[i])]}" for i in range(count)]
    columns = st.columns(count)
    for i, column in enumerate(columns):
        column.image(viz.to_display(images.images[i:i + 1].float() / 255)[0], caption=names[i],
                     width="stretch")
    index = st.selectbox("Attack image", range(count), format_func=names.__getitem__, key=f"index_{source}")
    x, y = images.batch([index])
    return x[0], int(y[0]), names[index]


def choose_policy(image: torch.Tensor) -> str:
    """A policy string from up to three picked ops, or typed (hybrids too)."""
    sent = st.session_state.pop("send_policy", None)  # from the search explorer
    if sent is not None:
        st.session_state["policy_mode"], st.session_state["policy_text"] = "type", sent
    mode = st.radio("Policy", ["pick", "type"], horizontal=True, key="policy_mode",
                    format_func={"pick": "Pick up to three ops", "type": "Type a policy (hybrids too)"}.get)
    if mode == "pick":
        ops = st.multiselect("Ops, applied in order", range(len(POOL)), max_selections=3,
                             format_func=viz.op_label, key="policy_ops")
        text = "-".join(str(i) for i in ops) or "none"
    else:
        text = st.text_input("Policy, e.g. 3-1-7 or 3-1-7+43-18-18 (none for no policy)", value="3-1-7",
                             key="policy_text")
    with st.expander("What the 50 ops do to this image"):
        thumbnails = op_gallery(image.numpy())
        for row in range(0, len(thumbnails), 10):
            for i, column in enumerate(st.columns(10), start=row):
                column.image(thumbnails[i], caption=viz.op_label(i), width="stretch")
    return text


@st.fragment
def attack_panel(x: torch.Tensor, y: int, name: str, policy_text: str) -> None:
    """The parameter form, the live run and the run history (reruns alone when the form is sent)."""
    device = pick_device()
    with st.form("attack"):
        left, right = st.columns(2)
        arch = left.selectbox("Model", list(ARCHS), format_func=ARCHS.get)
        shipped = {p.name: str(p) for p in checkpoints.shipped_checkpoints()}
        weights = left.selectbox("Weights", ["untrained", *shipped, "upload"],
                                 format_func=lambda w: {"untrained": "untrained (seed 0)",
                                                        "upload": "an uploaded checkpoint"}.get(w, w))
        checkpoint = left.file_uploader("Checkpoint (.pt from ats train), when weights = uploaded", type=None)
        defense_text = left.selectbox("Gradient defense", DEFENSES)
        # iDLG on the untrained LeNet is the vivid default: the image comes back within seconds on a CPU.
        preset = right.selectbox("Attack", list(attacks.PRESETS), index=list(attacks.PRESETS).index("idlg"),
                                 help="idlg/dlg: L-BFGS, one iteration = up to 20 gradient evaluations; "
                                      "ig: Inverting Gradients (the paper's attack), needs thousands of iterations")
        iterations = right.slider("Iterations", 10, 2000, 60, step=10)
        every = right.slider("Show a frame every … iterations", 1, 100, 2)
        seed = right.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0)
        submitted = st.form_submit_button("Run attack", type="primary")
    if submitted:
        try:
            run_attack(x, y, name, policy_text, arch, weights, shipped, checkpoint, defense_text, preset,
                       int(iterations), int(every), int(seed), device)
        except ValueError as error:
            st.error(str(error))
    show_history()


def load_model(arch: str, weights: str, shipped: dict, checkpoint) -> torch.nn.Module:
    if weights == "untrained":
        return untrained_model(arch, 0)
    if weights == "upload":
        if checkpoint is None:
            raise ValueError("weights = uploaded checkpoint, but no checkpoint was uploaded")
        return uploaded_model(checkpoint.getvalue(), arch)
    return shipped_model(shipped[weights], arch)


def run_attack(x: torch.Tensor, y: int, name: str, policy_text: str, arch: str, weights: str, shipped: dict,
               checkpoint, defense_text: str, preset: str, iterations: int, every: int, seed: int,
               device: torch.device) -> None:
    policy = parse_policy(policy_text)
    defense = parse_defense(defense_text)
    config = replace(attacks.AttackConfig.preset(preset), iterations=iterations)
    model = load_model(arch, weights, shipped, checkpoint)
    x, y = x[None].to(device), torch.tensor([y], device=device)  # (1, 3, 32, 32), (1,)
    generator = make_generator(seed, device)
    shared, private = client_update(model, x, y, policy, defense, crop_flip=policy != Policy.none(),
                                    generator=generator, per_example=True)
    original, transformed = x.cpu(), private.transformed.cpu()
    cols = st.columns([1, 1, 1, 3])
    cols[0].image(viz.to_display(original)[0], caption="private image x", width="stretch")
    cols[1].image(viz.to_display(transformed)[0], caption=f"T(x), what the client trains on ({policy})",
                  width="stretch")
    frame, chart = cols[2].empty(), cols[3].empty()
    status = st.empty()
    curves, final = [], None
    for snapshot in attacks.iter_reconstruct(model, shared, config, generator=generator, every=every,
                                             policy=private.policy, crop_flip=private.crop_flip):
        frame.image(viz.to_display(snapshot.images)[0], caption=f"reconstruction, iteration {snapshot.iteration}",
                    width="stretch")
        curves.append({"iteration": snapshot.iteration, "loss": float(snapshot.loss[0]),
                       "PSNR vs x (dB)": float(metrics.psnr(snapshot.images, original)[0]),
                       "PSNR vs T(x) (dB)": float(metrics.psnr(snapshot.images, transformed)[0])})
        table = pd.DataFrame(curves).set_index("iteration")
        with chart.container():
            left, right = st.columns(2)
            left.line_chart(table[["loss"]], height=180)
            right.line_chart(table[["PSNR vs x (dB)", "PSNR vs T(x) (dB)"]], height=180)
        status.progress(snapshot.iteration / snapshot.iterations,
                        text=f"iteration {snapshot.iteration}/{snapshot.iterations} · {snapshot.seconds:.1f} s · "
                             f"loss {float(snapshot.loss[0]):.4g}")
        final = snapshot
    result = evaluate_reconstruction(final, private, original)[0]
    m = st.columns(5)
    m[0].metric("PSNR vs original", f"{result.psnr_x:.2f} dB",
                delta=f"{result.psnr_x - result.baseline_mean_colour:+.1f} dB vs its mean colour",
                help="The delta compares with what the image's own mean colour scores against x: below it, the "
                     "attack has recovered nothing a trivial guess would not.")
    m[1].metric("Aligned PSNR vs original", f"{result.psnr_x_aligned:.2f} dB",
                help="The best PSNR over the flips and shifts the crop and the policy can make: a moved image is "
                     "not a hidden one.")
    m[2].metric("PSNR vs transformed", f"{result.psnr_tx:.2f} dB")
    m[3].metric("SSIM vs original", f"{result.ssim_x:.3f}")
    m[4].metric("Label recovered", "yes" if result.label_recovered else "no")
    st.caption(f"Trivial guesses against x on this image: flat grey {result.baseline_grey:.1f} dB, its mean colour "
               f"{result.baseline_mean_colour:.1f} dB, T(x) itself {result.baseline_tx:.1f} dB.")
    if result.status != "ok":
        st.warning(f"The attack failed: {result.status}")
    st.session_state["current_policy"] = str(policy)
    runs = st.session_state.setdefault("runs", [])
    runs.append({"image": name, "model": f"{arch} ({weights})", "policy": str(policy), "defense": str(defense),
                 "attack": f"{preset} × {iterations}", "PSNR vs x": round(result.psnr_x, 2),
                 "mean colour": round(result.baseline_mean_colour, 2), "aligned": round(result.psnr_x_aligned, 2),
                 "PSNR vs T(x)": round(result.psnr_tx, 2), "SSIM vs x": round(result.ssim_x, 3),
                 "seconds": round(final.seconds, 1),
                 "thumbnails": viz.to_display(torch.cat([original, transformed, final.images]), scale=2)})
    del runs[:-HISTORY]


def show_history() -> None:
    runs = st.session_state.get("runs", [])
    if not runs:
        return
    st.subheader("Recent runs")
    st.caption("Run once without a policy and once with one to compare: x, T(x) and the reconstruction.")
    st.dataframe(pd.DataFrame([{k: v for k, v in r.items() if k != "thumbnails"} for r in runs][::-1]),
                 hide_index=True, width="stretch")
    columns = st.columns(HISTORY)
    for column, run in zip(columns, runs[::-1]):
        column.image(run["thumbnails"], caption=["x", "T(x)", "recon."], width=64)
        column.caption(f"{run['policy']} · {run['defense']} · {run['PSNR vs x']} dB")
    if st.button("Clear history"):
        st.session_state["runs"] = []
        st.rerun()


st.title("Attack playground")
st.caption("A client shares the gradient of its loss on a private image; the server inverts it. A policy "
           "transforms the image before the gradient is taken, and a gradient defense perturbs the gradient.")
chosen = choose_image()
if chosen is None:
    st.stop()
x, y, name = chosen
policy_text = choose_policy(x)
try:
    policy = parse_policy(policy_text)
except ValueError as error:
    st.error(str(error))
else:
    crop_flip = policy != Policy.none()  # as the attack: no crop and flip without a policy
    preview = transform(x[None], policy, make_generator(0), crop_flip=crop_flip)
    st.caption(f"**{policy}**: {policy.describe()} (after a random crop and flip when a policy is set)")
    st.image(viz.to_display(torch.cat([x[None], preview]), scale=3), caption=["x", "T(x), seed 0"])
attack_panel(x, y, name, policy_text)
