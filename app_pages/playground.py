"""Attack playground: up to four what-if settings on one image, attacked side by side, live.

A setting is a policy, a gradient defense (DP-SGD `dp-C-σ` among them, with the ε of the one update
the attacker sees) and an attack. The threat panel says what the client shares (`ats.threats`):
FedSGD, the paper's one-image gradient (the default, compared side by side), or a FedAvg weight
difference over K images, or one gradient of B images with the labels kept; those attack one
setting on the client's images jointly (`ats.threats.attack_threat`; live when there is one client). Run attacks them all, batched where the
engine can (`ats.compare` does the work; this page picks parameters and shows results): each
column shows x, T(x) and the reconstruction, its scores beside the image's trivial baselines, and
S_pri/S_acc of its policy; then a strip to scrub the snapshots, downloads, and the Python and
command-line calls that give the same numbers. One run at a time: Run pressed again while a run
goes is ignored with a message, and a run cut short (another page, another image, Stop) is kept
in the history, marked stopped.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from ats import checkpoints, compare, data, models, scores, stats, viz
from ats.attacks import PRESETS, iter_reconstruct
from ats.baselines import baseline_scores
from ats.evaluation import evaluate_reconstruction
from ats.fedavg import MAX_LOCAL_STEPS
from ats.federated import DEFENSES, Defense, client_update, parse_defense
from ats.images import load_image
from ats.limits import MAX_ATTACK_IMAGES
from ats.metrics import PSNR_CAP, pair_reconstructions, psnr
from ats.policy import parse_policy
from ats.pool import POOL
from ats.privacy import DP_CLIP, DP_DELTA, DP_NOISE, noise_for_epsilon, update_epsilon
from ats.runtime import describe_device, make_generator, pick_device
from ats.scoring import ScoringSetup
from ats.threats import Threat, attack_threat, check_client_split, parse_threat

ARCHS = {"lenet": "LeNet (DLG's)", "resnet20": "ResNet20", "resnet20-4": "ResNet20-4", "convnet": "ConvNet"}
SOURCES = {"cifar100": "CIFAR-100 attack set", "samples": "Sample photos", "upload": "Upload an image"}
DEFAULTS = (("none", "none", "idlg"), ("3-1-7", "none", "idlg"), ("3-1-7+43-18-18", "none", "idlg"),
            ("3-1-7", "none", "aware"))  # no defense, the paper's policy, its hybrid, the policy-aware attacker
NAMES = "ABCD"
GALLERY, HISTORY, FRAMES = 12, 6, 60  # thumbnails, runs kept, snapshots kept per setting for scrubbing
MAX_ITERATIONS = 10_000
SLOW = 60.0  # seconds: above this on a CPU, say so before Run
MARGIN = 1.0  # dB over the mean-colour baseline before a reading says "recovers"
KEPT = "playground_kept"  # widget values kept across pages (Streamlit drops those of unseen widgets)
PIXELATED = "<style>[data-testid='stImage'] img {image-rendering: pixelated;}</style>"
THREAT_KINDS = {"fedsgd": "FedSGD: each image's gradient, its label shared (the paper's)",
                "fedavg": "FedAvg: the weight difference after E local epochs over K batches",
                "batch": "A batch: one gradient of B images, their labels kept"}
DP = "dp"  # the defense menu's DP-SGD entry: its C and σ are chosen beside it
DELTA = f"{DP_DELTA:g}".replace("e-0", "e-")  # 1e-5
NO_OPACUS = "ε needs Opacus (`pip install 'ats[dp]'`); the defense runs without it."


# --- caches ------------------------------------------------------------------------------------

@st.cache_resource(max_entries=8)
def untrained_model(arch: str, seed: int) -> torch.nn.Module:
    """Seeded as `ats attack --model ARCH --seed SEED` builds it."""
    return models.build_model(arch, 100, seed=seed).to(pick_device()).eval()


@st.cache_resource
def shipped_model(path: str, expect_arch: str) -> torch.nn.Module:
    model, meta = checkpoints.load_checkpoint(path, device=pick_device(), expect_arch=expect_arch)
    checkpoints.check_classes(meta, 100)
    return model.eval()


@st.cache_resource(max_entries=2)  # uploads are kept in memory: two at most
def uploaded_model(content: bytes, name: str, expect_arch: str) -> torch.nn.Module:
    """An uploaded checkpoint; its errors name the upload, not a temporary file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "upload.pt"
        path.write_bytes(content)
        try:
            model, meta = checkpoints.load_checkpoint(path, device=pick_device(), expect_arch=expect_arch)
            checkpoints.check_classes(meta, 100)
        except ValueError as error:
            raise ValueError(str(error).replace(str(path), f"'{name}'")) from None
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


@st.cache_resource
def have_opacus() -> bool:
    try:
        import opacus  # noqa: F401
    except ImportError:
        return False
    return True


@st.cache_data(max_entries=4)
def uploaded_image(content: bytes) -> torch.Tensor:
    return load_image(content)  # (3, 32, 32)


@st.cache_data
def op_gallery(image) -> list:
    return viz.to_display(viz.op_gallery(torch.from_numpy(image)), scale=2)


@st.cache_data(show_spinner="Timing the first iterations on this device…", max_entries=32)
def timing(key: tuple, _model, _x, _y, _settings, _iterations) -> compare.Estimate:
    """`compare.estimate`, cached by what its time depends on (`key`), not by the image or the policies."""
    return compare.estimate(_model, _x, _y, _settings, iterations=_iterations)


@st.cache_resource
def scoring_setup() -> ScoringSetup:
    """The scores page's setting: the smoke preset on the shipped tiny-data model (or an untrained one)."""
    checkpoint = scores.default_score_checkpoint()
    found = checkpoint.is_file()
    return ScoringSetup.load("smoke", checkpoint=checkpoint if found else None, untrained=not found, seed=0)


@st.cache_data(show_spinner="Scoring the policies (S_pri, S_acc)…", max_entries=64)
def policy_scores(policy: str) -> dict:
    privacy, accuracy = scoring_setup().score(policy, seed=0)
    return {"S_pri": privacy.value, "S_acc": accuracy.value}


# --- widgets whose values outlive a visit to another page -----------------------------------------

def kept(widget, label: str, key: str, default, **options):
    """`widget(label, key=key, **options)`, starting from the value it had when last seen."""
    store = st.session_state.setdefault(KEPT, {})
    if key not in st.session_state:
        value, allowed = store.get(key, default), options.get("options")
        fits = allowed is None or all(v in list(allowed) for v in (value if isinstance(value, list) else [value]))
        st.session_state[key] = value if fits else default
    value = widget(label, key=key, **options)
    store[key] = value
    return value


# --- choosing -------------------------------------------------------------------------------------

