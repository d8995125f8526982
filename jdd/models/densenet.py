"""DenseNet-121 in the torchvision layout and in the kuangliu CIFAR layout that FADRM trains.

FADRM+ distils ImageNet through torchvision's `densenet121` (IMAGENET1K_V1) and CIFAR-100 / Tiny
through the kuangliu-style `DenseNet121` of its `models/densenet.py`
(research/unimodal_dd_methods.md §5.2, §7.3). BN-statistics matching is only meaningful when the
Flax network computes what the torch one does, so both are reproduced exactly: explicit torch
padding, a -inf padded stem max-pool, torch BN semantics (`jdd.models.bn.BatchNorm`, eps 1e-5,
torch momentum 0.1), BN -> ReLU -> conv ordering inside every dense layer, and the same channel
order of every concatenation. Both variants share one dense-layer and one transition module.

variant='torchvision' (`DenseNet-BC`, growth k=32, blocks (6, 12, 24, 16), bn_size 4):
  features.conv0 (7x7/2, pad 3) -> features.norm0 -> ReLU -> features.pool0 (3x3/2 max, pad 1)
  features.denseblock{K}.denselayer{J}: norm1 -> ReLU -> conv1 (1x1, bn_size*k) -> norm2 -> ReLU
      -> conv2 (3x3, pad 1, k); the block input is the concatenation [x, new_1, ..., new_{J-1}]
  features.transition{K}: norm -> ReLU -> conv (1x1, C -> C // 2) -> 2x2/2 average pool
  features.norm5 -> ReLU -> global average -> classifier (Linear)
  Flax paths mirror the keys: params/features/denseblock1/denselayer1/norm1/scale is
  `features.denseblock1.denselayer1.norm1.weight`. torchvision's `memory_efficient` flag only
  re-computes activations in the backward pass and changes nothing numerically, so it is absent.
  The `.pth` files torchvision downloads still hold the pre-0.4 keys `denselayer{J}.norm.1` etc.,
  which torchvision renames while loading; `torch_key(..., naming='torchvision_legacy')` reads
  those files directly.

variant='cifar' (kuangliu `DenseNet(Bottleneck, [6,12,24,16], growth_rate=32, reduction=0.5)`):
  conv1 (3x3/1, pad 1, 2k channels); dense{K}.{J}: bn1 -> ReLU -> conv1 (1x1, 4k) -> bn2 -> ReLU ->
  conv2 (3x3, pad 1, k), output concatenated as [new, x] (new channels FIRST, unlike torchvision);
  trans{K}: bn -> ReLU -> conv (1x1, floor(C * 0.5)) -> 2x2 average pool; bn -> ReLU ->
  average pool over the whole (square) map -> linear. Flax paths are the keys (`dense1_0/bn1` is
  `dense1.0.bn1`), so `naming='kuangliu'` is the plain rule of `jdd.models.torch_names`.

Initialisation follows each reference: torchvision uses kaiming-normal(fan_in, relu) convs and a
zero classifier bias; kuangliu keeps torch's default Conv2d/Linear init. Deliberate differences:
`num_init_features=None` means 2 * growth_rate (64 for DenseNet-121 in both references, and the
kuangliu rule for other growth rates); the CIFAR head raises on non-square maps instead of
feeding a wrongly sized vector to the linear layer as the reference would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdd.models.bn import BatchNorm
from jdd.models.conv import model_conv
from jdd.models.convnet import torch_default_kernel_init, torch_linear
from jdd.models.resnet import max_pool_torch
from jdd.models.torch_names import default_torch_key

VARIANTS = ("torchvision", "cifar")

# torchvision DenseNet: nn.init.kaiming_normal_(conv.weight) = untruncated N(0, 2 / fan_in).
kaiming_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv(features: int, kernel: int, stride: int, pad: int, init: Callable, dtype: Any,
          name: str) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=init, dtype=dtype,
                 conv_general_dilated=model_conv,
                 name=name)


class DenseLayer(nn.Module):
  """BN-ReLU-conv1x1 (bn_size * k) then BN-ReLU-conv3x3 (k); returns only the k new channels.

  `norm_names` are the torch names of the two BNs ('norm1', 'norm2' in torchvision, 'bn1', 'bn2'
  in kuangliu); the convs are `conv1`, `conv2` in both.
  """

  growth_rate: int
  bn_size: int
  norm_names: tuple[str, str]
  kernel_init: Callable
  drop_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    n1, n2 = self.norm_names
    y = nn.relu(BatchNorm(dtype=self.dtype, name=n1)(x, train))
    y = _conv(self.bn_size * self.growth_rate, 1, 1, 0, self.kernel_init, self.dtype, "conv1")(y)
    y = nn.relu(BatchNorm(dtype=self.dtype, name=n2)(y, train))
    y = _conv(self.growth_rate, 3, 1, 1, self.kernel_init, self.dtype, "conv2")(y)
    # torchvision's F.dropout after each layer (drop_rate 0 in every released DenseNet).
    deterministic = not (train and self.drop_rate > 0 and self.has_rng("dropout"))
    return nn.Dropout(self.drop_rate, deterministic=deterministic)(y)


class Transition(nn.Module):
  """BN -> ReLU -> 1x1 conv halving the channels -> 2x2/2 average pool (floor on odd sizes)."""

  norm_name: str
  kernel_init: Callable
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = nn.relu(BatchNorm(dtype=self.dtype, name=self.norm_name)(x, train))
    y = _conv(x.shape[-1] // 2, 1, 1, 0, self.kernel_init, self.dtype, "conv")(y)
    return nn.avg_pool(y, (2, 2), strides=(2, 2), padding="VALID")


class DenseBlock(nn.Module):
  """torchvision `_DenseBlock`: layer J sees [x, new_1, ..., new_{J-1}]; returns all of them."""

  num_layers: int
  growth_rate: int
  bn_size: int
  drop_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for j in range(self.num_layers):
      new = DenseLayer(self.growth_rate, self.bn_size, ("norm1", "norm2"), kaiming_fan_in,
                       self.drop_rate, self.dtype, name=f"denselayer{j + 1}")(x, train)
      x = jnp.concatenate([x, new], axis=-1)
    return x


class TorchvisionFeatures(nn.Module):
  """torchvision's `features` Sequential: stem, dense blocks, transitions and `norm5`."""

  growth_rate: int
  block_config: Sequence[int]
  num_init_features: int
  bn_size: int
  drop_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = _conv(self.num_init_features, 7, 2, 3, kaiming_fan_in, self.dtype, "conv0")(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name="norm0")(x, train))
    x = max_pool_torch(x, 3, 2, 1)
    for k, n_layers in enumerate(self.block_config):
      x = DenseBlock(n_layers, self.growth_rate, self.bn_size, self.drop_rate, self.dtype,
                     name=f"denseblock{k + 1}")(x, train)
      if k != len(self.block_config) - 1:
        x = Transition("norm", kaiming_fan_in, self.dtype, name=f"transition{k + 1}")(x, train)
    return BatchNorm(dtype=self.dtype, name="norm5")(x, train)


