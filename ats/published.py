"""The published numbers this kit is compared with: Gao et al., "Privacy-preserving Collaborative
Learning with Automatic Transformation Search" (CVPR 2021), Tables 1 and 3, §5.2 and Fig. 2, and the
ReScience C 2022 reproduction of it with the original code.

Only numbers and names that appear in those papers live here; `ats.benchmark` runs the protocol
and `ats.report` sets our numbers beside these. The papers' own caveats (which defenses were
applied in training, which attacker) are summarized in `docs/method.md`.
"""
from __future__ import annotations

# The paper's policies (Table 1): no policy, its two searched ones and their hybrid.
PAPER_POLICIES = ("none", "3-1-7", "43-18-18", "3-1-7+43-18-18")

# CVPR 2021, Tables 1 and 3 (CIFAR-100, ResNet20-4, Adam+Cosine): (PSNR vs T(x), accuracy %).
# Table 3's defenses were applied in *training*; their accuracy is that of a model trained so.
PAPER = {
    ("none", "none"): (13.88, 76.88), ("3-1-7", "none"): (6.579, 70.56), ("43-18-18", "none"): (8.56, 77.27),
    ("3-1-7+43-18-18", "none"): (7.64, 77.92), ("random", "none"): (11.41, 73.94),
    ("none", "prune-70"): (12.00, 77.12), ("none", "prune-95"): (10.07, 70.12), ("none", "prune-99"): (10.93, 58.33),
    ("none", "lap-1e-3"): (11.85, 74.12), ("none", "lap-1e-2"): (9.67, 39.59),
    ("none", "gauss-1e-3"): (12.71, 75.67), ("none", "gauss-1e-2"): (11.44, 48.2),
}

# The paper's scale (§5.2): the model, its training epochs, the attack's iterations, attacked images.
PAPER_ARCH = "ResNet20-4"
PAPER_EPOCHS = 200
PAPER_ITERATIONS = 4800
PAPER_IMAGES = 100

# The Pearson correlation between S_pri and attack PSNR the paper reports (Fig. 2, 100 random policies).
PAPER_CORRELATION = 0.697

# ReScience 2022 reproduction with the original code (ResNet20-4): PSNR vs T(x) mean, std; accuracy %;
# and its translation-aware attacker: PSNR vs T(x) / vs x.
RESCIENCE = {"none": (9.94, 2.19, 77.00), "3-1-7": (6.28, 1.02, 65.83), "43-18-18": (8.71, 1.81, 74.84),
             "3-1-7+43-18-18": (7.48, 1.85, 71.06)}
RESCIENCE_AWARE = {"3-1-7": (9.43, 7.37), "43-18-18": (10.34, 9.61), "3-1-7+43-18-18": (9.42, 9.11)}
