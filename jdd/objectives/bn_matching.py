"""BN-statistics matching, the "recover" regulariser of SRe2L, INFER/UFC and FADRM.

    L_BN = sum_l w_l * ( ||RV_l - var_l||_2 + ||RM_l - mean_l||_2 )

over every BatchNorm l of a frozen teacher in eval mode, where mean_l / var_l are the batch mean
and biased variance of the BN input and RM_l / RV_l its running statistics
(research/unimodal_dd_methods.md §2.1). The norms are plain, unsquared L2 norms over channels,
as in the reference hooks (`torch.norm(., 2)`). w_1 = `first_bn_multiplier` = 10 on the first BN
in call order (the stem): the SRe2L paper omits that factor but every released script uses it,
so jdd keeps it as the default.

The norm's gradient d/dd ||d|| = d/||d|| is 0/0 at d = 0, which `jnp.linalg.norm` turns into
NaN. A sqrt(sum + eps) would change the loss value, so `_safe_l2` uses the double-`where`
trick: exact value everywhere, gradient 0 at exactly 0 (a valid subgradient).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jdd.models.bn import ordered_bn_stats

_KEYS = ("mean", "var", "running_mean", "running_var")


def _safe_l2(d: jax.Array) -> jax.Array:
  sq = jnp.sum(jnp.square(d))
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def bn_statistics_loss(entries: Sequence[Mapping[str, Any]],
                       first_bn_multiplier: float = 10.0) -> jax.Array:
  """Float32 scalar; `entries` in call order, as `jdd.models.ordered_bn_stats` returns them."""
  entries = list(entries)
  if not entries:
    raise ValueError(
        "no BN statistics were recorded: apply the model with mutable=['bn_stats'] and pass "
        "ordered_bn_stats(mutated['bn_stats'])")
  total = jnp.zeros((), jnp.float32)
  for i, entry in enumerate(entries):
    missing = [k for k in _KEYS if k not in entry]
    if missing:
      raise ValueError(f"BN entry {i} lacks {missing}; expected keys {_KEYS}")
    f32 = {k: jnp.asarray(entry[k], jnp.float32) for k in _KEYS}
    r = (_safe_l2(f32["running_var"] - f32["var"]) +
         _safe_l2(f32["running_mean"] - f32["mean"]))
    total = total + (first_bn_multiplier if i == 0 else 1.0) * r
  return total


def bn_statistics_loss_from_collection(collection: Mapping[str, Any],
                                       first_bn_multiplier: float = 10.0) -> jax.Array:
  """`bn_statistics_loss` on the `bn_stats` collection that `model.apply` returned."""
  return bn_statistics_loss(ordered_bn_stats(collection), first_bn_multiplier)
