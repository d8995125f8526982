"""jdd's Stable Diffusion U-Net (`UNet2DConditionModel`), Flax linen, NHWC.

Reference: diffusers' `UNet2DConditionModel` with the SD 1.x configuration (read in diffusers
0.42.1): sinusoidal timestep features (flip_sin_to_cos=True, freq_shift=0) -> linear-SiLU-linear
time embedding of 4 x block_out_channels[0]; conv_in; down blocks of ResNet (+ cross-attention
Transformer2D) layers with a stride-2 conv downsampler on all but the last; a mid block
resnet-attention-resnet; up blocks of layers_per_block + 1 ResNets that each take one skip
connection (concatenated after the running features) with nearest x2 + conv upsamplers; then
GroupNorm-SiLU-conv_out. The output is the predicted noise (epsilon).

As in diffusers, `attention_head_dim` is (for SD 1.x configs) the NUMBER of heads per block, a
long-standing misnomer kept so that config.json files read unchanged; the width of a head is
channels // heads.

Deliberate differences: NHWC in and out (`sample` is (B, H, W, 4)); only the SD 1.x features are
built (conv projections, one transformer layer per block, 'default' time conditioning, no
class / addition embeddings, no LoRA or adapters) and a config asking for anything else is
refused by `UNetConfig.from_dict`; H and W must be divisible by 2**(number of downsamplers)
(diffusers would pass an explicit upsample size instead).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdd.models.diffusion.layers import (Downsample2D, ResnetBlock2D, Transformer2DModel,
                                         Upsample2D, config_fields, conv, group_norm)
from jdd.models.torch_names import default_torch_key

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
# diffusers config keys whose non-default values jdd does not implement -> the value it needs.
_REQUIRED = {
    "mid_block_type": ("UNetMidBlock2DCrossAttn",), "use_linear_projection": (False,),
    "class_embed_type": (None,), "addition_embed_type": (None,), "encoder_hid_dim": (None,),
    "time_embedding_type": ("positional",), "resnet_time_scale_shift": ("default",),
    "transformer_layers_per_block": (1,), "only_cross_attention": (False,),
    "dual_cross_attention": (False,), "num_attention_heads": (None,), "act_fn": ("silu",),
    "center_input_sample": (False,), "time_cond_proj_dim": (None,), "conv_in_kernel": (3,),
    "conv_out_kernel": (3,), "mid_block_scale_factor": (1, 1.0),
    "resnet_out_scale_factor": (1, 1.0), "downsample_padding": (1,), "upcast_attention": (False,),
    "num_class_embeds": (None,), "timestep_post_act": (None,), "time_embedding_act_fn": (None,),
    "time_embedding_dim": (None,), "cross_attention_norm": (None,), "attention_type": ("default",),
    "class_embeddings_concat": (False,), "reverse_transformer_layers_per_block": (None,),
    "dropout": (0, 0.0),
}


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """The fields of a diffusers unet/config.json that jdd's U-Net reads (SD 1.5 defaults)."""

  sample_size: int = 64
  in_channels: int = 4
  out_channels: int = 4
  down_block_types: tuple[str, ...] = (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, PLAIN_DOWN)
  up_block_types: tuple[str, ...] = (PLAIN_UP, CROSS_UP, CROSS_UP, CROSS_UP)
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  layers_per_block: int = 2
  attention_head_dim: int | tuple[int, ...] = 8
  cross_attention_dim: int = 768
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  flip_sin_to_cos: bool = True
  freq_shift: int = 0

  def __post_init__(self):
    n = len(self.block_out_channels)
    if len(self.down_block_types) != n or len(self.up_block_types) != n:
      raise ValueError("down_block_types, up_block_types and block_out_channels differ in length")
    bad = set(self.down_block_types) - {CROSS_DOWN, PLAIN_DOWN} | (
        set(self.up_block_types) - {CROSS_UP, PLAIN_UP})
    if bad:
      raise ValueError(f"unsupported block types {sorted(bad)}")
    heads = self.heads
    if len(heads) != n:
      raise ValueError(f"attention_head_dim {self.attention_head_dim} does not fit {n} blocks")
    for c, h in zip(self.block_out_channels, heads):
      if c % h or c % self.norm_num_groups:
        raise ValueError(f"channels {c} not divisible by heads {h} / groups "
                         f"{self.norm_num_groups}")

  @property
  def heads(self) -> tuple[int, ...]:
    h = self.attention_head_dim
    return tuple(h) if isinstance(h, (tuple, list)) else (h,) * len(self.block_out_channels)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "UNetConfig":
    """From a parsed diffusers config.json; features jdd does not build are refused."""
    for key, allowed in _REQUIRED.items():
      if key in d and d[key] not in allowed and not (isinstance(d[key], list)
                                                      and set(d[key]) <= set(allowed)):
        raise ValueError(f"unet config {key}={d[key]!r} is not supported (jdd builds the SD 1.x "
                         f"U-Net: {key} must be {allowed[0]!r})")
    return cls(**config_fields(cls, d))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def timestep_features(t: jax.Array, dim: int, flip_sin_to_cos: bool = True,
                      freq_shift: float = 0.0, max_period: float = 10000.0) -> jax.Array:
  """diffusers' `get_timestep_embedding`: [sin | cos] (or [cos | sin]) of t * 10000^(-i/half)."""
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  args = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedding(nn.Module):
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.features, dtype=self.dtype, name="linear_1")(x)
    return nn.Dense(self.features, dtype=self.dtype, name="linear_2")(nn.silu(x))


