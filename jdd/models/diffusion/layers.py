"""Building blocks shared by jdd's Stable Diffusion U-Net and VAE (Flax linen, NHWC).

Reference: Hugging Face diffusers' `ResnetBlock2D`, `Downsample2D`, `Upsample2D`, `Attention`
(with the default scaled-dot-product processor), `BasicTransformerBlock`, `GEGLU` and
`Transformer2DModel` (the 'conv projection' variant of SD 1.x), as read in diffusers 0.42.1.
Facts carried over: GroupNorm/LayerNorm epsilons (1e-5 in U-Net resnets, 1e-6 in the
Transformer2D GroupNorm and everywhere in the VAE), SiLU activations, the GEGLU feed-forward
with 4x width and the exact (erf) GELU on the gate, the attention scale dim_head**-0.5, nearest
upsampling by 2 then a 3x3 conv, and the encoder-style downsampler that pads right/bottom by one
before a stride-2 valid conv.

Deliberate differences: images and feature maps are NHWC (Flax convention), not NCHW; the
attention is computed in float32 whatever the module dtype (diffusers upcasts only when asked);
dropout is omitted because every SD module uses p = 0.

Submodules carry the torch attribute names (with `_<i>` for ModuleList indices), so
`jdd.models.torch_names.default_torch_key` maps their paths to diffusers' state-dict keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdd.models.conv import conv_general_dilated
from jdd.models.remat import remat


def config_fields(cls, d: Mapping[str, Any]) -> dict[str, Any]:
  """The fields of dataclass `cls` that a diffusers config.json sets (None: the default),
  lists as tuples (the dataclasses are frozen and hashable)."""
  out = {}
  for f in dataclasses.fields(cls):
    if d.get(f.name) is not None:
      v = d[f.name]
      out[f.name] = tuple(v) if isinstance(v, list) else v
  return out


def group_norm(groups: int, eps: float, name: str, dtype: Any = jnp.float32) -> nn.GroupNorm:
  """torch.nn.GroupNorm over the channel (last) axis; two-pass variance as torch computes it."""
  return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype,
                      name=name)


def layer_norm(eps: float, name: str, dtype: Any = jnp.float32) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


def conv(features: int, kernel: int, name: str | None, stride: int = 1,
         padding: int | tuple | None = None,
         dtype: Any = jnp.float32) -> nn.Conv:
  """A torch-style Conv2d: symmetric padding kernel // 2 unless given (name None inside setup).

  Its gradients are `jdd.models.conv`'s: the forward is lax's, and the input gradient makes each
  reversed kernel only when its layer's cotangent arrives (EDGE's frozen SD-1.5 U-Net weights
  would otherwise be held twice during the backward pass)."""
  pad = kernel // 2 if padding is None else padding
  if isinstance(pad, int):
    pad = ((pad, pad), (pad, pad))
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, dtype=dtype,
                 conv_general_dilated=conv_general_dilated, name=name)


class ResnetBlock2D(nn.Module):
  """GroupNorm-SiLU-conv twice, with the time embedding added between (when given)."""

  out_channels: int
  groups: int
  eps: float
  use_time: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
    h = nn.silu(group_norm(self.groups, self.eps, "norm1", self.dtype)(x))
    h = conv(self.out_channels, 3, "conv1", dtype=self.dtype)(h)
    if self.use_time:
      t = nn.Dense(self.out_channels, dtype=self.dtype, name="time_emb_proj")(nn.silu(temb))
      h = h + t[:, None, None, :]
    h = nn.silu(group_norm(self.groups, self.eps, "norm2", self.dtype)(h))
    h = conv(self.out_channels, 3, "conv2", dtype=self.dtype)(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, "conv_shortcut", padding=0, dtype=self.dtype)(x)
    return x + h


class Downsample2D(nn.Module):
  """Stride-2 3x3 conv. `padding=1` (U-Net) pads symmetrically; `padding=0` (VAE encoder) pads
  one row/column at the bottom/right first, as diffusers does."""

  channels: int
  padding: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.padding == 0:
      x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return conv(self.channels, 3, "conv", stride=2, padding=self.padding, dtype=self.dtype)(x)


class Upsample2D(nn.Module):
  """Nearest-neighbour x2 then a 3x3 conv."""

  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv(self.channels, 3, "conv", dtype=self.dtype)(x)


# Queries per attention block: the (B, heads, block, L_k) scores of one block are all that is
# ever held (1 GB at L = 4096, i.e. 512-px SD latents, batch 2, 8 heads if held whole).
ATTENTION_BLOCK = 1024


def _attention_block(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  probs = jax.nn.softmax(scores, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


# Built once, not per call: each layer's trace then reuses the same rules.
_REMAT_BLOCK = remat(_attention_block)          # one block: no loop to keep it apart
_CHECKPOINT_BLOCK = jax.checkpoint(_attention_block)   # blocks inside lax.map


def attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int) -> jax.Array:
  """Multi-head softmax(q k^T / sqrt(d)) v on (B, L, heads*d) inputs, in float32.

  Memory-efficient, as torch's scaled_dot_product_attention (which diffusers calls) is: the
  queries go in blocks of at most ATTENTION_BLOCK, one after another (`lax.map`), and each block
  is rematerialised, so the backward pass recomputes a block's scores instead of keeping every
  layer's (B, heads, L_q, L_k) probabilities alive from the forward. Each query row is the same
  computation as unblocked. One block is `jdd.models.remat.remat` (`jax.checkpoint` outside a
  loop saves nothing on XLA:CPU: 5 layers of 1024 tokens, batch 2, 8 heads: 724.6 MiB of
  temporaries either way, 281.1 with it); several go through `lax.map` with `jax.checkpoint`.
  """
  b, lq, inner = q.shape
  d, dtype = inner // heads, q.dtype
  split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, d).astype(jnp.float32)
  q, k, v = split(q), split(k), split(v)
  size = max(n for n in range(1, min(lq, ATTENTION_BLOCK) + 1) if lq % n == 0)
  if size == lq:
    out = _REMAT_BLOCK(q, k, v)
  else:
    chunks = jnp.moveaxis(q.reshape(b, lq // size, size, heads, d), 1, 0)
    out = jax.lax.map(lambda qc: _CHECKPOINT_BLOCK(qc, k, v), chunks)
    out = jnp.moveaxis(out, 0, 1)
  return out.reshape(b, lq, inner).astype(dtype)


class Attention(nn.Module):
  """diffusers' `Attention`: q/k/v projections, multi-head attention, `to_out.0` projection.

  `context` (cross-attention) defaults to the input. `bias` is False for the U-Net's q/k/v (SD)
  and True for the VAE's mid-block attention.
  """

  heads: int
  dim_head: int
  out_dim: int
  bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    context = x if context is None else context
    inner = self.heads * self.dim_head
    dense = lambda name, bias: nn.Dense(inner, use_bias=bias, dtype=self.dtype, name=name)
    q = dense("to_q", self.bias)(x)
    k = dense("to_k", self.bias)(context)
    v = dense("to_v", self.bias)(context)
    out = attention(q, k, v, self.heads)
    return nn.Dense(self.out_dim, dtype=self.dtype, name="to_out_0")(out)


class SpatialSelfAttention(nn.Module):
  """The VAE mid-block attention: GroupNorm, self-attention over pixels (biased projections,
  one head for SD since dim_head = channels), `to_out.0`, residual. The projections sit directly
  under this module, as in diffusers' state dict (`mid_block.attentions.0.to_q`)."""

  channels: int
  groups: int
  eps: float
  dim_head: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    heads = self.channels // self.dim_head
    inner = heads * self.dim_head
    y = group_norm(self.groups, self.eps, "group_norm", self.dtype)(x).reshape(b, h * w, c)
    dense = lambda f, name: nn.Dense(f, dtype=self.dtype, name=name)
    q, k, v = dense(inner, "to_q")(y), dense(inner, "to_k")(y), dense(inner, "to_v")(y)
    y = dense(self.channels, "to_out_0")(attention(q, k, v, heads))
    return x + y.reshape(b, h, w, c)


