"""ats: gradient leakage and the Automatic Transformation Search defense.

A compact library to measure how much a shared gradient reveals about the private images
behind it, and how well image transformations (Gao et al., "Privacy-preserving Collaborative
Learning with Automatic Transformation Search", CVPR 2021; TPAMI 2023) hide them.
"""
from __future__ import annotations

__version__ = "0.1.0"