def choose_image() -> tuple[torch.Tensor, int, str, dict] | None:
    """The private image (3, 32, 32), its label, a name, and where it came from (for the reproduce calls)."""
    have_cifar = cifar_available()
    sources = [s for s in SOURCES if s != "cifar100" or have_cifar]
    source = kept(st.radio, "Image", "source", sources[0], options=sources, format_func=SOURCES.get,
                  horizontal=True)
    if not have_cifar:
        st.caption("The **CIFAR-100 attack set** is not on this machine: point `ATS_DATA_DIR` at a folder holding "
                   "`cifar100_test.npz` (see the README) and restart the app to attack it. The sample photos and "
                   "uploads need nothing.")
    if source == "upload":
        file = st.file_uploader("An image (PNG, JPEG, …); it is centre-cropped and resized to 32×32", type=None,
                                key="image_upload")
        label = kept(st.selectbox, "Its label (a CIFAR-100 class)", "upload_label", 0, options=range(100),
                     format_func=lambda i: data.CIFAR100_CLASSES[i])
        if file is None:
            st.info("Upload an image to attack it.")
            return None
        try:
            return uploaded_image(file.getvalue()), int(label), file.name, {"kind": "upload", "file": file.name}
        except ValueError as error:
            st.error(f"{file.name} cannot be used: {error}")
            return None
    images = image_set(source)
    count = min(GALLERY, len(images))
    names = [f"#{i} {images.classes[int(images.labels[i])]}" for i in range(count)]
    for i, column in enumerate(st.columns(count)):
        column.image(viz.to_display(images.images[i:i + 1].float() / 255)[0], caption=names[i], width="stretch")
    index = kept(st.selectbox, "Attack image", f"index_{source}", 0, options=range(count),
                 format_func=names.__getitem__)
    x, y = images.batch([index])
    return x[0], int(y[0]), names[index], {"kind": source, "index": int(index)}


def choose_threat() -> Threat | None:
    """The threat panel's first row: what the client shares (`ats.threats.parse_threat`); None after an error line."""
    st.markdown("**Threat model:** what the client shares with the server")
    left, middle, right = st.columns([3, 1, 1])
    kind = kept(left.radio, "The client shares", "threat_kind", "fedsgd", options=list(THREAT_KINDS),
                format_func=THREAT_KINDS.get,
                help="FedSGD is the paper's threat; FedAvg (McMahan et al. 2017) and a batch with its labels kept "
                     "(Geiping et al. 2020) are attacked jointly over the client's images.")
    text = "fedsgd"
    if kind == "fedavg":
        epochs = kept(middle.number_input, "Local epochs E", "threat_epochs", 1, min_value=1, max_value=MAX_LOCAL_STEPS)
        batches = kept(right.number_input, "Local batches K", "threat_batches", 2, min_value=1,
                       max_value=MAX_LOCAL_STEPS, help="One image per local batch: the client holds K images.")
        text = f"fedavg-{epochs}-{batches}"
    elif kind == "batch":
        size = kept(middle.number_input, "Images B", "threat_batch", 4, min_value=2, max_value=MAX_ATTACK_IMAGES)
        text = f"batch-{size}"
    try:
        threat = parse_threat(text)
    except ValueError as error:
        st.error(str(error))
        return None
    if threat.kind == "fedavg":
        st.caption(f"The client runs {threat.epochs} local epoch(s) of SGD (lr {threat.lr:g}) over {threat.batches} "
                   "batches of one image each and shares θ_end − θ_0; the server replays those steps on its guesses "
                   "(Geiping et al. 2020, §6). Labels are shared; DP-SGD clips FedSGD gradients, not this.")
    elif threat.kind == "batch":
        st.caption(f"One gradient of {threat.batch_size} images whose labels the client keeps: the server counts "
                   "them per class from the last layer, reconstructs the images jointly and they are paired to the "
                   "originals before scoring.")
    return threat


def choose_client(threat: Threat, x: torch.Tensor, y: int, name: str, source: dict) -> dict | None:
    """The images behind an aggregated threat's updates: the attack image and others of its source.

    None, after an error line, when they do not split into the threat's clients (`check_client_split`).
    """
    need = threat.client_images
    if source["kind"] == "upload":
        images, labels, indices, names = x[None], torch.tensor([int(y)]), [0], [name]
        st.caption(f"An upload is one image; {threat} needs {need} a client: take the sample photos or the CIFAR-100 "
                   "attack set for more.")
    else:
        pool = image_set(source["kind"])
        index = int(source["index"])
        title = lambda i: f"#{i} {pool.classes[int(pool.labels[i])]}"  # noqa: E731
        others = [i for i in range(len(pool)) if i != index]
        default = [(index + k) % len(pool) for k in range(1, min(need, len(pool)))]
        extra = kept(st.multiselect, f"The client's other images (with {name}: {need} per client)",
                     f"client_{source['kind']}_{need}", default, options=others, format_func=title,
                     help=f"From the same source. A multiple of {need} images makes several clients, attacked one "
                          "after another.")
        indices = [index, *extra]
        images, labels = pool.batch(indices)
        names = [title(i) for i in indices]
    st.image(viz.grid_png([images], scale=2), caption=" · ".join(names))
    try:
        per_client = check_client_split(threat, len(indices))
        threat.client_options(per_client)
    except ValueError as error:
        st.error(f"{error}. Pick {need} images (or a multiple of {need}) for {threat}.")
        return None
    clients = len(indices) // per_client
    st.caption(f"{len(indices)} image(s): {clients} client(s) of {per_client}, each attacked jointly"
               + ("; the clients one after another, without the live view." if clients > 1 else ", live."))
    return {"x": images, "y": labels, "indices": indices, "names": names, "per_client": per_client,
            "clients": clients, "source": {**source, "indices": indices},
            "name": names[0] if len(names) == 1 else f"{names[0]} + {len(names) - 1} more"}


def epsilon_text(defense: str) -> str | None:
    """The DP budget of one update under `defense` (None for other defenses), or the line saying it needs Opacus."""
    parsed = parse_defense(defense)
    if parsed.kind != "dp":
        return None
    if not have_opacus():
        return NO_OPACUS
    epsilon = update_epsilon(parsed.amount)
    if math.isinf(epsilon):
        return f"ε = ∞ at δ = {DELTA}: σ = 0 clips but adds no noise, no privacy guarantee."
    return (f"**ε = {epsilon:.3g}** at δ = {DELTA}: the budget of the one update the attacker sees "
            "(one step, the image surely in it; Opacus's RDP accountant).")


def choose_defense(column, i: int, default: str) -> str:
    """A setting's defense: one of the paper's, or DP-SGD with its C and σ (or σ from a target ε) and its ε."""
    choice = kept(column.selectbox, "Gradient defense", f"defense_{i}", default, options=[*DEFENSES, DP],
                  format_func=lambda d: "DP-SGD (dp-C-σ)" if d == DP else d)
    if choice != DP:
        return choice
    left, right = column.columns(2)
    clip = kept(left.number_input, "Clip C", f"dp_clip_{i}", 1.0, min_value=DP_CLIP[0], max_value=DP_CLIP[1],
                step=0.5, format="%g", help="Each image's gradient is scaled to L2 norm at most C.")
    by = kept(right.selectbox, "Noise from", f"dp_by_{i}", "σ", options=["σ", "target ε"] if have_opacus() else ["σ"],
              help="The noise multiplier σ (noise σ·C on the sum), or the σ that spends a target ε on one update.")
    if by == "target ε":
        epsilon = kept(column.number_input, "Target ε of one update", f"dp_epsilon_{i}", 8.0, min_value=0.01,
                       max_value=1e4, step=1.0, format="%g")
        sigma = float(f"{noise_for_epsilon(float(epsilon)):.4g}")
        column.caption(f"σ = {sigma:g} for ε = {epsilon:g}")
    else:
        sigma = kept(column.number_input, "Noise multiplier σ", f"dp_sigma_{i}", 1.1, min_value=DP_NOISE[0],
                     max_value=DP_NOISE[1], step=0.1, format="%g")
    defense = str(Defense("dp", float(sigma), clip=float(clip)))
    column.caption(f"`{defense}` · {epsilon_text(defense)}")
    return defense