class DownBlock(nn.Module):
  """`CrossAttnDownBlock2D` (cross=True) or `DownBlock2D`; returns (x, skip states)."""

  out_channels: int
  layers: int
  heads: int
  groups: int
  eps: float
  cross: bool
  downsample: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, context):
    skips = []
    for j in range(self.layers):
      x = ResnetBlock2D(self.out_channels, self.groups, self.eps, dtype=self.dtype,
                        name=f"resnets_{j}")(x, temb)
      if self.cross:
        x = Transformer2DModel(self.out_channels, self.heads, self.groups, dtype=self.dtype,
                               name=f"attentions_{j}")(x, context)
      skips.append(x)
    if self.downsample:
      x = Downsample2D(self.out_channels, padding=1, dtype=self.dtype, name="downsamplers_0")(x)
      skips.append(x)
    return x, skips


class UpBlock(nn.Module):
  """`CrossAttnUpBlock2D` or `UpBlock2D`: each ResNet consumes the last remaining skip."""

  out_channels: int
  layers: int
  heads: int
  groups: int
  eps: float
  cross: bool
  upsample: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, skips, temb, context):
    skips = list(skips)
    for j in range(self.layers):
      x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = ResnetBlock2D(self.out_channels, self.groups, self.eps, dtype=self.dtype,
                        name=f"resnets_{j}")(x, temb)
      if self.cross:
        x = Transformer2DModel(self.out_channels, self.heads, self.groups, dtype=self.dtype,
                               name=f"attentions_{j}")(x, context)
    if self.upsample:
      x = Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers_0")(x)
    return x


class MidBlock(nn.Module):
  channels: int
  heads: int
  groups: int
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, context):
    res = lambda i: ResnetBlock2D(self.channels, self.groups, self.eps, dtype=self.dtype,
                                  name=f"resnets_{i}")
    x = res(0)(x, temb)
    x = Transformer2DModel(self.channels, self.heads, self.groups, dtype=self.dtype,
                           name="attentions_0")(x, context)
    return res(1)(x, temb)


class UNet2DConditionModel(nn.Module):
  """eps_hat = unet.apply(variables, sample (B, H, W, C), timesteps (B,) or scalar,
  context (B, L, D))."""

  config: UNetConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, sample: jax.Array, timesteps: jax.Array,
               encoder_hidden_states: jax.Array) -> jax.Array:
    c = self.config
    boc, heads, n = c.block_out_channels, c.heads, len(c.block_out_channels)
    factor = 2 ** (n - 1)
    if sample.shape[1] % factor or sample.shape[2] % factor:
      raise ValueError(f"sample spatial size {sample.shape[1:3]} must be divisible by {factor}")
    t = jnp.broadcast_to(jnp.asarray(timesteps), (sample.shape[0],))
    temb = timestep_features(t, boc[0], c.flip_sin_to_cos, c.freq_shift).astype(self.dtype)
    temb = TimestepEmbedding(4 * boc[0], self.dtype, name="time_embedding")(temb)
    context = encoder_hidden_states.astype(self.dtype)

    x = conv(boc[0], 3, "conv_in", dtype=self.dtype)(sample.astype(self.dtype))
    skips = [x]
    for i in range(n):
      x, s = DownBlock(boc[i], c.layers_per_block, heads[i], c.norm_num_groups, c.norm_eps,
                       c.down_block_types[i] == CROSS_DOWN, i < n - 1, self.dtype,
                       name=f"down_blocks_{i}")(x, temb, context)
      skips += s
    x = MidBlock(boc[-1], heads[-1], c.norm_num_groups, c.norm_eps, self.dtype,
                 name="mid_block")(x, temb, context)
    rev_boc, rev_heads = boc[::-1], heads[::-1]
    for i in range(n):
      take = c.layers_per_block + 1
      block_skips, skips = skips[-take:], skips[:-take]
      x = UpBlock(rev_boc[i], take, rev_heads[i], c.norm_num_groups, c.norm_eps,
                  c.up_block_types[i] == CROSS_UP, i < n - 1, self.dtype,
                  name=f"up_blocks_{i}")(x, block_skips, temb, context)
    x = nn.silu(group_norm(c.norm_num_groups, c.norm_eps, "conv_norm_out", self.dtype)(x))
    return conv(c.out_channels, 3, "conv_out", dtype=self.dtype)(x).astype(jnp.float32)


_RENAMES = {"linear.1": "linear_1", "linear.2": "linear_2"}


def torch_key(path: tuple[str, ...]) -> str:
  """diffusers `UNet2DConditionModel` state-dict key of a jdd variable path."""
  return default_torch_key(path, _RENAMES)


def init_params(config: UNetConfig, rng: jax.Array, batch: int = 1, context_len: int = 77):
  """Random {'params': ...} for `config` (for tests and from-scratch training)."""
  model = UNet2DConditionModel(config)
  s = config.sample_size
  x = jnp.zeros((batch, s, s, config.in_channels))
  ctx = jnp.zeros((batch, context_len, config.cross_attention_dim))
  return model.init(rng, x, jnp.zeros((batch,), jnp.int32), ctx)


def param_template(config: UNetConfig, context_len: int = 77):
  """Shapes of {'params': ...} without allocating weights."""
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0), 1, context_len))
