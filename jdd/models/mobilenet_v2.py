"""MobileNetV2 (Sandler et al., 2018) in the torchvision layout and in the kuangliu CIFAR layout.

Two teachers of the decoupled methods are MobileNetV2s (research/unimodal_dd_methods.md §3.2,
§4.3, §5.2): torchvision's `mobilenet_v2` (the UFC ImageNet teacher, SRe2L's verifier, a FADRM
IN-1k teacher) and the kuangliu/pytorch-cifar `MobileNetV2` used as a CIFAR teacher by FADRM
(`models/mobilenetv2.py`, class `MobileNetV2`) and UFC (`models/mobilenetv2.py`,
`MobileNetV2_cifar10` / `MobileNetV2_cifar100`). BN-statistics matching needs exactly the torch
computation, so convs use explicit torch padding, BN is `jdd.models.bn.BatchNorm` (eps 1e-5,
torch momentum 0.1) and layers are called in torch's execution order (so `ordered_bn_stats`
lists them as forward hooks would).

variant='torchvision' (torchvision.models.MobileNetV2): channels `_make_divisible(c * width_mult,
8)` (last conv `1280 * max(1, width_mult)`), a 3x3/2 stem, inverted residuals with ReLU6, a 1x1
conv to the last channels, global average pool, Dropout(0.2), Linear. Inits as torchvision:
convs kaiming-normal(fan_out), the head normal(0, 0.01) with zero bias. Names (Flax -> torch):
  features_0_0 / features_0_1              -> features.0.0 (3x3/2 conv) / features.0.1 (BN)
  features_{i}/conv_0_0, conv_0_1          -> features.{i}.conv.0.0 / .0.1  (1x1 expand + BN;
                                              absent when expand_ratio == 1, i.e. features.1)
  features_{i}/conv_{k}_0, conv_{k}_1      -> features.{i}.conv.{k}.0 / .1  (3x3 depthwise + BN)
  features_{i}/conv_{k+1}, conv_{k+2}      -> features.{i}.conv.{k+1} / .{k+2}  (1x1 project, BN)
  features_{n}_0 / features_{n}_1          -> features.{n}.0 / .1  (1x1 conv to last channels)
  classifier_1                             -> classifier.1  (Linear; classifier.0 is Dropout)
where k = 1 for expanding blocks and 0 for features.1.

variant='cifar' (kuangliu): a 3x3/1 stem (32 channels), the MobileNetV2 table with the second
stage's stride changed from 2 to 1, ReLU (not ReLU6), no dropout, torch default inits, a
conv-BN shortcut on stride-1 blocks whose channels change, and no residual at all on stride-2
blocks. Names are already the torch ones:
  conv1, bn1, layers_{i}/{conv1,bn1,conv2,bn2,conv3,bn3,shortcut_0,shortcut_1}, conv2, bn2,
  linear   ->   conv1, bn1, layers.{i}.{conv1,...,shortcut.0,shortcut.1}, conv2, bn2, linear
FADRM's and UFC's definitions are identical in modules, names, strides and maths; they differ
only in the pooling before `linear`: FADRM pools over the whole final map
(`avg_pool2d(out, out.size(2))`), UFC with a fixed 4x4 window (`avg_pool2d(out, 4)`). On 32x32
inputs (the final map is 4x4) both are the global mean, and at any other size UFC's head
receives the wrong number of features and fails, so jdd's global mean is exact wherever either
runs; `num_classes` replaces UFC's hard-coded 10/100 classes. One torch_key serves both.

Deliberate differences: none in the maths. `num_batches_tracked` is dropped by the converter.
Dropout is a real `nn.Dropout`, active only with `train=True` *and* a 'dropout' rng: a
train-mode forward without that rng (e.g. BN batch statistics for a relabel pass) is
deterministic, where torch's `train()` would also drop; pass the rng to get torch's behaviour.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdd.models.bn import BatchNorm
from jdd.models.conv import model_conv
from jdd.models.convnet import torch_default_kernel_init, torch_linear
from jdd.models.resnet import kaiming_fan_out
from jdd.models.shifted import DepthwiseConv
from jdd.models.torch_names import default_torch_key

VARIANTS = ("torchvision", "cifar")

# (expand_ratio t, output channels c, repeats n, first stride s), the MobileNetV2 paper's table.
TORCHVISION_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# kuangliu CIFAR: the same table with the second stage at stride 1 (and a stride-1 stem).
CIFAR_SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                 (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
  """torchvision's channel rounding: nearest multiple of `divisor`, never below 90 % of `v`."""
  min_value = divisor if min_value is None else min_value
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