def use_ops() -> None:
    """The op builder's button: its ops become the chosen setting's policy."""
    ops = st.session_state.get("policy_ops") or []
    st.session_state[f"policy_{st.session_state['ops_target']}"] = "-".join(str(i) for i in ops) or "none"


def op_builder(count: int) -> None:
    with st.expander("Build a policy from the 50 ops"):
        left, middle, right = st.columns([3, 1, 1])
        kept(left.multiselect, "Ops, applied in order", "policy_ops", [], options=range(len(POOL)),
             max_selections=3, format_func=viz.op_label)
        middle.selectbox("For setting", range(count), format_func=NAMES.__getitem__, key="ops_target")
        right.button("Use these ops", on_click=use_ops)
        st.caption("The gallery below the settings shows what each op does to this image.")


def choose_settings(x: torch.Tensor, seed: int, device: torch.device,
                    threat: Threat | None = None) -> tuple[list[compare.Setting], list[str]]:
    """Up to four settings, each with a preview of its T(x) (the very one the run uses); their errors.
    Under an aggregated threat, setting A alone: comparing side by side is FedSGD only."""
    sent = st.session_state.pop("send_policy", None)  # from the search explorer
    if sent is not None:
        st.session_state["policy_0"] = st.session_state.setdefault(KEPT, {})["policy_0"] = sent
    if threat is not None and threat.aggregated:
        count = 1
        st.caption(f"Comparing settings side by side is FedSGD only: under {threat} the run attacks setting A.")
    else:
        count = kept(st.radio, "Settings to compare", "count", 3, options=[1, 2, 3, 4], horizontal=True,
                     help="Each setting is attacked on the same image and model; settings that share an attack run "
                          "as one batched call. FedSGD only.")
    settings, errors = [], []
    for i, column in enumerate(st.columns(4)[:count]):
        policy, defense, attack = DEFAULTS[i]
        column.markdown(f"**Setting {NAMES[i]}**")
        policy = kept(column.text_input, "Policy (3-1-7, a hybrid 3-1-7+43-18-18, or none)", f"policy_{i}", policy)
        try:
            defense = choose_defense(column, i, defense)
        except (ValueError, ImportError) as error:
            column.error(f"Setting {NAMES[i]}: {error}")
            errors.append(NAMES[i])
            continue
        attack = kept(column.selectbox, "Attack", f"attack_{i}", attack, options=list(PRESETS),
                      help="idlg/dlg: L-BFGS, an iteration is up to 20 gradient evaluations; ig: Inverting "
                           "Gradients, the paper's attack (thousands of iterations); aware: IG told the policy, "
                           "8 restarts over its flips and shift signs")
        try:
            setting = compare.Setting(policy, defense, attack)
        except ValueError as error:
            column.error(f"Setting {NAMES[i]}: {error}")
            errors.append(NAMES[i])
            continue
        settings.append(setting)
        column.image(viz.to_display(compare_preview(x, setting.policy, seed, device), scale=3)[0], width=96)
        column.caption(f"T(x) with seed {seed}: {describe(setting.policy)}")
    op_builder(count)
    return settings, errors


def compare_preview(x: torch.Tensor, policy: str, seed: int, device: torch.device) -> torch.Tensor:
    """T(x) as the client makes it with this seed on `device`: a crop and flip, then the policy."""
    if policy == "none":
        return x[None]
    return parse_policy(policy).transform(x[None].to(device), make_generator(seed, device), crop_flip=True)


def describe(policy: str) -> str:
    return "the image itself" if policy == "none" else parse_policy(policy).describe()


def choose_model() -> dict:
    """Model, weights, iterations, frames and seed, shared by every setting."""
    left, middle, right = st.columns(3)
    shipped = {p.name: str(p) for p in checkpoints.shipped_checkpoints()}
    arch = kept(left.selectbox, "Model", "arch", "lenet", options=list(ARCHS), format_func=ARCHS.get)
    weights = kept(left.selectbox, "Weights", "weights", "untrained", options=["untrained", *shipped, "upload"],
                   format_func=lambda w: {"untrained": "untrained (seeded with the run's seed)",
                                          "upload": "an uploaded checkpoint"}.get(w, w))
    checkpoint = None
    if weights == "upload":
        checkpoint = left.file_uploader("Checkpoint (.pt from ats train)", type=None, key="checkpoint")
    iterations = kept(middle.number_input, "Iterations", "iterations", 60, min_value=1, max_value=MAX_ITERATIONS,
                      step=10, help="The presets' own: idlg and dlg 300, ig and aware 4,800 (the paper's). "
                                    "iDLG on LeNet shows the image within about 50.")
    every = kept(middle.slider, "Show a frame every … iterations", "every", 2, min_value=1, max_value=100)
    seed = kept(right.number_input, "Seed", "seed", 0, min_value=0, max_value=2**31 - 1,
                help="Seeds the client's transform and noise, the attack's start and the untrained model.")
    with_scores = kept(right.toggle, "S_pri and S_acc beside the run", "with_scores", True,
                       help="Each policy's privacy and accuracy scores (smoke preset, about 2 s a policy, cached).")
    return {"arch": arch, "weights": weights, "shipped": shipped, "checkpoint": checkpoint,
            "iterations": int(iterations), "every": int(every), "seed": int(seed), "with_scores": with_scores}


def load_model(options: dict) -> torch.nn.Module:
    arch, weights, checkpoint = options["arch"], options["weights"], options["checkpoint"]
    if weights == "untrained":
        return untrained_model(arch, options["seed"])
    if weights == "upload":
        if checkpoint is None:
            raise ValueError("weights = an uploaded checkpoint, but no checkpoint was uploaded")
        return uploaded_model(checkpoint.getvalue(), checkpoint.name, arch)
    return shipped_model(options["shipped"][weights], arch)


# --- before Run -----------------------------------------------------------------------------------

def plan_text(settings: list[compare.Setting]) -> list[str]:
    """One line per call: which settings share it."""
    lines = []
    for members in compare.plan(settings):
        names = ", ".join(NAMES[i] for i in members)
        attack = settings[members[0]].attack
        told = f", told the policy {settings[members[0]].policy}" if attack == "aware" else ""
        lines.append(f"{names}: one {'batched ' if len(members) > 1 else ''}{attack} call{told}")
    return lines


