"""ShuffleNet V2 (Ma et al., 2018) and ShuffleNet V1 g=2 (Zhang et al., 2018) teachers.

The decoupled methods use three ShuffleNets (research/unimodal_dd_methods.md §4.3, §5.2):
  * torchvision `shufflenet_v2_x0_5` / `shufflenet_v2_x1_0` (FADRM's IN-1k teacher is x1.0):
    `ShuffleNetV2(variant='torchvision')`;
  * the kuangliu/pytorch-cifar `ShuffleNetV2(net_size)` of FADRM `models/shufflenetv2.py`
    (CIFAR teacher with net_size=0.5): `ShuffleNetV2(variant='cifar')`;
  * UFC's `ShuffleNetG2_cifar10/100` (`models/shufflenet.py`, kuangliu's ShuffleNet V1 with
    groups=2): `ShuffleNetG2`.
All three must compute exactly what torch computes, because BN-statistics matching compares
every BN input: explicit torch padding, `jdd.models.bn.BatchNorm` (eps 1e-5, torch momentum
0.1), BN layers called in torch's execution order, torch default inits (none of these nets
overrides them).

Channel shuffle and split in NHWC. torch shuffles NCHW channels with
`view(N, g, C/g, H, W).transpose(1, 2).reshape(N, C, H, W)`: output channel j*g + i is input
channel i*(C/g) + j. jdd does the same on the last axis, `reshape(..., g, C/g)`, swap the last
two axes, flatten, so channel order (and hence every later BN's channel index and every
converted kernel) is torch's. The V2 split keeps the FIRST half of the channels as the identity
and runs the branch on the SECOND half, in both torchvision (`chunk(2)`) and kuangliu
(`x[:, :C/2]`, `x[:, C/2:]`); concatenation order is [identity or left branch, right branch].

torchvision names (Flax -> torch):
  conv1_0 / conv1_1                      -> conv1.0 (3x3/2 conv) / conv1.1 (BN); then maxpool 3/2/1
  stage{s}_{j}/branch1_{0,1,2,3}         -> stage{s}.{j}.branch1.{0,1,2,3}  (dw3x3/2, BN, 1x1, BN;
                                            stride-2 blocks only)
  stage{s}_{j}/branch2_{0,1,3,4,5,6}     -> stage{s}.{j}.branch2.{0,1,3,4,5,6}  (1x1, BN, dw3x3,
                                            BN, 1x1, BN; indices 2 and 7 are ReLUs)
  conv5_0 / conv5_1, fc                  -> conv5.0 / conv5.1, fc
kuangliu ShuffleNetV2 names are the torch ones: conv1, bn1, layer{1,2,3}_{j} (j = 0 is the
DownBlock with conv1..conv5 / bn1..bn5, j >= 1 BasicBlocks with conv1..conv3 / bn1..bn3),
conv2, bn2, linear. Its stage l has 1 + num_blocks[l] blocks (a DownBlock, then num_blocks
BasicBlocks), unlike torchvision's num_blocks in total; it has a 3x3/1 stem and no max-pool.
ShuffleNetG2 names are the torch ones too: conv1 (1x1 stem), bn1, layer{1,2,3}_{j}/{conv1, bn1,
conv2, bn2, conv3, bn3}, linear (its shortcut is a parameter-free 3x3/2 average pool).

Pooling before the head: FADRM's kuangliu V2 averages the whole final map; UFC's G2 uses a
fixed `avg_pool2d(out, 4)`, which is the whole map on 32x32 inputs and gives its `linear` the
wrong width at any other size, so the global mean is exact wherever the reference runs. UFC
hard-codes 10 or 100 classes; jdd takes `num_classes`. The G2 first block uses groups=1 for its
first 1x1 conv (and so an identity shuffle) because kuangliu tests `in_planes == 24`; that
block is exactly the first block of the network, which is how jdd phrases the rule.
Deliberate differences: none in the maths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdd.models.bn import BatchNorm
from jdd.models.conv import model_conv
from jdd.models.convnet import torch_default_kernel_init, torch_linear
from jdd.models.resnet import max_pool_torch
from jdd.models.shifted import DepthwiseConv
from jdd.models.torch_names import default_torch_key

VARIANTS = ("torchvision", "cifar")

# torchvision `stages_out_channels` per width: stem, stage2, stage3, stage4, conv5.
TORCHVISION_CHANNELS = {0.5: (24, 48, 96, 192, 1024), 1.0: (24, 116, 232, 464, 1024)}
TORCHVISION_REPEATS = (4, 8, 4)
# kuangliu `configs[net_size]`: stage outputs and the last conv; BasicBlocks after each DownBlock.
CIFAR_CHANNELS = {0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024)}
CIFAR_BASIC_BLOCKS = (3, 7, 3)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """torch's NCHW channel shuffle on an NHWC array (module docstring)."""
  *lead, c = x.shape
  if c % groups:
    raise ValueError(f"channel shuffle of {c} channels into {groups} groups")
  x = x.reshape(*lead, groups, c // groups)
  return jnp.swapaxes(x, -1, -2).reshape(*lead, c)


def conv(features: int, kernel: int, stride: int, groups: int, dtype: Any,
         name: str) -> nn.Module:
  """Bias-free conv, torch padding (kernel - 1) // 2, torch's default (kaiming-uniform) init
  (depthwise when groups == features: `jdd.models.shifted`, fast on XLA-CPU)."""
  pad = (kernel - 1) // 2
  if groups > 1 and groups == features:
    return DepthwiseConv(features, (kernel, kernel), (stride, stride), ((pad, pad), (pad, pad)),
                         kernel_init=torch_default_kernel_init, dtype=dtype, name=name)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), feature_group_count=groups, use_bias=False,
                 kernel_init=torch_default_kernel_init, dtype=dtype,
                 conv_general_dilated=model_conv, name=name)


