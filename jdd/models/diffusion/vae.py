"""jdd's Stable Diffusion VAE (`AutoencoderKL`), Flax linen, NHWC.

Reference: diffusers' `AutoencoderKL` with `Encoder` / `Decoder` (read in diffusers 0.42.1).
Encoder: conv_in -> `DownEncoderBlock2D`s (ResNets without time input, then a stride-2 conv that
first pads right/bottom by one, on all but the last) -> mid block (ResNet, single-head
GroupNorm self-attention, ResNet) -> GroupNorm-SiLU-conv_out to 2 x latent channels ->
quant_conv (1x1). The diagonal Gaussian posterior splits that into mean and log-variance, the
log-variance clipped to [-30, 20]. Decoder: post_quant_conv (1x1) -> conv_in -> mid block ->
`UpDecoderBlock2D`s of layers_per_block + 1 ResNets with nearest x2 + conv upsamplers ->
GroupNorm-SiLU-conv_out. All GroupNorms use eps 1e-6.

The latent scaling factor (0.18215 for SD 1.x, `VAEConfig.scaling_factor`) is NOT applied here:
the method multiplies after encoding and divides before decoding, where the choice is visible
(EDGE's released code omits the division, see `jdd.methods.edge`).

Deliberate differences: NHWC images and latents; no tiling / slicing, no spatial-norm (MoVQ)
decoder; float32 throughout (diffusers' `force_upcast` concerns fp16 only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdd.models.diffusion.layers import (Downsample2D, ResnetBlock2D, SpatialSelfAttention,
                                         Upsample2D, config_fields, conv, group_norm)
from jdd.models.torch_names import default_torch_key

EPS = 1e-6
_REQUIRED = {"act_fn": ("silu",), "use_quant_conv": (True,), "use_post_quant_conv": (True,),
             "mid_block_add_attention": (True,), "shift_factor": (None,),
             "latents_mean": (None,), "latents_std": (None,)}


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """The fields of a diffusers vae/config.json that jdd's VAE reads (SD 1.5 defaults)."""

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  sample_size: int = 512
  scaling_factor: float = 0.18215

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "VAEConfig":
    for key, allowed in _REQUIRED.items():
      if key in d and d[key] not in allowed:
        raise ValueError(f"vae config {key}={d[key]!r} is not supported (needs {allowed[0]!r})")
    for key in ("down_block_types", "up_block_types"):
      want = "DownEncoderBlock2D" if key.startswith("down") else "UpDecoderBlock2D"
      if any(b != want for b in d.get(key, ())):
        raise ValueError(f"vae {key} {d[key]} not supported (only {want})")
    return cls(**config_fields(cls, d))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


class VAEMidBlock(nn.Module):
  channels: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    res = lambda i: ResnetBlock2D(self.channels, self.groups, EPS, use_time=False,
                                  dtype=self.dtype, name=f"resnets_{i}")
    x = res(0)(x)
    x = SpatialSelfAttention(self.channels, self.groups, EPS, dim_head=self.channels,
                             dtype=self.dtype, name="attentions_0")(x)
    return res(1)(x)


class ResnetStack(nn.Module):
  """`DownEncoderBlock2D` / `UpDecoderBlock2D`: ResNets, then an optional resampler."""

  channels: int
  layers: int
  groups: int
  resample: str | None  # 'down', 'up' or None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for j in range(self.layers):
      x = ResnetBlock2D(self.channels, self.groups, EPS, use_time=False, dtype=self.dtype,
                        name=f"resnets_{j}")(x)
    if self.resample == "down":
      x = Downsample2D(self.channels, padding=0, dtype=self.dtype, name="downsamplers_0")(x)
    elif self.resample == "up":
      x = Upsample2D(self.channels, dtype=self.dtype, name="upsamplers_0")(x)
    return x


class Encoder(nn.Module):
  config: VAEConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    boc, n = c.block_out_channels, len(c.block_out_channels)
    x = conv(boc[0], 3, "conv_in", dtype=self.dtype)(x)
    for i in range(n):
      x = ResnetStack(boc[i], c.layers_per_block, c.norm_num_groups,
                      "down" if i < n - 1 else None, self.dtype, name=f"down_blocks_{i}")(x)
    x = VAEMidBlock(boc[-1], c.norm_num_groups, self.dtype, name="mid_block")(x)
    x = nn.silu(group_norm(c.norm_num_groups, EPS, "conv_norm_out", self.dtype)(x))
    return conv(2 * c.latent_channels, 3, "conv_out", dtype=self.dtype)(x)


class Decoder(nn.Module):
  config: VAEConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z):
    c = self.config
    rev, n = c.block_out_channels[::-1], len(c.block_out_channels)
    x = conv(rev[0], 3, "conv_in", dtype=self.dtype)(z)
    x = VAEMidBlock(rev[0], c.norm_num_groups, self.dtype, name="mid_block")(x)
    for i in range(n):
      x = ResnetStack(rev[i], c.layers_per_block + 1, c.norm_num_groups,
                      "up" if i < n - 1 else None, self.dtype, name=f"up_blocks_{i}")(x)
    x = nn.silu(group_norm(c.norm_num_groups, EPS, "conv_norm_out", self.dtype)(x))
    return conv(c.out_channels, 3, "conv_out", dtype=self.dtype)(x)


class AutoencoderKL(nn.Module):
  """`encode(images) -> (mean, logvar)` in unscaled latent units; `decode(latents) -> images`.

  Call through `model.apply(variables, x, method=AutoencoderKL.encode)` (or `.decode`);
  `__call__` (used at init) runs both, decoding the posterior mean.
  """

  config: VAEConfig
  dtype: Any = jnp.float32

  def setup(self):
    lc = self.config.latent_channels
    self.encoder = Encoder(self.config, self.dtype)
    self.decoder = Decoder(self.config, self.dtype)
    self.quant_conv = conv(2 * lc, 1, None, padding=0, dtype=self.dtype)
    self.post_quant_conv = conv(lc, 1, None, padding=0, dtype=self.dtype)

  def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    moments = self.quant_conv(self.encoder(images.astype(self.dtype))).astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, latents: jax.Array) -> jax.Array:
    z = self.post_quant_conv(latents.astype(self.dtype))
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, images: jax.Array) -> jax.Array:
    mean, _ = self.encode(images)
    return self.decode(mean)


def sample_posterior(rng: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """mean + exp(logvar / 2) * N(0, I): diffusers' `latent_dist.sample()`."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def torch_key(path: tuple[str, ...]) -> str:
  """diffusers `AutoencoderKL` state-dict key of a jdd variable path."""
  return default_torch_key(path)


def init_params(config: VAEConfig, rng: jax.Array, size: int | None = None):
  s = size or min(config.sample_size, 2 ** len(config.block_out_channels) * 2)
  return AutoencoderKL(config).init(rng, jnp.zeros((1, s, s, config.in_channels)))


def param_template(config: VAEConfig):
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