class DenseNet(nn.Module):
  """DenseNet-BC on NHWC images; `__call__(x, train)` returns float32 logits.

  Attributes:
    variant: 'torchvision' (ImageNet stem) or 'cifar' (kuangliu: 3x3 stem, no pool).
    growth_rate: channels each dense layer adds (k = 32 for DenseNet-121).
    block_config: dense layers per block ((6, 12, 24, 16) for DenseNet-121).
    num_init_features: stem channels; None means 2 * growth_rate (64 for DenseNet-121).
    bn_size: bottleneck width factor, the 1x1 conv has bn_size * k channels (4 in both).
    drop_rate: dropout after each dense layer, torchvision only (0 in every released model);
      active only with train=True and a 'dropout' rng.
  """

  num_classes: int
  variant: str = "torchvision"
  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int | None = None
  bn_size: int = 4
  drop_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.variant not in VARIANTS:
      raise ValueError(f"DenseNet variant must be one of {VARIANTS}, got {self.variant!r}")
    if x.ndim != 4:
      raise ValueError(f"DenseNet expects NHWC images, got shape {x.shape}")
    if self.variant == "cifar" and len(self.block_config) != 4:
      raise ValueError(f"the CIFAR DenseNet has exactly 4 dense blocks, got {self.block_config}")
    if self.variant == "cifar" and self.drop_rate:
      raise ValueError("the kuangliu CIFAR DenseNet has no dropout; drop_rate must be 0")
    init_features = self.num_init_features or 2 * self.growth_rate
    x = x.astype(self.dtype)
    if self.variant == "torchvision":
      x = TorchvisionFeatures(self.growth_rate, tuple(self.block_config), init_features,
                              self.bn_size, self.drop_rate, self.dtype, name="features")(x, train)
      x = nn.relu(x)
      x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
      x = nn.Dense(self.num_classes, kernel_init=torch_default_kernel_init,
                   bias_init=nn.initializers.zeros, dtype=self.dtype, name="classifier")(x)
      return x.astype(jnp.float32)
    return self._cifar(x, init_features, train)

  def _cifar(self, x: jax.Array, init_features: int, train: bool) -> jax.Array:
    init = torch_default_kernel_init
    x = _conv(init_features, 3, 1, 1, init, self.dtype, "conv1")(x)
    for k, n_layers in enumerate(self.block_config):
      for j in range(n_layers):
        new = DenseLayer(self.growth_rate, self.bn_size, ("bn1", "bn2"), init, 0.0, self.dtype,
                         name=f"dense{k + 1}_{j}")(x, train)
        x = jnp.concatenate([new, x], axis=-1)  # kuangliu: torch.cat([out, x], 1)
      if k != len(self.block_config) - 1:
        x = Transition("bn", init, self.dtype, name=f"trans{k + 1}")(x, train)
    x = nn.relu(BatchNorm(dtype=self.dtype, name="bn")(x, train))
    if x.shape[1] != x.shape[2]:
      # The reference pools with a square window of the map's height; on a non-square map that
      # leaves several cells and its linear layer would not fit.
      raise ValueError(f"the CIFAR DenseNet needs square inputs, final map is {x.shape[1:3]}")
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    x = torch_linear(self.num_classes, x.shape[-1], self.dtype, "linear")(x)
    return x.astype(jnp.float32)


# torchvision < 0.4 saved dense-layer modules as `norm.1`, `conv.1`, ...; its download URLs still
# serve those keys (torchvision's `_load_state_dict` renames them). Only dense layers use these
# names in the torchvision layout (stem: conv0/norm0, transitions: norm/conv, final: norm5).
_LEGACY = {"norm1": "norm.1", "conv1": "conv.1", "norm2": "norm.2", "conv2": "conv.2"}
NAMINGS = {"torchvision": None, "torchvision_legacy": _LEGACY, "kuangliu": None}


def torch_key(path: tuple[str, ...], naming: str = "torchvision") -> str:
  """The torch state-dict key of a jdd DenseNet variable (see the module docstring).

  'torchvision' and 'kuangliu' are the plain naming rule (the Flax modules carry the torch names
  of their variant); 'torchvision_legacy' reads the `denselayer{J}.norm.1`-style keys of the
  checkpoint files torchvision downloads.
  """
  if naming not in NAMINGS:
    raise ValueError(f"DenseNet naming must be one of {tuple(NAMINGS)}, got {naming!r}")
  return default_torch_key(path, NAMINGS[naming])
