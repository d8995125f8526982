"""The ConvNet of the dataset-distillation literature (Zhao & Bilen DC/DM, MTT, LoRS).

Results in those papers are quoted for this exact network, so it keeps their choices: `depth`
blocks of [3x3 conv with bias, padding 1 -> norm -> ReLU -> 2x2 average pool], then a linear
head on the flattened features. Two details of the reference that change shapes:

* single-channel inputs (MNIST-style 28x28) get padding 3 on the first conv, so 28x28 becomes
  32x32 and the feature map halves cleanly to 4x4 at depth 3, as in the reference code;
* the reference default norm is instance norm (GroupNorm with one group per channel, affine).
  jdd defaults to `norm='batchnorm'` instead, because BN-statistics matching needs BN layers;
  pass `norm='instancenorm'` to get the MTT/LoRS network.

Variable names, for porting a torch `ConvNet` state_dict (`features` is an nn.Sequential with
4 modules per block when there is a norm layer, 3 without):
  features.{4d}.weight (O,I,3,3)  -> params/conv{d}/kernel   (transpose 2,3,1,0)
  features.{4d}.bias              -> params/conv{d}/bias
  features.{4d+1}.weight / .bias  -> params/norm{d}/scale / bias
  features.{4d+1}.running_mean/var -> batch_stats/norm{d}/mean / var   (batchnorm only)
  classifier.weight (K, C*H*W)    -> params/fc/kernel (H*W*C, K): torch flattens NCHW as (C,H,W),
                                     jdd flattens NHWC as (H,W,C), so reorder the input axis
                                     W.reshape(K,C,H,W).transpose(2,3,1,0).reshape(H*W*C, K)
  classifier.bias                 -> params/fc/bias
Initialisation is torch's default for Conv2d/Linear (the reference does not override it).
The convs use `jdd.models.conv.conv_general_dilated`: lax's forward unchanged, gradients built in
XLA:CPU's canonical layout so student steps stay fast inside `lax.scan` (that module's docstring).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdd.models.bn import BatchNorm
from jdd.models.conv import conv_general_dilated
from jdd.models.torch_names import LEAVES

NORMS = ("batchnorm", "instancenorm", "none")

# torch's default Conv2d/Linear weight init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int):
  """torch's default Conv2d/Linear bias init, U(+-1/sqrt(fan_in)); the bound needs fan_in."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_linear(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
  return nn.Dense(
      features,
      kernel_init=torch_default_kernel_init,
      bias_init=torch_default_bias_init(fan_in),
      dtype=dtype,
      name=name,
  )


class ConvNet(nn.Module):
  """DD ConvNet on NHWC images; `__call__(x, train)` returns float32 logits."""

  num_classes: int
  width: int = 128
  depth: int = 3
  norm: str = "batchnorm"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.norm not in NORMS:
      raise ValueError(f"ConvNet norm must be one of {NORMS}, got {self.norm!r}")
    if x.ndim != 4:
      raise ValueError(f"ConvNet expects NHWC images, got shape {x.shape}")
    x = x.astype(self.dtype)
    single_channel = x.shape[-1] == 1
    for d in range(self.depth):
      pad = 3 if (single_channel and d == 0) else 1
      fan_in = x.shape[-1] * 9
      x = nn.Conv(
          self.width,
          (3, 3),
          padding=((pad, pad), (pad, pad)),
          kernel_init=torch_default_kernel_init,
          bias_init=torch_default_bias_init(fan_in),
          dtype=self.dtype,
          conv_general_dilated=conv_general_dilated,
          name=f"conv{d}",
      )(x)
      if self.norm == "batchnorm":
        x = BatchNorm(dtype=self.dtype, name=f"norm{d}")(x, train)
      elif self.norm == "instancenorm":
        x = nn.GroupNorm(
            num_groups=self.width,
            epsilon=1e-5,
            use_fast_variance=False,
            dtype=self.dtype,
            name=f"norm{d}",
        )(x)
      x = nn.relu(x)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    x = x.reshape(x.shape[0], -1)
    x = torch_linear(self.num_classes, x.shape[-1], self.dtype, "fc")(x)
    return x.astype(jnp.float32)


def torch_key(path: tuple[str, ...], naming: str = "dd", *, feature_hw: int | None = None):
  """The torch key of a jdd ConvNet variable in the DD reference layout (module docstring).

  With a norm layer each block is 4 Sequential entries (conv, norm, relu, pool); `naming='dd'`
  assumes that, `naming='dd_nonorm'` the 3-entry blocks of `norm='none'`. The fc kernel needs the
  final feature map size `feature_hw` to reorder torch's (C, H, W) flattening.
  """
  per_block = {"dd": 4, "dd_nonorm": 3}
  if naming not in per_block:
    raise ValueError(f"ConvNet naming must be one of {tuple(per_block)}, got {naming!r}")
  collection, module, leaf = path
  name = LEAVES[(collection, leaf)]
  if module == "fc":
    if leaf != "kernel":
      return f"classifier.{name}"
    if feature_hw is None:
      raise ValueError("converting a ConvNet classifier needs feature_hw (e.g. 4 at depth 3)")
    def fc_kernel(w, h=feature_hw):
      k = w.shape[0]
      return w.reshape(k, -1, h, h).transpose(2, 3, 1, 0).reshape(-1, k)
    return f"classifier.{name}", fc_kernel
  kind, d = ("conv", module[4:]) if module.startswith("conv") else ("norm", module[4:])
  index = per_block[naming] * int(d) + (0 if kind == "conv" else 1)
  return f"features.{index}.{name}"