def avg_pool_torch(x: jax.Array, window: int, stride: int, pad: int) -> jax.Array:
  """torch AvgPool2d with count_include_pad=True (its default): zero padding counts."""
  x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return nn.avg_pool(x, (window, window), strides=(stride, stride), padding="VALID")


def _bn(x: jax.Array, train: bool, dtype: Any, name: str, relu: bool = False) -> jax.Array:
  x = BatchNorm(dtype=dtype, name=name)(x, train)
  return nn.relu(x) if relu else x


class TorchvisionInvertedResidual(nn.Module):
  """torchvision ShuffleNetV2 `InvertedResidual` (stride 1: split; stride 2: two branches)."""

  features: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    d, branch = self.dtype, self.features // 2
    if self.stride == 1:
      if x.shape[-1] != 2 * branch:
        raise ValueError(f"stride-1 block needs {2 * branch} input channels, got {x.shape[-1]}")
      left, right = x[..., :branch], x[..., branch:]
    else:
      inp = x.shape[-1]
      left = conv(inp, 3, self.stride, inp, d, "branch1_0")(x)
      left = _bn(left, train, d, "branch1_1")
      left = conv(branch, 1, 1, 1, d, "branch1_2")(left)
      left = _bn(left, train, d, "branch1_3", relu=True)
      right = x
    right = conv(branch, 1, 1, 1, d, "branch2_0")(right)
    right = _bn(right, train, d, "branch2_1", relu=True)
    right = conv(branch, 3, self.stride, branch, d, "branch2_3")(right)
    right = _bn(right, train, d, "branch2_4")
    right = conv(branch, 1, 1, 1, d, "branch2_5")(right)
    right = _bn(right, train, d, "branch2_6", relu=True)
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class CifarDownBlock(nn.Module):
  """kuangliu ShuffleNetV2 `DownBlock`: two stride-2 branches, concatenated and shuffled."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    d, inp, mid = self.dtype, x.shape[-1], self.features // 2
    left = _bn(conv(inp, 3, 2, inp, d, "conv1")(x), train, d, "bn1")
    left = _bn(conv(mid, 1, 1, 1, d, "conv2")(left), train, d, "bn2", relu=True)
    right = _bn(conv(mid, 1, 1, 1, d, "conv3")(x), train, d, "bn3", relu=True)
    right = _bn(conv(mid, 3, 2, mid, d, "conv4")(right), train, d, "bn4")
    right = _bn(conv(mid, 1, 1, 1, d, "conv5")(right), train, d, "bn5", relu=True)
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class CifarBasicBlock(nn.Module):
  """kuangliu ShuffleNetV2 `BasicBlock`: split ratio 0.5, branch on the second half, shuffle."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    d = self.dtype
    c = int(x.shape[-1] * 0.5)
    keep, out = x[..., :c], x[..., c:]
    width = c  # kuangliu sizes the branch from the kept half: int(in_channels * ratio)
    out = _bn(conv(width, 1, 1, 1, d, "conv1")(out), train, d, "bn1", relu=True)
    out = _bn(conv(width, 3, 1, width, d, "conv2")(out), train, d, "bn2")
    out = _bn(conv(width, 1, 1, 1, d, "conv3")(out), train, d, "bn3", relu=True)
    return channel_shuffle(jnp.concatenate([keep, out], axis=-1), 2)


