"""Batch normalisation that records its input statistics for BN-statistics matching.

SRe2L, INFER and FADRM synthesise images by matching, at every BatchNorm of a frozen teacher,
the batch mean and biased variance of the BN *input* against the running statistics the layer
holds (research/unimodal_dd_methods.md §2.1, §7.2). PyTorch reads those inputs with forward
hooks; Flax has no hooks and `capture_intermediates` records outputs, so this layer records its
own input statistics with `self.sow('bn_stats', 'stats', ...)`. Nothing is computed or stored
unless the caller makes `bn_stats` mutable:

    logits, col = model.apply(variables, x, train=False, mutable=['bn_stats'])
    entries = ordered_bn_stats(col['bn_stats'])

The layer follows PyTorch rather than `flax.linen.BatchNorm` so ported teachers behave exactly
like their torch originals: eps 1e-5, momentum 0.9 in the Flax convention (0.1 in torch's), and
the running variance is updated with the *unbiased* batch variance, as torch does (Flax uses the
biased one). Statistics are always reduced in float32, also for bf16 activations.

Each recorded entry is a dict of float32 arrays of shape (C,):
`mean`, `var` (biased, ddof 0) of the input over every axis but the last, and `running_mean`,
`running_var`: the values the layer held when it was called. In train mode a torch forward hook
would see running statistics already moved towards the batch; here the pre-update values are
recorded, since those are the teacher statistics a matching loss should aim at. The running
statistics pass through `stop_gradient`: they are buffers in torch, never differentiated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_STATS_COLLECTION = "bn_stats"
_STATS_NAME = "stats"


class BatchNorm(nn.Module):
  """PyTorch-semantics BatchNorm over the last axis that sows its input statistics.

  Attributes:
    momentum: Flax convention, the weight of the old running value (torch momentum 0.1 == 0.9).
    epsilon: added to the variance before the square root (torch default 1e-5).
    dtype: output dtype; None keeps the input dtype. Statistics are float32 regardless.
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)

    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))   # float32, or float64 under x64
    need_batch_stats = train or self.is_mutable_collection(BN_STATS_COLLECTION)
    if need_batch_stats:
      mean = jnp.mean(x32, axis=axes)
      # Two-pass variance: E[x^2] - E[x]^2 loses digits on activations with large means.
      var = jnp.mean(jnp.square(x32 - mean), axis=axes)

    if self.is_mutable_collection(BN_STATS_COLLECTION):
      self.sow(
          BN_STATS_COLLECTION,
          _STATS_NAME,
          {
              "mean": mean,
              "var": var,
              "running_mean": jax.lax.stop_gradient(ra_mean.value),
              "running_var": jax.lax.stop_gradient(ra_var.value),
          },
      )

    if train:
      use_mean, use_var = mean, var
      if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
        n = x.size // features
        unbiased = var * (n / max(n - 1, 1))
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1.0 - m) * jax.lax.stop_gradient(mean)
        ra_var.value = m * ra_var.value + (1.0 - m) * jax.lax.stop_gradient(unbiased)
    else:
      use_mean, use_var = ra_mean.value, ra_var.value

    # 1 / sqrt behind a barrier, not lax.rsqrt: XLA-CPU's fused rsqrt is an approximation whose
    # error the train-mode input gradient amplifies to several percent, and without the barrier
    # XLA's algebraic simplifier turns `scale / sqrt(v)` (and the divisions by sqrt in its
    # gradient) back into multiplications by rsqrt (docs/teachers.md).
    mul = scale / jax.lax.optimization_barrier(jnp.sqrt(use_var + self.epsilon))
    y = (x32 - use_mean) * mul + bias
    return y.astype(self.dtype or x.dtype)


def _walk(tree: Mapping[str, Any], prefix: tuple[str, ...], out: list) -> None:
  # Insertion order of the nested dicts is the order in which the layers first sowed, i.e.
  # call order; jax.tree flattening would sort the keys and lose it.
  for key, value in tree.items():
    if key == _STATS_NAME and isinstance(value, (tuple, list)):
      for entry in value:
        out.append(("/".join(prefix), entry))
    elif isinstance(value, Mapping):
      _walk(value, prefix + (key,), out)


def _ordered(collection: Mapping[str, Any]) -> list[tuple[str, dict]]:
  if not isinstance(collection, Mapping):
    raise TypeError(f"expected the nested dict of the 'bn_stats' collection, got {type(collection)}")
  out: list[tuple[str, dict]] = []
  _walk(collection, (), out)
  return out


def ordered_bn_stats(bn_stats_collection: Mapping[str, Any]) -> list[dict]:
  """Recorded BN entries in call order (the first is the stem BN that SRe2L weights by 10).

  Accepts `mutated['bn_stats']` (or the whole mutated dict). The order comes from dict insertion
  order, so pass the collection as `apply` returned it: a collection that went through a jax
  tree round trip (e.g. returned from a `jit`) has sorted keys, and `layer3_10` then precedes
  `layer3_2`. A layer called twice in one apply contributes two consecutive entries.
  """
  return [entry for _, entry in _ordered(bn_stats_collection)]


def ordered_bn_stats_paths(bn_stats_collection: Mapping[str, Any]) -> list[str]:
  """Module paths ('layer1_0/downsample_bn') matching `ordered_bn_stats`, for checks and logs."""
  return [path for path, _ in _ordered(bn_stats_collection)]