def conv(features: int, kernel: int, stride: int, groups: int, init: Any, dtype: Any,
         name: str) -> nn.Module:
  """Bias-free conv with torch's symmetric padding (kernel - 1) // 2 (depthwise when groups ==
  features: `jdd.models.shifted`, fast on XLA-CPU)."""
  pad = (kernel - 1) // 2
  if groups > 1 and groups == features:
    return DepthwiseConv(features, (kernel, kernel), (stride, stride), ((pad, pad), (pad, pad)),
                         kernel_init=init, dtype=dtype, name=name)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), feature_group_count=groups, use_bias=False,
                 kernel_init=init, dtype=dtype, conv_general_dilated=model_conv, name=name)


def torchvision_head_init(key, shape, dtype=jnp.float32):
  """torchvision MobileNetV2/V3 classifier: normal(0, 0.01)."""
  return 0.01 * jax.random.normal(key, shape, dtype)


class TorchvisionInvertedResidual(nn.Module):
  """torchvision `InvertedResidual`: [1x1 expand-BN-ReLU6] 3x3 dw-BN-ReLU6, 1x1 project-BN."""

  features: int
  stride: int
  expand_ratio: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    inp = x.shape[-1]
    hidden = int(round(inp * self.expand_ratio))
    out, k = x, 0
    if self.expand_ratio != 1:
      out = conv(hidden, 1, 1, 1, kaiming_fan_out, self.dtype, "conv_0_0")(out)
      out = nn.relu6(BatchNorm(dtype=self.dtype, name="conv_0_1")(out, train))
      k = 1
    out = conv(hidden, 3, self.stride, hidden, kaiming_fan_out, self.dtype, f"conv_{k}_0")(out)
    out = nn.relu6(BatchNorm(dtype=self.dtype, name=f"conv_{k}_1")(out, train))
    out = conv(self.features, 1, 1, 1, kaiming_fan_out, self.dtype, f"conv_{k + 1}")(out)
    out = BatchNorm(dtype=self.dtype, name=f"conv_{k + 2}")(out, train)
    if self.stride == 1 and inp == self.features:
      out = x + out
    return out


class CifarBlock(nn.Module):
  """kuangliu `Block`: expand-BN-ReLU, dw-BN-ReLU, project-BN, residual only at stride 1."""

  features: int
  stride: int
  expand_ratio: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    inp = x.shape[-1]
    planes = self.expand_ratio * inp
    init = torch_default_kernel_init
    out = conv(planes, 1, 1, 1, init, self.dtype, "conv1")(x)
    out = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(out, train))
    out = conv(planes, 3, self.stride, planes, init, self.dtype, "conv2")(out)
    out = nn.relu(BatchNorm(dtype=self.dtype, name="bn2")(out, train))
    out = conv(self.features, 1, 1, 1, init, self.dtype, "conv3")(out)
    out = BatchNorm(dtype=self.dtype, name="bn3")(out, train)
    if self.stride != 1:
      return out
    shortcut = x
    if inp != self.features:
      shortcut = conv(self.features, 1, 1, 1, init, self.dtype, "shortcut_0")(x)
      shortcut = BatchNorm(dtype=self.dtype, name="shortcut_1")(shortcut, train)
    return out + shortcut


