"""jdd.models: Flax teachers and students, found by name through a plain dict.

Every model is NHWC, `model.apply(variables, x, train=...)` returns logits, and every BatchNorm is
`jdd.models.bn.BatchNorm`, which records BN-input statistics when `bn_stats` is mutable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdd.models.bn import BatchNorm, ordered_bn_stats, ordered_bn_stats_paths
from jdd.models.convnet import ConvNet
from jdd.models.resnet import RESNET_LAYOUTS, ResNet

ARCHS = ("convnet",) + tuple(RESNET_LAYOUTS)


def build_model(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Model for `arch`; kwargs go to the module (convnet: width, depth, norm, dtype;
  resnet*: stem, width, dtype)."""
  if arch == "convnet":
    return ConvNet(num_classes=num_classes, **kwargs)
  if arch in RESNET_LAYOUTS:
    stages, block = RESNET_LAYOUTS[arch]
    return ResNet(stage_sizes=stages, block=block, num_classes=num_classes, **kwargs)
  raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


def init_variables(model: nn.Module, rng: jax.Array, image_shape: Sequence[int]) -> dict:
  """`{'params', 'batch_stats'}` (the latter only if the model has BN) from a dummy batch.

  `image_shape` is (H, W, C). The dummy forward runs in eval mode so initialisation never
  depends on batch statistics of zeros; running stats start at mean 0 / var 1 as in torch.
  """
  image_shape = tuple(int(s) for s in image_shape)
  if len(image_shape) != 3:
    raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
  variables = model.init(rng, jnp.zeros((1,) + image_shape, jnp.float32), train=False)
  return {k: variables[k] for k in ("params", "batch_stats") if k in variables}


__all__ = [
    "ARCHS",
    "BatchNorm",
    "ConvNet",
    "ResNet",
    "build_model",
    "init_variables",
    "ordered_bn_stats",
    "ordered_bn_stats_paths",
]
