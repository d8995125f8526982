"""DD-Ranking's label-robust and augmentation-robust scores, on accuracies as fractions.

Li et al., "DD-Ranking: Rethinking the Evaluation of Dataset Distillation" (arXiv 2505.13300);
reference code NUS-HPC-AI-Lab/DD-Ranking, `ddranking/metrics/soft_label.py`
(`LabelRobustScoreSoft.compute_metrics`) and `ddranking/metrics/aug_robust.py`
(`AugmentationRobustScore.compute_metrics`). With accuracies a in [0, 1]:

    HLR   = a(full data, hard labels) - a(distilled, hard labels)      hard-label recovery
    IOR   = a(distilled, its labels)  - a(random subset, same labels)  improvement over random
    alpha = w IOR - (1 - w) HLR,                        w = 0.5 by default (`lrs_lambda`)
    LRS   = (exp(alpha) - exp(-1)) / (exp(1) - exp(-1))

    beta  = g (a(distilled, aug) - a(random, aug)) + (1 - g) (a(distilled, no aug)
            - a(random, no aug)),                       g = 0.5 by default (`ars_lambda`)
    ARS   = (exp(beta) - exp(-1)) / (exp(1) - exp(-1))

alpha and beta lie in [-1, 1] for accuracies in [0, 1], so the normalisation maps them onto
[0, 1]; alpha = 0 (no gain over random, nothing lost to the full data) scores 0.269.

Deliberate difference from the reference code: DD-Ranking's `validate` returns top-1 in
percent (`accuracy` multiplies by 100) and `compute_metrics` feeds those percentages straight
into this formula, which is normalised for fractions. A 5-point HLR then enters as alpha = -2.5
instead of -0.025, and its "LRS" leaves [0, 1] (HLR = 30 points and IOR = 0 give -0.157). This
is a scale error in the reference; jdd uses fractions, for which the formula was made. The
scores are computed per evaluation seed and then averaged (mean and sample std), as the
reference averages over its `num_eval` runs. The reference's own protocol around the formula
(a learning-rate search per set, the best test epoch) is not copied: jdd's accuracies are
validation-selected and step-matched (jdd.evaluation.classification).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_LOW, _HIGH = math.exp(-1.0), math.exp(1.0)


def _fraction(name: str, a) -> np.ndarray:
  a = np.asarray(a, np.float64)
  if np.any(a < 0.0) or np.any(a > 1.0):
    raise ValueError(f"{name} must be accuracies as fractions in [0, 1] (not percent), got {a}")
  return a


def normalise(x):
  """(exp(x) - exp(-1)) / (exp(1) - exp(-1)): [-1, 1] onto [0, 1]."""
  return (np.exp(np.asarray(x, np.float64)) - _LOW) / (_HIGH - _LOW)


def label_robust_score(full_hard: float, syn_hard, syn_soft, rdm_soft,
                       lrs_lambda: float = 0.5) -> dict:
  """HLR, IOR, alpha and LRS per pair (arrays over evaluation seeds, or scalars)."""
  if not 0.0 <= lrs_lambda <= 1.0:
    raise ValueError(f"lrs_lambda must lie in [0, 1], got {lrs_lambda}")
  hlr = _fraction("full_hard", full_hard) - _fraction("syn_hard", syn_hard)
  ior = _fraction("syn_soft", syn_soft) - _fraction("rdm_soft", rdm_soft)
  alpha = lrs_lambda * ior - (1.0 - lrs_lambda) * hlr
  return {"hlr": hlr, "ior": ior, "alpha": alpha, "lrs": normalise(alpha)}


def augmentation_robust_score(syn_aug, rdm_aug, syn_noaug, rdm_noaug,
                              ars_lambda: float = 0.5) -> dict:
  """The two improvements over random, beta and ARS per pair."""
  if not 0.0 <= ars_lambda <= 1.0:
    raise ValueError(f"ars_lambda must lie in [0, 1], got {ars_lambda}")
  with_aug = _fraction("syn_aug", syn_aug) - _fraction("rdm_aug", rdm_aug)
  without = _fraction("syn_noaug", syn_noaug) - _fraction("rdm_noaug", rdm_noaug)
  beta = ars_lambda * with_aug + (1.0 - ars_lambda) * without
  return {"with_aug": with_aug, "without_aug": without, "beta": beta, "ars": normalise(beta)}


def _summary(per_seed: dict) -> dict:
  out = {}
  for k, v in per_seed.items():
    v = np.atleast_1d(v)
    out[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
              "per_seed": [float(x) for x in v]}
  return out


def scores(full_hard: float | None, seed_means: dict[str, dict[str, Sequence[float]]],
           lrs_lambda: float = 0.5, ars_lambda: float = 0.5) -> dict:
  """LRS and ARS from per-seed accuracies in percent, `seed_means[mode][set]` (the evaluation's
  'soft' / 'hard' / 'soft_noaug' modes, sets 'distilled' and 'random_subset'), and the full-data
  hard-label accuracy (a fraction). A score whose inputs are missing is left out."""
  frac = {m: {s: np.asarray(v, np.float64) / 100.0 for s, v in sets.items()}
          for m, sets in seed_means.items()}
  out = {"accuracies": "fractions (DD-Ranking's code feeds percent; see jdd.evaluation.ddranking)"}
  soft, hard, noaug = frac.get("soft", {}), frac.get("hard", {}), frac.get("soft_noaug", {})
  if full_hard is not None and "distilled" in hard and "random_subset" in soft:
    lrs = label_robust_score(full_hard, hard["distilled"], soft["distilled"],
                             soft["random_subset"], lrs_lambda)
    out["lrs"] = {"lambda": lrs_lambda, **_summary(lrs)}
  if "random_subset" in soft and "random_subset" in noaug:
    ars = augmentation_robust_score(soft["distilled"], soft["random_subset"],
                                    noaug["distilled"], noaug["random_subset"], ars_lambda)
    out["ars"] = {"lambda": ars_lambda, **_summary(ars)}
  return out
