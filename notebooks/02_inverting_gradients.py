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
# # 2. Inverting Gradients
#
# **Question:** DLG fails on deep networks. What does an attack on a ResNet need, and does a trained
# model leak less than an untrained one?
#
# *Inverting Gradients* (Geiping et al., NeurIPS 2020) matches the **direction** of the gradient
# (cosine distance over all layers), takes Adam steps on the sign of the image gradient, clamps to
# valid pixels, and adds a total-variation (TV) prior. The ATS paper evaluates every defense with
# exactly this attack (`ig`): lr 0.1, 4,800 iterations with ×0.1 decay at 3/8, 5/8 and 7/8, TV 1e-4.

# %%
from dataclasses import replace

from ats import attacks, checkpoints, data, federated, models, viz
from ats.evaluation import evaluate_reconstruction, summarize
from ats.runtime import describe_device, make_generator, pick_device, preset_name
from ats.scores import default_score_checkpoint

PRESET = preset_name()
ITERATIONS = {"smoke": 4, "laptop": 400, "paper": 4800}[PRESET]
IMAGES = {"smoke": 1, "laptop": 2, "paper": 4}[PRESET]
device = pick_device()
print(f"preset {PRESET}: {IMAGES} images, {ITERATIONS} iterations, on {describe_device(device)}")

images = data.attack_images(IMAGES)
x, y = images.batch(range(len(images)), device)
untrained = models.build_model("resnet20", 100, seed=0).to(device).eval()
update, private = federated.client_update(untrained, x, y, per_example=True)  # what is shared, what stays
ig = replace(attacks.AttackConfig.ig(), iterations=ITERATIONS)
print(ig)

# %% [markdown]
# ## Watching the reconstruction sharpen
# `iter_reconstruct` yields a snapshot every few iterations (the app's live view uses the same generator).

# %%
frames = []
for snap in attacks.iter_reconstruct(untrained, update, ig, generator=make_generator(1, device),
                                     every=max(1, ITERATIONS // 4)):
    frames.append(snap)
    print(f"iteration {snap.iteration:5d}  cost {snap.loss.mean():.4f}  {snap.seconds:6.1f} s")
viz.show_grid([x.cpu()] + [f.images for f in frames], labels=["x"] + [f"it {f.iteration}" for f in frames]);
print(summarize(evaluate_reconstruction(frames[-1], private, x)))

# %% [markdown]
# ## Restarts and the TV prior
# The attack is non-convex: several random starts, keeping the one with the lowest gradient cost,
# help. TV trades detail for smoothness; ATS uses a light 1e-4.

# %%
variants = {
    "ig (TV 1e-4)": ig,
    "2 restarts": replace(ig, restarts=2),
    "TV 1e-2": replace(ig, tv=1e-2),
    "no sign (plain Adam)": replace(ig, signed=False),
}
rows, names = [x.cpu()], ["x"]
for name, config in variants.items():
    recon = attacks.reconstruct(untrained, update, config, generator=make_generator(1, device))
    s = summarize(evaluate_reconstruction(recon, private, x))
    print(f"{name:>22}: PSNR {s.get('psnr_x_mean', float('nan')):5.2f} dB, SSIM {s.get('ssim_x_mean', float('nan')):.3f}, "
          f"{recon.seconds:5.1f} s")
    rows.append(recon.images); names.append(name)
viz.show_grid(rows, labels=names);

# %% [markdown]
# ## What a trained model changes
# The ATS paper attacks fully trained models. Here we use the small model shipped with `ats` (trained
# on 10 % of CIFAR-100, the one behind the privacy score) as a stand-in for a trained network.

# %%
trained, meta = checkpoints.load_checkpoint(default_score_checkpoint(), device=device)
trained.eval()
print(f"{meta.arch}, trained {meta.epochs} epochs by recipe {meta.recipe!r}, test accuracy {meta.accuracy:.1%}")
update_t, private_t = federated.client_update(trained, x, y, per_example=True)
recon_t = attacks.reconstruct(trained, update_t, ig, generator=make_generator(1, device))
recon_u = frames[-1]
for name, r, p in (("untrained", recon_u, private), ("trained", recon_t, private_t)):
    s = summarize(evaluate_reconstruction(r, p, x))
    print(f"{name:>9}: PSNR {s.get('psnr_x_mean', float('nan')):5.2f} dB, SSIM {s.get('ssim_x_mean', float('nan')):.3f}")
viz.show_grid([x.cpu(), recon_u.images, recon_t.images], labels=["x", "untrained", "trained"]);

# %% [markdown]
# **Take-away.** On a ResNet the attack needs thousands of iterations to show more than the rough
# layout; the paper's 4,800 are out of reach of a laptop per image, so later notebooks compare
# defenses at equal, smaller budgets and say so.
