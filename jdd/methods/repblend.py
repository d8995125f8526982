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

import ml_collections

from jdd.methods import tm_vl

SPEC = tm_vl.MethodSpec(name="repblend", train_backbone=False, similarity=True, blend=True)


def configure(c: ml_collections.ConfigDict) -> None:
  c.method = "repblend"
  c.model.train_backbone = False
  c.distill.loss = "wbce"
  c.distill.similarity = "lowrank"
  c.distill.charge_similarity = True
  c.distill.blend = True
  c.distill.blend_alpha = 1.0
  c.distill.grad_mode = "tesla"
  c.evaluate.loss = "wbce"

