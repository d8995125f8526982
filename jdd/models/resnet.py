"""ResNet-18/34/50/101 in the torchvision layout, with an ImageNet or a CIFAR stem.

SRe2L, INFER and FADRM recover images from torchvision-trained teachers (ImageNet) and from
torchvision-named CIFAR/Tiny ResNets (3x3 stride-1 stem, no max-pool). Matching their BN
statistics only means something if the Flax network computes exactly what the torch one does, so:
explicit PyTorch padding everywhere (Flax 'SAME' pads stride-2 convolutions asymmetrically),
a max-pool padded with -inf, stride on the 3x3 conv of the bottleneck ("ResNet v1.5"), no conv
biases, torch BN semantics (`jdd.models.bn.BatchNorm`, which also records the BN-input
statistics), and no zero-init of the last BN gamma (torchvision's default is off). Convs use
torchvision's kaiming-normal(fan_out, relu) init, the head torch's default Linear init.

Module names follow the torchvision state_dict so a converter is a mechanical rename:
  conv1.weight (O,I,kh,kw)             -> params/conv1/kernel        (transpose 2,3,1,0 -> HWIO)
  bn1.weight / bn1.bias                -> params/bn1/scale / bias
  bn1.running_mean / running_var       -> batch_stats/bn1/mean / var
  layer{i}.{j}.conv{k}.weight          -> params/layer{i}_{j}/conv{k}/kernel   (k = 1,2[,3])
  layer{i}.{j}.bn{k}.*                 -> params|batch_stats/layer{i}_{j}/bn{k}/*
  layer{i}.{j}.downsample.0.weight     -> params/layer{i}_{j}/downsample_conv/kernel
  layer{i}.{j}.downsample.1.*          -> params|batch_stats/layer{i}_{j}/downsample_bn/*
  fc.weight (K, F) / fc.bias           -> params/fc/kernel (F, K) = weight.T / params/fc/bias
  num_batches_tracked                  -> dropped
kuangliu-style CIFAR ResNets (FADRM, CV-DD) differ only in names: `shortcut.0/.1` for
`downsample.0/.1` and `linear` for `fc`.

BN call order inside a block equals torch registration order (main path, then downsample), so
`ordered_bn_stats` lists the layers exactly as SRe2L's hooks do, stem `bn1` first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdd.models import shifted
from jdd.models.bn import BatchNorm
from jdd.models.conv import model_conv
from jdd.models.convnet import torch_linear
from jdd.models.torch_names import default_torch_key

STEMS = ("imagenet", "cifar")

# torchvision ResNet: kaiming_normal_(mode='fan_out', nonlinearity='relu'), an untruncated normal.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, stride: int, pad: int, dtype: Any, name: str) -> nn.Conv:
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      use_bias=False,
      kernel_init=kaiming_fan_out,
      dtype=dtype,
      conv_general_dilated=model_conv,
      name=name,
  )


def _shortcut(x: jax.Array, features: int, stride: int, dtype: Any, train: bool) -> jax.Array:
  """The residual branch: x, or a strided 1x1 conv + BN where the shape changes (torchvision's
  `downsample`). Called inside a block's compact `__call__`, so its modules are the block's."""
  if stride == 1 and x.shape[-1] == features:
    return x
  y = _conv(features, 1, stride, 0, dtype, "downsample_conv")(x)
  return BatchNorm(dtype=dtype, name="downsample_bn")(y, train)


class BasicBlock(nn.Module):
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = _conv(self.features, 3, self.stride, 1, self.dtype, "conv1")(x)
    out = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(out, train))
    out = _conv(self.features, 3, 1, 1, self.dtype, "conv2")(out)
    out = BatchNorm(dtype=self.dtype, name="bn2")(out, train)
    return nn.relu(out + _shortcut(x, self.features * self.expansion, self.stride, self.dtype,
                                   train))


class Bottleneck(nn.Module):
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = _conv(self.features, 1, 1, 0, self.dtype, "conv1")(x)
    out = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(out, train))
    out = _conv(self.features, 3, self.stride, 1, self.dtype, "conv2")(out)
    out = nn.relu(BatchNorm(dtype=self.dtype, name="bn2")(out, train))
    out = _conv(self.features * self.expansion, 1, 1, 0, self.dtype, "conv3")(out)
    out = BatchNorm(dtype=self.dtype, name="bn3")(out, train)
    return nn.relu(out + _shortcut(x, self.features * self.expansion, self.stride, self.dtype,
                                   train))


def max_pool_torch(x: jax.Array, window: int, stride: int, pad: int) -> jax.Array:
  """torch MaxPool2d: explicit -inf padding, so a padded cell never wins against negatives
  (`jdd.models.shifted.max_pool`: shifted slices on XLA-CPU, gradient to the first maximum)."""
  return shifted.max_pool(x, window, stride, pad)


class ResNet(nn.Module):
  """torchvision ResNet on NHWC images; `__call__(x, train)` returns float32 logits.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block: 'basic' or 'bottleneck'.
    stem: 'imagenet' (7x7/2 conv + 3x3/2 max-pool) or 'cifar' (3x3/1 conv, no pool).
    width: channels of the first stage (64 in every torchvision ResNet); tests shrink it.
  """

  stage_sizes: Sequence[int]
  block: str
  num_classes: int
  stem: str = "imagenet"
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.stem not in STEMS:
      raise ValueError(f"ResNet stem must be one of {STEMS}, got {self.stem!r}")
    blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
    if self.block not in blocks:
      raise ValueError(f"ResNet block must be one of {tuple(blocks)}, got {self.block!r}")
    if x.ndim != 4:
      raise ValueError(f"ResNet expects NHWC images, got shape {x.shape}")
    block_cls = blocks[self.block]
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = _conv(self.width, 7, 2, 3, self.dtype, "conv1")(x)
    else:
      x = _conv(self.width, 3, 1, 1, self.dtype, "conv1")(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(x, train))
    if self.stem == "imagenet":
      x = max_pool_torch(x, 3, 2, 1)
    for i, n_blocks in enumerate(self.stage_sizes):
      for j in range(n_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        x = block_cls(self.width * 2**i, stride, self.dtype, name=f"layer{i + 1}_{j}")(x, train)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    x = torch_linear(self.num_classes, x.shape[-1], self.dtype, "fc")(x)
    return x.astype(jnp.float32)


# Torch module names that differ from jdd's: torchvision's, and kuangliu's (FADRM / CV-DD CIFAR).
NAMINGS = {
    "torchvision": {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"},
    "kuangliu": {"downsample_conv": "shortcut.0", "downsample_bn": "shortcut.1", "fc": "linear"},
}


def torch_key(path: tuple[str, ...], naming: str = "torchvision") -> str:
  """The torch state-dict key of a jdd ResNet variable (see the module docstring)."""
  if naming not in NAMINGS:
    raise ValueError(f"ResNet naming must be one of {tuple(NAMINGS)}, got {naming!r}")
  return default_torch_key(path, NAMINGS[naming])


RESNET_LAYOUTS = {
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
    "resnet101": ((3, 4, 23, 3), "bottleneck"),
}
