# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Transformations as a defense
#
# **Question:** if the client transforms its image before computing the gradient, what does the
# attacker recover, and is that private?
#
# ATS (Gao et al., CVPR 2021) picks a *policy* of up to three ops from a pool of 50 (shifts, shears,
# contrast, …) and trains with it. The attacker then reconstructs T(x), the transformed image,
# not x. The paper scores PSNR against T(x); a person cares about x. We look at both.

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
from dataclasses import replace
from IPython.display import display

from ats import attacks, data, federated, models, viz
from ats.evaluation import evaluate_reconstruction, summarize
from ats.pool import POOL
from ats.policy import parse_policy
from ats.runtime import make_generator, pick_device, preset_name

PRESET = preset_name()
ITERATIONS = {"smoke": 2, "laptop": 100, "paper": 300}[PRESET]
IMAGES = {"smoke": 2, "laptop": 4, "paper": 8}[PRESET]
device = pick_device()
images = data.attack_images(IMAGES)
x, y = images.batch(range(len(images)), device)

# %% [markdown]
# ## The 50 ops on one image
# Each entry of the pool is an op at a fixed magnitude; signed ops (shifts, shears, enhancements)
# draw a random sign per image.

# %%
gallery = viz.op_gallery(x[0].cpu())  # (50, 3, 32, 32)
viz.show_grid([gallery[i:i + 10] for i in range(0, 50, 10)],
              labels=[f"ops {i}–{i + 9}" for i in range(0, 50, 10)], scale=2);

# %% [markdown]
# ## Explore: pick up to three ops
# Move the sliders (indices into the pool; −1 = unused) to build a policy and see it on the images.
# Every redraw draws new random signs, crops and flips, like a new training epoch.

# %%
out = widgets.Output()


def show_policy(first=3, second=1, third=7, seed=0):
    picked = [i for i in (first, second, third) if i >= 0]
    policy = parse_policy("-".join(map(str, picked)) or "none")
    with out:
        out.clear_output(wait=True)
        print(f"{policy}: {policy.describe()}")
        t = policy.transform(x.cpu(), make_generator(seed), crop_flip=True)
        viz.show_grid([x.cpu(), t], labels=["x", f"T(x), {policy}"])
        plt.show()


sliders = {name: widgets.IntSlider(value=v, min=-1, max=len(POOL) - 1, description=name)
           for name, v in (("first", 3), ("second", 1), ("third", 7))}
seed = widgets.IntSlider(value=0, min=0, max=20, description="seed")
widgets.interactive_output(show_policy, {**sliders, "seed": seed})
display(widgets.VBox([widgets.HBox(list(sliders.values()) + [seed]), out]))
show_policy()

# %% [markdown]
# ## The paper's policies
# 3-1-7 and 43-18-18 were found for CIFAR-100; the hybrid gives each image one of them at random.

# %%
rows, names = [x.cpu()], ["x"]
for text in ("3-1-7", "43-18-18", "3-1-7+43-18-18"):
    policy = parse_policy(text)
    print(f"{text:>15}: {policy.describe()}")
    rows.append(policy.transform(x.cpu(), make_generator(0), crop_flip=True)); names.append(text)
viz.show_grid(rows, labels=names);

# %% [markdown]
# ## Attack with and without a policy
# iDLG on the untrained LeNet (notebook 1's easy case), so that the attack itself works well and
# only the policy differs.

# %%
model = models.build_model("lenet", 100, seed=0).to(device).eval()
config = replace(attacks.AttackConfig.idlg(), iterations=ITERATIONS)
rows, names, table = [x.cpu()], ["x"], []
for text, crop_flip in (("none", False), ("3-1-7", True), ("43-18-18", True)):  # as the original: x, or crop+flip+policy
    update, private = federated.client_update(model, x, y, text, crop_flip=crop_flip,
                                              generator=make_generator(0, device), per_example=True)
    recon = attacks.reconstruct(model, update, config, generator=make_generator(1, device))
    s = summarize(evaluate_reconstruction(recon, private, x))
    table.append((text, s["psnr_tx_mean"], s["psnr_x_mean"]))
    rows += [private.transformed.cpu(), recon.images]; names += [f"T(x) {text}", f"recon. {text}"]
print(f"{'policy':>10} {'PSNR vs T(x)':>13} {'PSNR vs x':>10}")
for text, vs_t, vs_x in table:
    print(f"{text:>10} {vs_t:13.2f} {vs_x:10.2f}")
viz.show_grid(rows, labels=names);

# %% [markdown]
# ## Why the difference matters
# Against T(x) a transformed image can look well hidden or not, depending on the attack; against x,
# a reconstruction of a **shifted** image scores badly even when every object is perfectly
# recognisable, because PSNR compares pixel by pixel. A high PSNR vs T(x) with a low one vs x means:
# the attacker saw the (transformed) picture. Whether that is private is a question PSNR against x
# alone cannot answer; notebook 6 adds an attacker who knows the policy and undoes the shift.