class ShuffleNetV2(nn.Module):
  """ShuffleNetV2 on NHWC images; `__call__(x, train)` returns float32 logits.

  Attributes:
    net_size: 0.5 or 1.0 (torchvision's x0_5 / x1_0, kuangliu's `net_size`).
    variant: 'torchvision' (3x3/2 stem + max-pool, 4/8/4 blocks) or 'cifar' (kuangliu: 3x3/1
      stem, no pool, a DownBlock + 3/7/3 BasicBlocks).
  """

  num_classes: int
  net_size: float = 1.0
  variant: str = "torchvision"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.variant not in VARIANTS:
      raise ValueError(f"ShuffleNetV2 variant must be one of {VARIANTS}, got {self.variant!r}")
    table = TORCHVISION_CHANNELS if self.variant == "torchvision" else CIFAR_CHANNELS
    if self.net_size not in table:
      raise ValueError(f"ShuffleNetV2 net_size must be one of {tuple(table)}, "
                       f"got {self.net_size!r}")
    if x.ndim != 4:
      raise ValueError(f"ShuffleNetV2 expects NHWC images, got shape {x.shape}")
    d = self.dtype
    x = x.astype(d)
    if self.variant == "torchvision":
      stem, *stages, last = table[self.net_size]
      x = _bn(conv(stem, 3, 2, 1, d, "conv1_0")(x), train, d, "conv1_1", relu=True)
      x = max_pool_torch(x, 3, 2, 1)
      for s, (repeats, out) in enumerate(zip(TORCHVISION_REPEATS, stages)):
        for j in range(repeats):
          x = TorchvisionInvertedResidual(out, 2 if j == 0 else 1, d,
                                          name=f"stage{s + 2}_{j}")(x, train)
      x = _bn(conv(last, 1, 1, 1, d, "conv5_0")(x), train, d, "conv5_1", relu=True)
      head = "fc"
    else:
      *stages, last = table[self.net_size]
      x = _bn(conv(24, 3, 1, 1, d, "conv1")(x), train, d, "bn1", relu=True)
      for s, (n_basic, out) in enumerate(zip(CIFAR_BASIC_BLOCKS, stages)):
        x = CifarDownBlock(out, d, name=f"layer{s + 1}_0")(x, train)
        for j in range(n_basic):
          x = CifarBasicBlock(d, name=f"layer{s + 1}_{j + 1}")(x, train)
      x = _bn(conv(last, 1, 1, 1, d, "conv2")(x), train, d, "bn2", relu=True)
      head = "linear"
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(d)
    x = torch_linear(self.num_classes, x.shape[-1], d, head)(x)
    return x.astype(jnp.float32)


class ShuffleBottleneck(nn.Module):
  """kuangliu ShuffleNet V1 `Bottleneck`: g-group 1x1, shuffle, dw 3x3, g-group 1x1.

  Stride 2 concatenates [branch, avgpool(x)] (so `features` is the branch width, the block
  output has features + in channels); stride 1 adds x. ReLU after the merge in both cases.
  """

  features: int
  stride: int
  groups: int
  first_groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    d, mid = self.dtype, int(self.features / 4)
    out = conv(mid, 1, 1, self.first_groups, d, "conv1")(x)
    out = _bn(out, train, d, "bn1", relu=True)
    out = channel_shuffle(out, self.first_groups)
    out = _bn(conv(mid, 3, self.stride, mid, d, "conv2")(out), train, d, "bn2", relu=True)
    out = _bn(conv(self.features, 1, 1, self.groups, d, "conv3")(out), train, d, "bn3")
    if self.stride == 2:
      return nn.relu(jnp.concatenate([out, avg_pool_torch(x, 3, 2, 1)], axis=-1))
    return nn.relu(out + x)


class ShuffleNetG2(nn.Module):
  """UFC's ShuffleNetG2 (kuangliu ShuffleNet V1) on NHWC images; returns float32 logits.

  Attributes:
    groups: group count of the 1x1 convs (2 for G2; kuangliu's G3 is groups=3 with
      out_planes (240, 480, 960)).
    out_planes: output channels of the three stages.
    num_blocks: blocks per stage (the first one strided).
  """

  num_classes: int
  groups: int = 2
  out_planes: Sequence[int] = (200, 400, 800)
  num_blocks: Sequence[int] = (4, 8, 4)
  variant: str = "cifar"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.variant != "cifar":
      raise ValueError(f"ShuffleNetG2 exists only as variant 'cifar', got {self.variant!r}")
    if x.ndim != 4:
      raise ValueError(f"ShuffleNetG2 expects NHWC images, got shape {x.shape}")
    d = self.dtype
    x = x.astype(d)
    x = _bn(conv(24, 1, 1, 1, d, "conv1")(x), train, d, "bn1", relu=True)
    for s, (planes, n) in enumerate(zip(self.out_planes, self.num_blocks)):
      for j in range(n):
        stride = 2 if j == 0 else 1
        width = planes - x.shape[-1] if j == 0 else planes  # stride 2 concatenates the input
        first_groups = 1 if (s == 0 and j == 0) else self.groups
        x = ShuffleBottleneck(width, stride, self.groups, first_groups, d,
                              name=f"layer{s + 1}_{j}")(x, train)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(d)
    x = torch_linear(self.num_classes, x.shape[-1], d, "linear")(x)
    return x.astype(jnp.float32)


NAMINGS = ("torchvision", "kuangliu")


def torch_key(path: tuple[str, ...], naming: str = "torchvision") -> str:
  """The torch state-dict key of a jdd ShuffleNet variable (module docstring).

  Every jdd name is already the torch name of the variant built, so both namings apply the
  plain rule; `naming` is validated so a typo fails instead of converting silently.
  """
  if naming not in NAMINGS:
    raise ValueError(f"ShuffleNet naming must be one of {NAMINGS}, got {naming!r}")
  return default_torch_key(path)
