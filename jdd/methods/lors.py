"""LoRS (Xu et al., "Low-Rank Similarity Mining for Multimodal Dataset Distillation", ICML
2024): MTT-VL's trained backbone and text head, plus a learned low-rank similarity matrix
S = diag(a) + (alpha/r) L R^T as soft targets of a weighted BCE, with the TESLA gradient.

Reference: `distill_tesla_lors.py` and `src/similarity_mining.py` of silicx/LoRS_Distill
(shared/research/multimodal_dd_methods.md §3.5, §5). `pairs` - 1 pairs are distilled so that S
fits the budget. Deliberate differences are the shared ones of `jdd.methods.tm_vl` (replayed
dropout in TESLA's second pass, consistent learning-rate-gradient normalisation).
"""

from __future__ import annotations

from jdd.methods import tm_vl

# The method's fixed choices, stated once: jdd.configs.image_text writes them into its configs.
SPEC = tm_vl.MethodSpec(name="lors", train_backbone=True, similarity_kind="lowrank",
                        blend=False, loss="wbce", grad_mode="tesla")

