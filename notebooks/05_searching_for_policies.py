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
# # 5. Searching for policies
#
# **Question:** among thousands of possible policies, which ones protect best at an acceptable
# accuracy cost, and how do we combine them?
#
# The ATS search (§4.4) scores random candidate policies of 1–3 ops with S_pri and S_acc (notebook 4),
# drops those below the accuracy threshold, ranks the rest by S_pri, and hands the best ones, plus a
# *hybrid* of top policies that share no op, to training. The paper scored 1,500 candidates on a GPU;
# here a small search runs into a results database that survives interruption: run the cell again
# and it only scores what is missing.

# %%
import matplotlib.pyplot as plt

from ats import checkpoints, data, scores, search
from ats.runtime import pick_device, preset_name
from ats.selection import select
from ats.store import Store

PRESET = preset_name()
CANDIDATES = {"smoke": 4, "laptop": 24, "paper": 1500}[PRESET]
config = scores.ScoreConfig.smoke() if PRESET == "smoke" else scores.ScoreConfig.laptop()
device = pick_device()
test = data.load_dataset("cifar100", "test")
checkpoint = scores.default_score_checkpoint()
privacy_model, _ = checkpoints.load_checkpoint(checkpoint, device=device)
accuracy_model = scores.accuracy_model(config, seed=0).to(device)
candidates = search.candidates(CANDIDATES, seed=0)
print(f"{len(candidates)} candidates, e.g. {', '.join(map(str, candidates[:6]))}")

# %% [markdown]
# Set `ON_RAY = True` to score the candidates as Ray tasks, one CPU each, on this machine's Ray
# cluster (`pip install 'ats[ray]'`; started on first use, about 15 s): the rows, the database and
# resuming are the same, only the policies run side by side. `RayOptions(address="ray://head:10001",
# gpus_per_task=0.5)` would send them to a cluster's GPUs.

# %%
ON_RAY = False
ray = None
if ON_RAY:
    from ats.distributed import RayOptions

    ray = RayOptions(address="auto", cpus_per_task=1)
db = f"notebook-search-{PRESET}.db"
with Store.open(db, definition=config.definition()) as store:
    result = search.run_search(candidates, store=store, privacy_model=privacy_model, accuracy_model=accuracy_model,
                               data=test, config=config, seed=0, checkpoint_hash=checkpoints.checkpoint_hash(checkpoint),
                               ray=ray)
print(f"scored {result.scored}, already in {db}: {result.skipped}, {result.seconds:.0f} s"
      + (f", {result.failed} failed (rerun to retry)" if result.failed else ""))

# %% [markdown]
# ## Selection: threshold, rank, top-2, hybrid and the Pareto front

# %%
selection = select(result.rows, threshold=scores.ACCURACY_THRESHOLD, top=2)
print(f"{len(selection.ranked)} of {selection.candidates} pass S_acc ≥ {selection.threshold}")
for rank, row in enumerate(selection.ranked[:8], start=1):
    print(f"{rank:>3}. {row.policy:>10}  S_pri {row.privacy:.3f}  S_acc {row.accuracy:7.2f}")
print("top:", [r.policy for r in selection.top], " hybrid:", selection.hybrid)
print("Pareto front:", [r.policy for r in selection.pareto])
if selection.note:
    print(selection.note)

# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
rows = result.rows
ax.scatter([r.privacy for r in rows], [r.accuracy for r in rows], color="lightgray", label="candidates")
ax.scatter([r.privacy for r in selection.ranked], [r.accuracy for r in selection.ranked], color="C0",
           label="pass the threshold")
front = sorted(selection.pareto, key=lambda r: r.privacy)
ax.plot([r.privacy for r in front], [r.accuracy for r in front], "C2-o", label="Pareto front")
for r in selection.top:
    ax.annotate(r.policy, (r.privacy, r.accuracy), color="C3", xytext=(4, 4), textcoords="offset points")
ax.scatter([r.privacy for r in selection.top], [r.accuracy for r in selection.top], color="C3", s=60, label="selected")
ax.axhline(selection.threshold, ls="--", color="gray")
ax.set(xlabel="S_pri (← more private)", ylabel="S_acc (↑ better)"); ax.legend(fontsize=8); plt.show()

# %% [markdown]
# The selected policies and the hybrid go to training and the benchmark (notebook 6;
# `ats benchmark --from-search notebook-search-laptop.db`). The same search at scale is
# `ats search --candidates 1500` (add `--racing` to drop hopeless candidates early).
