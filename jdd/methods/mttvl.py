"""MTT-VL (Wu et al., "Vision-Language Dataset Distillation", TMLR 2024): exact trajectory
matching of a trained image backbone and a text head, symmetric InfoNCE with identity targets.

Reference: `distill.py` of princetonvisualai/multimodal_dataset_distillation
(shared/research/multimodal_dd_methods.md §1, §3.4, §5). What sets it apart from LoRS/RepBlend:
no learned similarity (all `pairs` are distilled), InfoNCE instead of WBCE, and the full MTT
gradient through the unroll (`distill.grad_mode='exact'`; 'tesla' is available).

Deliberate difference: the reference's unroll multiplies cosines by log(1/0.07) = 2.66 (it
forgets the `exp`) while experts and evaluation use 1/0.07 = 14.29 (§3.4, weakness 6). jdd uses
the consistent 14.29 by default; `distill.reference_logit_scale=True` reproduces the reference.
The reference also draws a fresh random subset per step; jdd uses the permutation cycling of
§5.3 shared with LoRS/RepBlend.
"""

from __future__ import annotations

from jdd.methods import tm_vl

# The method's fixed choices, stated once: jdd.configs.image_text writes them into its configs.
SPEC = tm_vl.MethodSpec(name="mttvl", train_backbone=True, similarity_kind="none", blend=False,
                        loss="infonce", grad_mode="exact")