class GEGLUFeedForward(nn.Module):
  """`FeedForward` with GEGLU: proj to 2 x inner, value * gelu(gate), then back to dim."""

  dim: int
  mult: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    inner = self.dim * self.mult
    # torch path ff.net.0.proj / ff.net.2: a `net_0` module holding `proj`, and `net_2`.
    h = _Proj(2 * inner, self.dtype, name="net_0")(x)
    value, gate = jnp.split(h, 2, axis=-1)
    h = value * jax.nn.gelu(gate, approximate=False)
    return nn.Dense(self.dim, dtype=self.dtype, name="net_2")(h)


class _Proj(nn.Module):
  """diffusers' `GEGLU` module: it only holds the Linear `proj` (the gating is in the caller)."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.features, dtype=self.dtype, name="proj")(x)


class BasicTransformerBlock(nn.Module):
  """Pre-LayerNorm self-attention, cross-attention to the text, GEGLU feed-forward."""

  dim: int
  heads: int
  dim_head: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    attn = lambda name: Attention(self.heads, self.dim_head, self.dim, dtype=self.dtype,
                                  name=name)
    x = attn("attn1")(layer_norm(1e-5, "norm1", self.dtype)(x)) + x
    x = attn("attn2")(layer_norm(1e-5, "norm2", self.dtype)(x), context) + x
    return GEGLUFeedForward(self.dim, dtype=self.dtype, name="ff")(
        layer_norm(1e-5, "norm3", self.dtype)(x)) + x


class Transformer2DModel(nn.Module):
  """GroupNorm -> 1x1 conv in -> transformer block(s) over pixels -> 1x1 conv out -> residual."""

  channels: int
  heads: int
  groups: int
  num_layers: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    dim_head = self.channels // self.heads
    inner = self.heads * dim_head
    y = group_norm(self.groups, 1e-6, "norm", self.dtype)(x)
    y = conv(inner, 1, "proj_in", padding=0, dtype=self.dtype)(y).reshape(b, h * w, inner)
    for i in range(self.num_layers):
      y = BasicTransformerBlock(inner, self.heads, dim_head, self.dtype,
                                name=f"transformer_blocks_{i}")(y, context)
    y = conv(self.channels, 1, "proj_out", padding=0, dtype=self.dtype)(y.reshape(b, h, w, inner))
    return x + y