def show_estimate(model, x, y, settings, options) -> None:
    """The run's time on this device before Run, and a warning with a cheaper choice when it is minutes."""
    device = next(model.parameters()).device
    calls = compare.plan(settings)
    key = (options["arch"], options["weights"], str(device),
           tuple((settings[m[0]].attack, len(m)) for m in calls))
    seconds = timing(key, model, x, y, settings, options["iterations"]).seconds(options["iterations"])
    lines = plan_text(settings)
    st.markdown(f"**Before you run:** about **{duration(seconds)}** on {describe_device(device)} "
                f"(timed from the first two iterations) · " + " · ".join(lines))
    if len(calls) > 1:
        st.caption(f"These settings need {len(calls)} calls, run one after another: settings batch only when "
                   "they share an attack (and, for the aware attacker, the policy it is told).")
    if device.type == "cpu" and seconds > SLOW:
        cheap = ("fewer iterations (iDLG on LeNet shows the image within about 50)"
                 if options["arch"] == "lenet" and all(s.attack in ("idlg", "dlg") for s in settings) else
                 "iDLG on LeNet (about a second an iteration here) or fewer iterations")
        st.warning(f"This will take about {duration(seconds)} on this CPU. For a quick look: {cheap}; "
                   "the paper's IG runs belong on a GPU.")


def show_threat_plan(model, threat: Threat, client: dict, setting: compare.Setting, options: dict) -> None:
    """What Run does under an aggregated threat (no timing: a joint attack's cost depends on its images)."""
    device = next(model.parameters()).device
    steps = (f", differentiating through {threat.epochs * threat.batches} local step(s) each iteration"
             if threat.kind == "fedavg" else "")
    st.markdown(f"**Before you run:** {threat} · {client['clients']} client(s) of {client['per_client']} image(s), "
                f"each attacked jointly by {setting.attack} for {options['iterations']} iterations{steps} on "
                f"{describe_device(device)} · setting A: policy {setting.policy}, defense {setting.defense}")


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


# --- one run at a time ----------------------------------------------------------------------------

def ask(token: int) -> None:
    """The Run button's callback: which button was pressed (a click queued during a run has an old one)."""
    st.session_state["asked"] = token


def flush_stopped_run() -> None:
    """A run whose script was cut short (another page, another image, Stop) goes to the history, marked."""
    run = st.session_state.pop("active_run", None)
    if run is None:
        return
    done = [r for r in run["latest"] if r is not None]
    reached = max((r["iteration"] for r in done), default=0)
    run["status"] = f"stopped at iteration {reached} of {run['iterations']}"
    keep_in_history(run)
    st.warning(f"The last run {run['status']}: it was cut short (the image changed, you left the page, or Stop "
               "was pressed). Its last frame is kept in the history, marked stopped.")


def keep_in_history(run: dict) -> None:
    runs = st.session_state.setdefault("runs", [])
    runs.append(run)
    del runs[:-HISTORY]


# --- the run --------------------------------------------------------------------------------------

def new_run(x, y, name, source, settings, options, device) -> dict:
    """The record of a run: updated every frame, so a run cut short still leaves what it reached."""
    baselines = baseline_scores(x[None].cpu(), x[None].cpu())
    return {"name": name, "source": source, "label": int(y), "settings": list(settings),
            "model": options["arch"], "weights": options["weights"], "iterations": options["iterations"],
            "every": options["every"], "seed": options["seed"], "device": describe_device(device),
            "x": x.cpu(), "transformed": None, "latest": [None] * len(settings), "frames": [[] for _ in settings],
            "curves": [], "results": [None] * len(settings), "seconds": 0.0, "call_seconds": {}, "status": "running",
            "grey": float(baselines["baseline_grey"][0]), "mean_colour": float(baselines["baseline_mean_colour"][0]),
            "started": time.time()}


def record(run: dict, frame: compare.Frame) -> None:
    """One frame into the run record: its latest images and scores, the curves, the kept snapshots."""
    snapshot = frame.snapshot
    if run["transformed"] is None:
        run["transformed"] = frame.transformed
        run["tx_mean_colour"] = baseline_scores(frame.transformed, frame.transformed)["baseline_mean_colour"].tolist()
    for k, i in enumerate(frame.settings):
        image = snapshot.images[k]
        run["latest"][i] = {"iteration": snapshot.iteration, "image": image, "psnr_x": float(frame.psnr_x[k]),
                            "psnr_tx": float(frame.psnr_tx[k]), "loss": float(snapshot.loss[k]),
                            "seconds": snapshot.seconds}
        run["curves"].append({"setting": i, "iteration": snapshot.iteration, "loss": float(snapshot.loss[k]),
                              "psnr_x": float(frame.psnr_x[k]), "psnr_tx": float(frame.psnr_tx[k])})
        frames = run["frames"][i]
        frames.append((snapshot.iteration, image))
        if len(frames) > FRAMES:  # thin out, keeping the first and the newest
            del frames[1:-1:2]
        if frame.results:
            run["results"][i] = frame.results[k]
    run["call_seconds"][frame.call] = snapshot.seconds
    run["seconds"] = sum(run["call_seconds"].values())


def run_live(board, status, model, x, y, name, source, settings, options) -> dict:
    """Attack every setting, drawing each frame into one row of columns; the finished run record."""
    device = next(model.parameters()).device
    run = new_run(x, y, name, source, settings, options, device)
    st.session_state["active_run"] = run
    with board.container():
        slots = live_columns(run)
        charts = st.empty()
    drawn = [0.0]

    def on_frame(frame: compare.Frame) -> None:
        record(run, frame)
        calls = frame.calls
        status.progress(frame.snapshot.iteration / frame.snapshot.iterations,
                        text=f"call {frame.call + 1} of {len(calls)} "
                             f"({', '.join(NAMES[i] for i in frame.settings)}): iteration "
                             f"{frame.snapshot.iteration}/{frame.snapshot.iterations} · {frame.snapshot.seconds:.1f} s")
        if time.perf_counter() - drawn[0] < 0.3 and not frame.snapshot.done and frame.snapshot.iteration > 1:
            return  # a frame at most every 0.3 s: the browser keeps up, the attack does not wait
        drawn[0] = time.perf_counter()
        draw_live(run, slots, frame)
        with charts.container():
            draw_charts(run, "live")

    try:
        compare.compare(model, x, y, settings, iterations=options["iterations"], seed=options["seed"],
                        every=options["every"], on_frame=on_frame)
    except Exception:  # an error is not a stop (Stop and reruns raise BaseExceptions, which keep the record)
        st.session_state.pop("active_run", None)
        raise
    st.session_state.pop("active_run", None)
    run["status"] = "done"
    return run


def live_columns(run: dict) -> list[dict]:
    """One column per setting with slots for its reconstruction, its T(x) and its live numbers."""
    slots = []
    for i, column in enumerate(st.columns(len(run["settings"]))):
        column.markdown(header(i, run["settings"][i]))
        recon = column.empty()
        recon.info("waiting for its call")
        left, right = column.columns(2)
        left.image(big(run["x"][None], 4), caption="x", width="stretch")
        slots.append({"recon": recon, "tx": right.empty(), "text": column.empty()})
    return slots


def draw_live(run: dict, slots: list[dict], frame: compare.Frame) -> None:
    for i, slot in enumerate(slots):
        if frame.snapshot.iteration == 1 or frame.snapshot.done:
            slot["tx"].image(big(run["transformed"][i:i + 1], 4), caption="T(x)", width="stretch")
        latest = run["latest"][i]
        if i in frame.settings and latest is not None:
            slot["recon"].image(big(latest["image"][None], 6), width="stretch",
                                caption=f"reconstruction, iteration {latest['iteration']}")
            slot["text"].caption(f"PSNR vs x {latest['psnr_x']:.2f} dB (its mean colour: {run['mean_colour']:.2f} dB)")