class MobileNetV2(nn.Module):
  """MobileNetV2 on NHWC images; `__call__(x, train)` returns float32 logits.

  Attributes:
    variant: 'torchvision' (ImageNet layout) or 'cifar' (kuangliu layout, FADRM / UFC).
    width_mult: torchvision channel multiplier (0.25 in tests); the CIFAR net has none (1.0).
    dropout: probability before the classifier; None means the variant's own (0.2 torchvision,
      0.0 cifar). Active only with train=True and a 'dropout' rng.
  """

  num_classes: int
  variant: str = "torchvision"
  width_mult: float = 1.0
  dropout: float | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.variant not in VARIANTS:
      raise ValueError(f"MobileNetV2 variant must be one of {VARIANTS}, got {self.variant!r}")
    if x.ndim != 4:
      raise ValueError(f"MobileNetV2 expects NHWC images, got shape {x.shape}")
    if self.variant == "cifar" and self.width_mult != 1.0:
      raise ValueError("the kuangliu CIFAR MobileNetV2 has no width multiplier; "
                       f"got width_mult={self.width_mult} with variant='cifar'")
    if self.width_mult <= 0:
      raise ValueError(f"width_mult must be positive, got {self.width_mult}")
    x = x.astype(self.dtype)
    if self.variant == "torchvision":
      x = self._torchvision_features(x, train)
      rate = 0.2 if self.dropout is None else self.dropout
      head = nn.Dense(self.num_classes, kernel_init=torchvision_head_init,
                      bias_init=nn.initializers.zeros, dtype=self.dtype, name="classifier_1")
    else:
      x = self._cifar_features(x, train)
      rate = 0.0 if self.dropout is None else self.dropout
      head = torch_linear(self.num_classes, x.shape[-1], self.dtype, "linear")
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    x = nn.Dropout(rate, deterministic=not (train and self.has_rng("dropout")))(x)
    return head(x).astype(jnp.float32)

  def _torchvision_features(self, x: jax.Array, train: bool) -> jax.Array:
    channels = make_divisible(32 * self.width_mult)
    last = make_divisible(1280 * max(1.0, self.width_mult))
    x = conv(channels, 3, 2, 1, kaiming_fan_out, self.dtype, "features_0_0")(x)
    x = nn.relu6(BatchNorm(dtype=self.dtype, name="features_0_1")(x, train))
    i = 1
    for t, c, n, s in TORCHVISION_SETTING:
      out_channels = make_divisible(c * self.width_mult)
      for j in range(n):
        x = TorchvisionInvertedResidual(out_channels, s if j == 0 else 1, t, self.dtype,
                                        name=f"features_{i}")(x, train)
        i += 1
    x = conv(last, 1, 1, 1, kaiming_fan_out, self.dtype, f"features_{i}_0")(x)
    return nn.relu6(BatchNorm(dtype=self.dtype, name=f"features_{i}_1")(x, train))

  def _cifar_features(self, x: jax.Array, train: bool) -> jax.Array:
    init = torch_default_kernel_init
    x = conv(32, 3, 1, 1, init, self.dtype, "conv1")(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(x, train))
    i = 0
    for t, c, n, s in CIFAR_SETTING:
      for j in range(n):
        x = CifarBlock(c, s if j == 0 else 1, t, self.dtype, name=f"layers_{i}")(x, train)
        i += 1
    x = conv(1280, 1, 1, 1, init, self.dtype, "conv2")(x)
    return nn.relu(BatchNorm(dtype=self.dtype, name="bn2")(x, train))


NAMINGS = ("torchvision", "kuangliu")


def torch_key(path: tuple[str, ...], naming: str = "torchvision") -> str:
  """The torch state-dict key of a jdd MobileNetV2 variable (module docstring).

  jdd's module names are the torch ones of the variant that was built, so both namings use the
  plain rule; `naming` is checked so a typo fails loudly rather than silently converting.
  """
  if naming not in NAMINGS:
    raise ValueError(f"MobileNetV2 naming must be one of {NAMINGS}, got {naming!r}")
  return default_torch_key(path)
