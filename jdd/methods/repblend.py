"""RepBlend (Zhang et al., "Beyond Modality Collapse: Representations Blending for Multimodal
Dataset Distillation", NeurIPS 2025): LoRS with (a) representation blending inside the student
unroll and (b) symmetric projection trajectory matching (frozen backbone, image and text
projection heads trained and matched).

Reference: `distill_repblend.py` of zhangxin-xd/RepBlend (shared/research/multimodal_dd_methods.md
§5.7-5.8). Blending: per student step one lambda ~ Beta(alpha_2, alpha_2) and one permutation
pi of the mini-batch mix the frozen backbone's features and the raw text embeddings,
z -> lambda z + (1 - lambda) z[pi]; the target S_B is not blended. Deliberate differences: the
draw comes from the step's key, so TESLA's second pass replays it together with the dropout
masks (the reference stores lambda and pi but redraws dropout); see `jdd.methods.tm_vl`.
"""

from __future__ import annotations

from jdd.methods import tm_vl

# The method's fixed choices, stated once: jdd.configs.image_text writes them into its configs.
SPEC = tm_vl.MethodSpec(name="repblend", train_backbone=False, similarity_kind="lowrank",
                        blend=True, blend_alpha=1.0, loss="wbce", grad_mode="tesla")

