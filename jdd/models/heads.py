"""The projection head of the image-text distillation references (MTT-VL, LoRS, RepBlend).

Reference: `ProjectionHead` in `src/networks.py` of zhangxin-xd/RepBlend (byte-identical in
silicx/LoRS_Distill). With p = projection(x):

    h = LayerNorm(Dropout_0.1(fc(GELU(p))) + p)

* `projection`: Linear(d_in, d_out); `fc`: Linear(d_out, d_out); `layer_norm`: LayerNorm(d_out)
  with torch's eps 1e-5 and affine weight/bias.
* GELU is torch's default `nn.GELU()`, the exact erf form (Flax's `nn.gelu` defaults to the
  tanh approximation, so it is spelled out here).
* Dims in the references: the text head maps BERT's 768-d [CLS] to the image feature size,
  768 -> 2304 for NFNet-L0 (7,087,104 parameters); RepBlend's image head maps 2304 -> 2304
  (10,626,048). The reference's default d_out of 768 is always overridden.
* Init is torch's default for Linear (U(+-1/sqrt(fan_in)) for weight and bias) and LayerNorm
  (weight 1, bias 0); the references do not override it.
* Dropout is active in train mode (expert training, the distillation student and evaluation
  training all run it). `train=True` needs a 'dropout' rng; jdd derives it from the step key,
  so unlike the reference the TESLA second pass can replay the same masks.

Variable names follow torch, so `torch_key` maps ('params', 'projection', 'kernel') to
'projection.weight' (prefix a head's own name, e.g. 'text_projection.', when it sits inside a
bigger model: `torch_key(path, prefix='text_projection')`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdd.models.convnet import torch_linear
from jdd.models.torch_names import default_torch_key

TEXT_EMBED_DIM = 768  # BERT-base [CLS]
NFNET_L0_DIM = 2304  # timm nfnet_l0 pooled features
DROPOUT = 0.1
LAYER_NORM_EPS = 1e-5  # torch nn.LayerNorm default


class ProjectionHead(nn.Module):
  """Linear -> GELU(erf) -> Linear -> Dropout -> + first Linear's output -> LayerNorm."""

  features: int  # d_out ("projection_dim" in the reference)
  dropout: float = DROPOUT
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.astype(self.dtype)
    projected = torch_linear(self.features, x.shape[-1], self.dtype, "projection")(x)
    h = nn.gelu(projected, approximate=False)
    h = torch_linear(self.features, self.features, self.dtype, "fc")(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = h + projected
    h = nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False, dtype=self.dtype,
                     name="layer_norm")(h)
    return h.astype(jnp.float32)


def text_head(dim: int = NFNET_L0_DIM, **kw: Any) -> ProjectionHead:
  """The references' text projection: 768-d BERT [CLS] -> the image feature size."""
  return ProjectionHead(features=dim, **kw)


def image_head(dim: int = NFNET_L0_DIM, **kw: Any) -> ProjectionHead:
  """RepBlend's image projection, d -> d on frozen backbone features."""
  return ProjectionHead(features=dim, **kw)


def torch_key(path: tuple[str, ...], prefix: str = "") -> str:
  """The torch state-dict key of a ProjectionHead variable, e.g. 'fc.weight'.

  `path` starts with the collection ('params', ...) and may include outer module names, which
  become dotted prefixes as for every jdd model; `prefix` prepends a name the Flax tree lacks.
  """
  key = default_torch_key(path)
  return f"{prefix}.{key}" if prefix else key
