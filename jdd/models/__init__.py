"""jdd.models: Flax teachers and students, found by name through a plain dict.

Every model is NHWC, `model.apply(variables, x, train=...)` returns logits, and every BatchNorm is
`jdd.models.bn.BatchNorm`, which records BN-input statistics when `bn_stats` is mutable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdd.models import convnet, resnet
from jdd.models.bn import BatchNorm, ordered_bn_stats, ordered_bn_stats_paths
from jdd.models.convnet import ConvNet
from jdd.models.resnet import RESNET_LAYOUTS, ResNet
from jdd.models import densenet, efficientnet
from jdd.models import mobilenet_v2, shufflenet
from jdd.models import nfnet


def _resnet(arch):
  stages, block = RESNET_LAYOUTS[arch]
  return lambda num_classes, **kw: ResNet(stage_sizes=stages, block=block,
                                          num_classes=num_classes, **kw)


# arch -> (builder(num_classes, **kwargs) -> module, torch_key(path, naming) or None).
# The default naming of each torch_key is the layout most checkpoints of that arch come in.
REGISTRY: dict[str, tuple[Callable[..., nn.Module], Callable[..., Any] | None]] = {
    "convnet": (lambda num_classes, **kw: ConvNet(num_classes=num_classes, **kw),
                convnet.torch_key),
    **{arch: (_resnet(arch), resnet.torch_key) for arch in RESNET_LAYOUTS},
    "densenet121": (lambda num_classes, **kw: densenet.DenseNet(num_classes=num_classes, **kw),
                    densenet.torch_key),
    "efficientnet_b0": (lambda num_classes, **kw: efficientnet.EfficientNetB0(
        num_classes=num_classes, **kw), efficientnet.torch_key),
    "mobilenet_v2": (lambda num_classes, **kw: mobilenet_v2.MobileNetV2(num_classes=num_classes,
                                                                         **kw),
                     mobilenet_v2.torch_key),
    "shufflenet_v2_x0_5": (lambda num_classes, **kw: shufflenet.ShuffleNetV2(
        num_classes=num_classes, net_size=0.5, **kw), shufflenet.torch_key),
    "shufflenet_v2_x1_0": (lambda num_classes, **kw: shufflenet.ShuffleNetV2(
        num_classes=num_classes, net_size=1.0, **kw), shufflenet.torch_key),
    "shufflenet_g2": (lambda num_classes, **kw: shufflenet.ShuffleNetG2(num_classes=num_classes,
                                                                        **kw),
                      shufflenet.torch_key),
    # timm nfnet_l0 (no BatchNorm: variables are {'params'}); num_classes=0 -> 2304-d features.
    "nfnet_l0": (lambda num_classes, **kw: nfnet.NFNet(num_classes=num_classes, **kw),
                 nfnet.torch_key),
}
ARCHS = tuple(REGISTRY)


def build_model(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Model for `arch`; kwargs go to the module (convnet: width, depth, norm, dtype;
  resnet*: stem, width, dtype; see each module for the others)."""
  if arch not in REGISTRY:
    raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(REGISTRY)}")
  return REGISTRY[arch][0](num_classes, **kwargs)


def torch_key_fn(arch: str, naming: str | None = None, **kwargs: Any) -> Callable[..., Any]:
  """`path -> torch state-dict key` for converting `arch` from a checkpoint saved in `naming`."""
  if arch not in REGISTRY or REGISTRY[arch][1] is None:
    convertible = [a for a, (_, k) in REGISTRY.items() if k is not None]
    raise ValueError(f"no torch converter for arch {arch!r}; convertible: {convertible}")
  fn = REGISTRY[arch][1]
  extra = dict(kwargs)
  if naming is not None:
    extra["naming"] = naming
  return lambda path: fn(path, **extra)


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
    "torch_key_fn",
    "ordered_bn_stats",
    "ordered_bn_stats_paths",
]