# --- a run under an aggregated threat (batch-B, fedavg-E-K): one setting on the client's images ---

def new_threat_run(client: dict, setting: compare.Setting, threat: Threat, options: dict, device) -> dict:
    """The record of a threat run, shaped as a compare run's (one setting) where the history reads it."""
    x = client["x"].cpu()
    baselines = baseline_scores(x, x)
    return {"threat": str(threat), "name": client["name"], "names": client["names"], "source": client["source"],
            "indices": client["indices"], "label": [int(v) for v in client["y"]], "settings": [setting],
            "clients": client["clients"], "per_client": client["per_client"], "model": options["arch"],
            "weights": options["weights"], "iterations": options["iterations"], "every": options["every"],
            "seed": options["seed"], "device": describe_device(device), "x": x, "transformed": None,
            "latest": [None], "frames": [[]], "curves": [], "results": None, "seconds": 0.0, "status": "running",
            "grey": float(baselines["baseline_grey"].mean()),
            "mean_colour": float(baselines["baseline_mean_colour"].mean()), "started": time.time()}


def record_threat(run: dict, images: torch.Tensor, own: torch.Tensor, loss: float, iteration: int,
                  seconds: float) -> None:
    """One snapshot, its images already paired to x: latest, curves (means over the images), kept frames."""
    psnr_x, psnr_tx = psnr(images, run["x"]), psnr(own, run["transformed"])
    run["latest"][0] = {"iteration": iteration, "images": images, "psnr_x": psnr_x.tolist(),
                        "psnr_tx": psnr_tx.tolist(), "seconds": seconds}
    run["curves"].append({"setting": 0, "iteration": iteration, "loss": loss, "psnr_x": float(psnr_x.mean()),
                          "psnr_tx": float(psnr_tx.mean())})
    frames = run["frames"][0]
    frames.append((iteration, images))
    if len(frames) > FRAMES:
        del frames[1:-1:2]
    run["seconds"] = seconds


