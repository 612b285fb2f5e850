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
# # 1. Gradients leak images
#
# **Question:** a client in federated learning shares only the gradient of its loss on a private
# image. How much of the image does that gradient give away?
#
# We play the server. The client computes ∇θ loss(f(x), y) on its image x and sends it; we know the
# model f and search for an image whose gradient matches. This is *Deep Leakage from Gradients*
# (DLG, Zhu et al., NeurIPS 2019) and its improved label trick *iDLG* (Zhao et al., 2020), on the
# small LeNet with sigmoids that DLG attacked.
#
# Everything here is a call into `ats`; the budgets follow `$ATS_PRESET` (`smoke` in CI, `laptop` by default).

# %%
from dataclasses import replace

import matplotlib.pyplot as plt

from ats import attacks, checkpoints, data, federated, models, viz
from ats.evaluation import evaluate_reconstruction, summarize
from ats.runtime import describe_device, make_generator, pick_device, preset_name

PRESET = preset_name()
ITERATIONS = {"smoke": 2, "laptop": 300, "paper": 300}[PRESET]  # L-BFGS iterations (each up to 20 evaluations)
IMAGES = {"smoke": 2, "laptop": 5, "paper": 5}[PRESET]
device = pick_device()
print(f"preset {PRESET}: {IMAGES} images, {ITERATIONS} iterations, on {describe_device(device)}")

# %% [markdown]
# ## The private images and the client's update
# The first images of the CIFAR-100 attack set (test images 0, 1, …); without a local copy the
# bundled sample photos stand in. The model is DLG's LeNet, untrained: weights uniform in ±0.5.

# %%
images = data.attack_images(IMAGES)
x, y = images.batch(range(len(images)), device)
model = models.build_model("lenet", 100, seed=0).to(device).eval()
# what the client shares (update) and what stays with it (T(x), the true labels, the policy), kept to score
update, private = federated.client_update(model, x, y, per_example=True)  # one gradient per image, as if each were a client
print(models.describe_model(model))
print("shared tensors:", [tuple(g.shape[1:]) for g in update.gradients])
viz.show_grid([x.cpu()], labels=["private x"], title=", ".join(images.classes[int(c)] for c in y));

# %% [markdown]
# ## Label inference: the gradient names the class
# With one image, the gradient of the last layer's bias is softmax(f(x)) − onehot(y): negative only at
# the true class. iDLG reads the label straight off it, before any optimization.

# %%
inferred = federated.infer_labels(update, model)
for true, guess in zip(y.tolist(), inferred.tolist()):
    print(f"true {images.classes[true]:>12}   inferred {images.classes[guess]:>12}   {'✓' if true == guess else '✗'}")
bias_gradient = update.gradients[-1][0].cpu()
plt.figure(figsize=(8, 2))
plt.bar(range(100), bias_gradient)
plt.axvline(int(y[0]), color="red", ls="--", label="true class")
plt.title("image 0: gradient of the last bias, per class"); plt.legend(); plt.show()

# %% [markdown]
# ## iDLG: L-BFGS on the L2 gradient distance, label read off the gradient

# %%
idlg = replace(attacks.AttackConfig.idlg(), iterations=ITERATIONS)
recon = attacks.reconstruct(model, update, idlg, generator=make_generator(1, device))
results = evaluate_reconstruction(recon, private, x)
print(summarize(results))
print(f"{recon.seconds:.1f} s; per-image PSNR:", [round(r.psnr_x, 1) for r in results])
viz.show_grid([x.cpu(), recon.images], labels=["private x", "iDLG"]);

# %% [markdown]
# ## DLG: the label is optimized jointly with the image
# DLG does not know the label; it optimizes soft label logits alongside the pixels.

# %%
dlg = replace(attacks.AttackConfig.dlg(), iterations=ITERATIONS)
recon_dlg = attacks.reconstruct(model, update, dlg, generator=make_generator(1, device))
results_dlg = evaluate_reconstruction(recon_dlg, private, x)
print(summarize(results_dlg))
print("labels recovered:", [r.label_recovered for r in results_dlg])
viz.show_grid([x.cpu(), recon.images, recon_dlg.images], labels=["private x", "iDLG", "DLG"]);

# %% [markdown]
# ## Why the untrained LeNet is the easy case
# DLG's LeNet is untrained, with large random weights (uniform in ±0.5) and smooth sigmoids, so every
# pixel moves the gradient and the loss is far from zero: the gradient carries a lot of signal. It
# is also tiny, so DLG's 300 iterations of up to 20 evaluations each finish in about a minute. Deeper
# and trained models change both: each evaluation costs far more, and a trained model's small loss
# gives small, less informative gradients. Below: iDLG with a tenth of the budget on LeNet, on an
# untrained ResNet20 and on a (briefly) trained ResNet20, one image each. Read the numbers, not the
# story: at a short budget the ranking can surprise (the reason the benchmark fixes budgets).

# %%
from ats.scores import default_score_checkpoint

short = replace(idlg, iterations=max(1, ITERATIONS // 10))
trained, meta = checkpoints.load_checkpoint(default_score_checkpoint(), device=device)
victims = {"LeNet (untrained)": model, "ResNet20 (untrained)": models.build_model("resnet20", 100, seed=0).to(device),
           f"ResNet20 (trained {meta.epochs} epochs on 10 %)": trained}
rows, names = [x[:1].cpu()], ["x"]
for name, victim in victims.items():
    victim.eval()
    u, kept = federated.client_update(victim, x[:1], y[:1], per_example=True)
    r = attacks.reconstruct(victim, u, short, generator=make_generator(1, device))
    res = evaluate_reconstruction(r, kept, x[:1])[0]
    print(f"{name:>38}: PSNR {res.psnr_x:5.1f} dB, label {'recovered' if res.label_recovered else 'wrong'}, "
          f"{short.iterations} iterations in {r.seconds:.1f} s")
    rows.append(r.images); names.append(name)
viz.show_grid(rows, labels=names);

# %% [markdown]
# **Take-away.** A single image's gradient on an untrained LeNet gives the image back almost exactly,
# and its label for free. The rest of this course asks how to make that harder (notebook 3) and how
# to measure it honestly (notebook 6).