def paired(snapshot, transformed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A joint snapshot's images (and, for the aware attacker, its T(x) estimates) in the images' order."""
    own = snapshot.transformed if snapshot.transformed is not None else snapshot.images
    if snapshot.images.shape[0] == 1 or len(snapshot.status) != 1:
        return snapshot.images, own
    order = pair_reconstructions(snapshot.images, transformed)
    return snapshot.images[order], own[order]


def run_threat(board, status, model, client: dict, setting: compare.Setting, threat: Threat, options: dict) -> dict:
    """Attack setting A under `threat` on the client's images: live for one client (its update attacked as
    `attack_threat` does, same seeds), else `attack_threat` over every client; the finished run record."""
    device = next(model.parameters()).device
    run = new_threat_run(client, setting, threat, options, device)
    st.session_state["active_run"] = run
    x, y = client["x"].to(device), client["y"].to(device)
    config = setting.config(options["iterations"])
    with board.container():
        st.markdown(f"**{threat}** · " + header(0, setting))
        picture, text, charts = st.empty(), st.empty(), st.empty()
        picture.info("the client's update, then the first iteration")
    try:
        if client["clients"] == 1:
            clients_generator, attack_generator = make_generator(run["seed"], device), make_generator(run["seed"] + 1, device)
            shared, private = client_update(model, x, y, setting.policy, setting.defense, crop_flip=setting.crop_flip,
                                            generator=clients_generator, **threat.client_options(x.shape[0]))
            run["transformed"] = private.transformed.detach().cpu().float()
            drawn, final = [0.0], None
            for snapshot in iter_reconstruct(model, shared, threat.attack_config(config), generator=attack_generator,
                                             every=options["every"], policy=private.policy,
                                             crop_flip=private.crop_flip):
                final = snapshot
                images, own = paired(snapshot, run["transformed"])
                record_threat(run, images, own, float(snapshot.loss.nanmean()), snapshot.iteration, snapshot.seconds)
                status.progress(snapshot.iteration / snapshot.iterations,
                                text=f"{threat}: iteration {snapshot.iteration}/{snapshot.iterations} · "
                                     f"{snapshot.seconds:.1f} s")
                if time.perf_counter() - drawn[0] < 0.3 and not snapshot.done and snapshot.iteration > 1:
                    continue
                drawn[0] = time.perf_counter()
                picture.image(viz.grid_png([run["x"], run["transformed"], images], scale=3),
                              caption=f"rows: x, T(x), the reconstruction at iteration {snapshot.iteration}")
                text.caption(f"mean PSNR vs x {run['curves'][-1]['psnr_x']:.2f} dB (their mean colour: "
                             f"{run['mean_colour']:.2f} dB)")
                with charts.container():
                    draw_charts(run, "live")
            run["results"] = evaluate_reconstruction(final, private, x, client["indices"])
        else:
            status.progress(0.0, text=f"{threat}: attacking {client['clients']} clients one after another…")
            outcome = attack_threat(model, x, y, threat, config, policy=setting.policy, defense=setting.defense,
                                    seed=run["seed"], indices=client["indices"])
            run["transformed"] = outcome.private.transformed.detach().cpu().float()
            own = outcome.recon.transformed if outcome.recon.transformed is not None else outcome.recon.images
            record_threat(run, outcome.recon.images, own, float(outcome.recon.loss.nanmean()), options["iterations"],
                          outcome.seconds)
            run["results"] = outcome.results
    except Exception:  # an error is not a stop (Stop and reruns raise BaseExceptions, which keep the record)
        st.session_state.pop("active_run", None)
        raise
    st.session_state.pop("active_run", None)
    run["status"] = "done"
    return run


def show_threat_result(run: dict, with_scores: bool) -> None:
    """A finished threat run: the images paired, per-image scores and readings, charts, downloads, reproduce."""
    setting, results = run["settings"][0], run["results"]
    st.subheader(f"This run: {run['threat']}")
    budget = epsilon_text(setting.defense)
    st.caption(f"{run['threat']} · {run['clients']} client(s) of {run['per_client']} image(s) · {run['name']} · "
               f"{ARCHS.get(run['model'], run['model'])} ({run['weights']}) · {header(0, setting).replace('**', '')} · "
               f"{run['iterations']} iterations · seed {run['seed']} · {run['device']} · {run['seconds']:.1f} s")
    if budget:
        st.caption(f"DP-SGD: {budget}")
    frames = run["frames"][0]
    stops = sorted({it for it, _ in frames})
    chosen = st.select_slider("Scrub the snapshots (iteration)", options=stops, value=stops[-1],
                              key=f"scrub_{run['started']}") if len(stops) > 1 else stops[-1]
    iteration, images = [(it, im) for it, im in frames if it <= chosen][-1]
    st.image(viz.grid_png([run["x"], run["transformed"], images], scale=3),
             caption=f"rows: x, T(x), the reconstruction at iteration {iteration}, paired to the images")
    tx_mean_colour = baseline_scores(run["transformed"], run["transformed"])["baseline_mean_colour"].tolist()
    done = [r for r in results if r.status == "ok"]
    left, middle, right = st.columns(3)
    if done:
        median = stats.median([r.psnr_x for r in done])
        colour = stats.median([r.baseline_mean_colour for r in done])
        left.metric("median PSNR vs x", f"{median:.2f} dB", delta=f"{median - colour:+.1f} dB vs their mean colour",
                    help="Each reconstruction paired to its image; below zero, nothing beyond each image's mean colour.")
    middle.metric("labels recovered", f"{sum(r.label_recovered for r in results)} of {len(results)}")
    right.metric("clients", f"{run['clients']} × {run['per_client']} image(s)")
    rows = [{"image": name, "PSNR vs x": r.psnr_x, "mean colour": r.baseline_mean_colour, "aligned": r.psnr_x_aligned,
             "PSNR vs T(x)": r.psnr_tx, "SSIM vs x": r.ssim_x, "label recovered": r.label_recovered,
             "reading": compare.reading(r, tx_mean_colour[j], MARGIN), "status": r.status}
            for j, (name, r) in enumerate(zip(run["names"], results))]
    st.dataframe(pd.DataFrame(rows).round(3), hide_index=True, width="stretch")
    st.caption(f"Readings compare each image with trivial guesses, with a {MARGIN:g} dB margin: a reading, not a "
               "test. A joint attack's reconstructions are paired to the images (Hungarian matching) before scoring.")
    if len(run["curves"]) > 1:
        draw_charts(run, "result")
    downloads(run)
    reproduce(run)
    if with_scores:
        show_scores(st.empty(), setting.policy)


def big(images: torch.Tensor, scale: int):
    """(B, 3, H, W) -> the first image as a sharp, upscaled array (32 px × 6 = 192 px)."""
    return viz.to_display(images, scale=scale)[0]


def header(i: int, setting: compare.Setting) -> str:
    return f"**{NAMES[i]}** · policy **{setting.policy}** · defense {setting.defense} · {setting.attack}"


# --- the result -----------------------------------------------------------------------------------

def show_result(run: dict, with_scores: bool) -> None:
    """A finished run from its record: columns, scrub strip, charts, downloads, reproduce, then scores."""
    if run.get("threat", "fedsgd") != "fedsgd":
        show_threat_result(run, with_scores)
        return
    st.subheader("This run")
    st.caption(f"{run['name']} · {ARCHS.get(run['model'], run['model'])} ({run['weights']}) · "
               f"{run['iterations']} iterations · seed {run['seed']} · {run['device']} · {run['seconds']:.1f} s")
    stops = sorted({it for frames in run["frames"] for it, _ in frames})
    chosen = st.select_slider("Scrub the snapshots (iteration)", options=stops, value=stops[-1],
                              key=f"scrub_{run['started']}") if len(stops) > 1 else stops[-1]
    slots = []
    for i, column in enumerate(st.columns(len(run["settings"]))):
        show_column(column, run, i, chosen)
        slots.append(column.empty())
    st.caption(f"Readings compare one image with trivial guesses, with a {MARGIN:g} dB margin: a reading, not a "
               "test (the Benchmark page has intervals over 100 images). Aligned PSNR is the best over the flips "
               "and shifts the client's crop and policy can make.")
    draw_charts(run, "result")
    downloads(run)
    reproduce(run)
    if with_scores:  # last: the first scoring of a policy takes a few seconds
        for slot, setting in zip(slots, run["settings"]):
            show_scores(slot, setting.policy)


def show_column(column, run: dict, i: int, iteration: int) -> None:
    """One setting: its reconstruction at `iteration`, x and T(x), its reading and its scores."""
    setting, result = run["settings"][i], run["results"][i]
    column.markdown(header(i, setting))
    frames = [(it, image) for it, image in run["frames"][i] if it <= iteration] or run["frames"][i][:1]
    column.image(big(frames[-1][1][None], 6), caption=f"reconstruction, iteration {frames[-1][0]}", width="stretch")
    left, right = column.columns(2)
    left.image(big(run["x"][None], 4), caption="x", width="stretch")
    right.image(big(run["transformed"][i:i + 1], 4), caption="T(x)", width="stretch")
    read = compare.reading(result, run["tx_mean_colour"][i], MARGIN)
    column.markdown(f"**{read}**: {compare.READINGS[read]}")
    column.metric("PSNR vs x", f"{result.psnr_x:.2f} dB",
                  delta=f"{result.psnr_x - result.baseline_mean_colour:+.1f} dB vs its mean colour",
                  help="Below zero, the attack recovered nothing the image's own mean colour does not.")
    left, right = column.columns(2)
    left.metric("aligned PSNR vs x", f"{result.psnr_x_aligned:.2f} dB",
                help="The best PSNR over the flips and shifts the client's crop and policy can make.")
    right.metric("PSNR vs T(x)", f"{result.psnr_tx:.2f} dB",
                 help="The paper's number; for the aware attacker, its own estimate of T(x) against T(x).")
    tx = ("T(x) is x here" if result.baseline_tx >= PSNR_CAP  # no policy and no crop: the guess is the answer
          else f"T(x) itself {result.baseline_tx:.1f} dB")
    column.caption(f"SSIM vs x {result.ssim_x:.3f} · trivial guesses vs x: flat grey {result.baseline_grey:.1f} dB, "
                   f"mean colour {result.baseline_mean_colour:.1f} dB, {tx} · "
                   f"label {'recovered' if result.label_recovered else 'not recovered'}")
    if (budget := epsilon_text(setting.defense)) is not None:
        column.caption(f"DP-SGD: {budget}")
    if result.status != "ok":
        column.warning(f"The attack failed: {result.status}")


def show_scores(slot, policy: str) -> None:
    """S_pri and S_acc of `policy` beside those of no policy (cached, smoke preset)."""
    try:
        mine, none = policy_scores(policy), policy_scores("none")
    except ValueError as error:  # no CIFAR-100 test set
        slot.caption(f"S_pri/S_acc need the CIFAR-100 test set: {str(error).splitlines()[0][:160]}")
        return
    slot.caption(f"**S_pri** {mine['S_pri']:.3f} (no policy {none['S_pri']:.3f}; lower = more private) · "
                 f"**S_acc** {mine['S_acc']:.1f} (no policy {none['S_acc']:.1f}; higher = better accuracy)")


def curves_frame(run: dict, points: int = 300) -> pd.DataFrame:
    """The run's curves, at most about `points` a setting (a long IG run yields thousands of frames)."""
    table = pd.DataFrame(run["curves"], columns=["setting", "iteration", "loss", "psnr_x", "psnr_tx"])
    step = max(1, len(table) // (points * max(1, len(run["settings"]))))
    table = table[table.groupby("setting").cumcount(ascending=False) % step == 0]  # each setting's last kept
    return table.assign(name=[f"{NAMES[i]}: {run['settings'][i].policy} · {run['settings'][i].attack}"
                              for i in table["setting"]])


def draw_charts(run: dict, where: str) -> None:
    """PSNR vs x with the image's baselines as lines, PSNR vs T(x), and the loss; titled, labelled."""
    table = curves_frame(run)
    specs = (("psnr_x", "PSNR vs x over the run", "PSNR vs x (dB)", True),
             ("psnr_tx", "PSNR vs T(x) (the paper's measure)", "PSNR vs T(x) (dB)", False),
             ("loss", "Gradient-matching loss", "loss (log scale)", False))
    for column, (value, title, axis, baselines) in zip(st.columns(3), specs):
        figure = go.Figure()
        for name, rows in table.groupby("name", sort=False):
            figure.add_scatter(x=rows["iteration"], y=rows[value], mode="lines+markers", name=name,
                               marker={"size": 4})
        if baselines:
            figure.add_hline(y=run["mean_colour"], line_dash="dash", annotation_text="its mean colour")
            figure.add_hline(y=run["grey"], line_dash="dot", annotation_text="flat grey",
                             annotation_position="bottom right")
        figure.update_layout(title=title, height=340, margin={"t": 60, "b": 10, "l": 10, "r": 10},
                             legend={"orientation": "h", "y": -0.3}, xaxis_title="iteration", yaxis_title=axis)
        figure.update_xaxes(range=[0, run["iterations"]], tickformat="d")
        if value == "loss":
            figure.update_yaxes(type="log")
        column.plotly_chart(figure, width="stretch", key=f"chart_{where}_{value}_{len(table)}",
                            config={"displayModeBar": False})  # its icons would sit on the title


def table_of(run: dict) -> pd.DataFrame:
    """The run's numbers, a row per setting (the CSV); under an aggregated threat, a row per image."""
    rows = []
    if run.get("threat", "fedsgd") != "fedsgd":
        setting, latest = run["settings"][0], run["latest"][0]
        for j, index in enumerate(run["indices"]):
            result = run["results"][j].to_dict() if run["results"] else {
                "psnr_x": latest["psnr_x"][j] if latest else None, "status": run["status"]}
            rows.append({"setting": f"A #{index}", "threat": run["threat"], "policy": setting.policy,
                         "defense": setting.defense, "attack": setting.attack, **result})
        return pd.DataFrame(rows)
    for i, setting in enumerate(run["settings"]):
        result = run["results"][i].to_dict() if run["results"][i] else {
            "psnr_x": (run["latest"][i] or {}).get("psnr_x"), "status": run["status"]}
        rows.append({"setting": NAMES[i], "policy": setting.policy, "defense": setting.defense,
                     "attack": setting.attack, **result})
    return pd.DataFrame(rows)


def comparison_grid(run: dict) -> list[torch.Tensor]:
    if run.get("threat", "fedsgd") != "fedsgd":
        latest = run["latest"][0]
        return [run["x"], run["transformed"], latest["images"] if latest else torch.full_like(run["x"], 0.5)]
    count = len(run["settings"])
    latest = torch.stack([r["image"] if r else torch.full_like(run["x"], 0.5) for r in run["latest"]])
    return [run["x"].expand(count, *run["x"].shape), run["transformed"][:count], latest]


def downloads(run: dict) -> None:
    threat = run.get("threat", "fedsgd")
    stem = f"ats-{'compare' if threat == 'fedsgd' else threat}-{run['model']}-seed{run['seed']}"
    document = {"image": run["name"], "label": run["label"], "threat": threat, "model": run["model"],
                "weights": run["weights"],
                "iterations": run["iterations"], "seed": run["seed"], "device": run["device"],
                "status": run["status"], "settings": table_of(run).to_dict("records"), "curves": run["curves"]}
    left, middle, right = st.columns(3)
    left.download_button("Download the comparison (PNG grid)", viz.grid_png(comparison_grid(run), scale=4),
                         file_name=f"{stem}.png", mime="image/png", on_click="ignore")
    middle.download_button("Download the numbers (JSON)", json.dumps(document, indent=2, default=str),
                           file_name=f"{stem}.json", mime="application/json", on_click="ignore")
    right.download_button("Download the numbers (CSV)", table_of(run).to_csv(index=False),
                          file_name=f"{stem}.csv", mime="text/csv", on_click="ignore")


def reproduce(run: dict) -> None:
    if run.get("threat", "fedsgd") != "fedsgd":
        with st.expander("Reproduce in Python (and with `ats attack`)"):
            st.code(threat_snippet(run), language="python")
            if run["clients"] == 1:
                st.markdown("The Python call gives this run's numbers exactly. `ats attack --threat` shares the "
                            "same update but draws the client's and the attack's randomness from one generator, so "
                            "it makes another valid run of the same attack, not these numbers.")
                st.code(command_line(run, run["settings"][0]), language="bash")
            else:
                st.markdown("The Python call gives this run's numbers exactly; `ats attack --threat` treats all "
                            "its images as one client, so it has no equivalent of several clients.")
        return
    with st.expander("Reproduce in Python (and with `ats attack`)"):
        st.code(python_snippet(run), language="python")
        st.markdown("The Python call gives this run's numbers exactly. Each setting alone, on the command line, "
                    "starts from the same client step and starting point; a setting that ran batched with others "
                    "ends within about 1e-3 dB of it under IG, but iDLG/DLG (L-BFGS) amplify the batch's last-bit "
                    "rounding, so there it can end dB apart: another valid run of the same attack.")
        st.code("\n".join(command_line(run, s) for s in run["settings"]), language="bash")


def _model_line(run: dict) -> str:
    """The snippets' line that builds or loads the run's model."""
    return {"untrained": f"model = ats.build_model({run['model']!r}, 100, seed={run['seed']})",
            "upload": f"model, _ = ats.load_checkpoint('your-checkpoint.pt', expect_arch={run['model']!r})"}.get(
        run["weights"], f"model, _ = ats.load_checkpoint(asset_path('models', {run['weights']!r}), "
                        f"expect_arch={run['model']!r})")


def python_snippet(run: dict) -> str:
    """The `ats` calls that give this run's numbers (the Python snippet the reproduce expander shows)."""
    source = run["source"]
    if source["kind"] == "upload":
        image = (f"x = ats.load_image({source['file']!r})  # the file you uploaded\n"
                 f"y = {run['label']}")
    else:
        loader = "ats.load_samples()" if source["kind"] == "samples" else 'ats.load_dataset("cifar100", "test")'
        image = f"images = {loader}\nx, y = images.batch([{source['index']}])\nx, y = x[0], int(y[0])"
    model = _model_line(run)
    settings = ",\n            ".join(f"Setting({s.policy!r}, {s.defense!r}, {s.attack!r})" for s in run["settings"])
    return (f"import ats\nfrom ats.compare import Setting, compare\nfrom ats.runtime import asset_path\n\n{image}\n"
            f"{model}\nmodel = model.to(ats.pick_device()).eval()\nsettings = [{settings}]\n"
            f"result = compare(model, x, y, settings, iterations={run['iterations']}, seed={run['seed']})\n"
            "for row in result.rows():\n"
            "    print(f\"{row['policy']} · {row['defense']} · {row['attack']}: PSNR vs x {row['psnr_x']:.4f} dB, \"\n"
            "          f\"aligned {row['psnr_x_aligned']:.4f} dB, mean colour {row['baseline_mean_colour']:.4f} dB\")\n")


def threat_snippet(run: dict) -> str:
    """The `ats.threats.attack_threat` call that gives a threat run's numbers."""
    source, setting = run["source"], run["settings"][0]
    if source["kind"] == "upload":
        image = (f"x = ats.load_image({source['file']!r})[None].to(device)  # the file you uploaded\n"
                 f"y = torch.tensor({run['label']}, device=device)")
    else:
        loader = "ats.load_samples()" if source["kind"] == "samples" else 'ats.load_dataset("cifar100", "test")'
        image = f"images = {loader}\nx, y = images.batch({run['indices']}, device=device)"
    model = _model_line(run)
    return ("from dataclasses import replace\n\nimport torch\n\nimport ats\nfrom ats.attacks import AttackConfig\n"
            "from ats.runtime import asset_path\nfrom ats.threats import attack_threat\n\n"
            f"device = ats.pick_device()\n{image}\n{model}\nmodel = model.to(device).eval()\n"
            f"config = replace(AttackConfig.preset({setting.attack!r}), iterations={run['iterations']})\n"
            f"outcome = attack_threat(model, x, y, {run['threat']!r}, config, policy={setting.policy!r}, "
            f"defense={setting.defense!r},\n                        seed={run['seed']}, "
            f"indices={run['indices'] if source['kind'] != 'upload' else [0]})\n"
            "for r in outcome.results:\n"
            "    print(f\"#{r.index}: PSNR vs x {r.psnr_x:.4f} dB, aligned {r.psnr_x_aligned:.4f} dB, \"\n"
            "          f\"mean colour {r.baseline_mean_colour:.4f} dB\")\n")


def command_line(run: dict, setting: compare.Setting) -> str:
    source = run["source"]
    threat = run.get("threat", "fedsgd")
    if source["kind"] == "upload":
        image = f"--image {source['file']!r} --label {run['label'] if threat == 'fedsgd' else run['label'][0]}"
    elif threat != "fedsgd":
        image = f"--data {source['kind']} --indices {','.join(str(i) for i in run['indices'])} --threat {threat}"
    else:
        image = f"--data {source['kind']} --indices {source['index']}"
    weights = {"untrained": "", "upload": " --checkpoint your-checkpoint.pt"}.get(
        run["weights"], f" --checkpoint ats/assets/models/{run['weights']}")
    return (f"ats attack {image} --model {run['model']}{weights} --policy {setting.policy} --defense "
            f"{setting.defense} --attack {setting.attack} --iterations {run['iterations']} --seed {run['seed']}")


def show_history(when: str) -> None:
    """The kept runs: a table of every setting's numbers and a grid per run (`when`: before or after a run)."""
    runs = st.session_state.get("runs", [])
    if not runs:
        return
    st.subheader("Kept runs")
    rows = []
    for number, run in reversed(list(enumerate(runs, start=1))):
        for _, row in table_of(run).iterrows():
            rows.append({"run": number, "image": run["name"], "model": f"{run['model']} ({run['weights']})",
                         "setting": f"{row['setting']}: " + (f"{run['threat']} · " if "threat" in row else "")
                                    + f"{row['policy']} · {row['defense']} · {row['attack']}",
                         "PSNR vs x": row.get("psnr_x"), "mean colour": row.get("baseline_mean_colour"),
                         "aligned": row.get("psnr_x_aligned"), "PSNR vs T(x)": row.get("psnr_tx"),
                         "SSIM vs x": row.get("ssim_x"), "iterations": run["iterations"],
                         "seconds": round(run["seconds"], 1), "status": run["status"]})
    st.dataframe(pd.DataFrame(rows).round(3), hide_index=True, width="stretch")
    columns = st.columns(HISTORY)
    for column, (number, run) in zip(columns, reversed(list(enumerate(runs, start=1)))):
        if run["transformed"] is not None:
            column.image(viz.grid_png(comparison_grid(run), scale=2), width="stretch",
                         caption=f"run {number}: rows x, T(x), reconstruction")
    st.button("Clear the kept runs", key=f"clear_{when}", on_click=clear_runs)


def clear_runs() -> None:
    st.session_state["runs"] = []


def run_button(slot, token: int, disabled: bool) -> None:
    """Run, keyed by the run it starts: a click that waited for a run to end carries an older token."""
    slot.button("Run", type="primary", key=f"run_{token}", on_click=ask, args=(token,), disabled=disabled,
                help="To stop a run, press Stop at the top right: what it reached is kept.")


@st.fragment
def bench(x: torch.Tensor, y: int, name: str, source: dict) -> None:
    """The threat, the settings, the estimate, Run, the live run, its result and the kept runs (reruns alone)."""
    flush_stopped_run()
    client = None
    with st.container(border=True):
        threat = choose_threat()
        if threat is not None and threat.aggregated:
            client = choose_client(threat, x, y, name, source)
    blocked = threat is None or (threat.aggregated and client is None)
    options = choose_model()
    settings, errors = choose_settings(x, options["seed"], pick_device(), threat)
    try:
        model = load_model(options)
    except ValueError as error:
        st.error(str(error))
        return
    if settings and not errors and not blocked:
        if threat.aggregated:
            show_threat_plan(model, threat, client, settings[0], options)
        else:
            show_estimate(model, x, y, settings, options)
    token = st.session_state.setdefault("run_token", 0)
    button, status, board, history = st.empty(), st.empty(), st.empty(), st.empty()
    run_button(button, token, disabled=bool(errors) or blocked)
    asked = st.session_state.pop("asked", None)
    with history.container():
        show_history("before")
    last = st.session_state.get("last_run")
    if asked is not None and asked != token:
        status.info("Run was pressed again while the last run was going: ignored. Press Run now to run again.")
    if asked == token and not errors and not blocked:
        st.session_state["run_token"] = token + 1  # a click queued during this run now carries an old token
        status.progress(0.0, text="starting: each setting's client step, then the first iteration")
        button.button("Running…", disabled=True, key=f"running_{token}")
        try:
            if threat.aggregated:
                last = run_threat(board, status, model, client, settings[0], threat, options)
            else:
                last = run_live(board, status, model, x, y, name, source, settings, options)
        except ValueError as error:  # a combination the library refuses (FedAvg with DP-SGD, …): one line
            status.empty()
            board.error(f"This run cannot go: {error}")
            run_button(button, token + 1, disabled=False)
            return
        keep_in_history(last)
        st.session_state["last_run"] = last
        st.session_state["current_policy"] = next((s.policy for s in settings if s.policy != "none"), "none")
        status.empty()
        run_button(button, token + 1, disabled=False)
        with history.container():
            show_history("after")
    if last is not None:
        with board.container():
            now = str(threat) if threat is not None else None
            if (last["settings"] != settings or last.get("threat", "fedsgd") != now
                    or last["name"] != (client["name"] if client is not None else name)):
                st.caption("The settings or the image changed since this run: press Run to attack with them.")
            show_result(last, options["with_scores"])


st.html(PIXELATED)
st.title("Attack playground")
st.caption("A client shares the gradient of its loss on a private image; the server inverts it. A policy transforms "
           "the image before the gradient is taken, a gradient defense perturbs the gradient. Compare up to four "
           "settings on one image: Run attacks them side by side. The threat model can instead share a FedAvg "
           "update or one gradient of a batch whose labels stay private.")
chosen = choose_image()
if chosen is None:
    st.stop()
x, y, name, source = chosen
with st.expander("What the 50 ops do to this image"):
    thumbnails = op_gallery(x.numpy())
    for row in range(0, len(thumbnails), 10):
        for i, column in enumerate(st.columns(10), start=row):
            column.image(thumbnails[i], caption=viz.op_label(i), width="stretch")
bench(x, y, name, source)
