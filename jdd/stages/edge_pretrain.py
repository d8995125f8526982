"""EDGE's offline stand-in networks, trained from scratch: a small VAE, then a small
text-conditioned U-Net in Stable Diffusion's layout at reduced widths (DDPM noise loss, 10 %
null captions). From the stage's key K: step s's key is fold_in(fold_in(K, 0), s), batch i's
draw host_rng(K, 1, i) and the initial weights host_rng(K, 2). Each is one checkpointed loop (`jdd.loop`: W/checkpoints/edge_vae, edge_unet);
`jdd.stages.edge_backends.offline_setup` wraps them for fine-tuning and sampling.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdd.loop import RunContext, host_rng
from jdd.methods import edge
from jdd.models.diffusion import schedulers as sched, unet as unet_lib, vae as vae_lib


def numpy_init(template, rs: np.random.Generator):
  """From-scratch weights without compiling Flax initialisers: kernels N(0, 1/fan_in) (LeCun
  normal, Flax's default), norm scales 1, biases 0."""
  def draw(path, leaf):
    name = getattr(path[-1], "key", "")
    if name == "kernel":
      x = rs.standard_normal(leaf.shape, np.float32) / np.sqrt(np.prod(leaf.shape[:-1]))
      return jnp.asarray(x, leaf.dtype)
    return jnp.ones(leaf.shape, leaf.dtype) if name == "scale" else jnp.zeros(leaf.shape,
                                                                              leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, template)


def vae_config(config) -> vae_lib.VAEConfig:
  v = config.diffusion.vae
  return vae_lib.VAEConfig(block_out_channels=tuple(v.block_out_channels),
                           layers_per_block=int(v.layers_per_block),
                           latent_channels=int(v.latent_channels),
                           norm_num_groups=int(v.norm_num_groups),
                           sample_size=int(config.dataset.image_size))


def unet_config(config, latent_size: int, latent_channels: int,
                text_dim: int) -> unet_lib.UNetConfig:
  """SD's layout (cross-attention blocks down, mirrored up) at reduced widths."""
  u = config.diffusion.unet
  down = tuple(unet_lib.CROSS_DOWN if c else unet_lib.PLAIN_DOWN for c in u.cross_attention)
  up = tuple(unet_lib.CROSS_UP if c else unet_lib.PLAIN_UP for c in reversed(u.cross_attention))
  return unet_lib.UNetConfig(sample_size=latent_size, in_channels=latent_channels,
                             out_channels=latent_channels, down_block_types=down,
                             up_block_types=up, block_out_channels=tuple(u.block_out_channels),
                             layers_per_block=int(u.layers_per_block),
                             attention_head_dim=int(u.heads), cross_attention_dim=text_dim,
                             norm_num_groups=int(u.norm_num_groups))


def _opt(lr: float, steps: int) -> optax.GradientTransformation:
  warm = max(1, min(100, steps // 10))
  return optax.adam(optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(steps, warm + 1)))


def _param_loop(ctx: RunContext, stage, params, step, batch_fn, steps, key):
  opt_state = step.opt.init(params)

  def step_fn(state, batch, rng):
    p, o, metrics = step.fn(state["params"], state["opt"], batch, rng)
    return {"params": p, "opt": o}, metrics
  state = ctx.loop(stage, {"params": params, "opt": opt_state}, jax.jit(step_fn), batch_fn,
                   steps, key)
  return state["params"]


@dataclasses.dataclass(frozen=True)
class _Step:
  fn: Callable
  opt: optax.GradientTransformation


def _encode_all(vae, vae_vars, x: np.ndarray, batch: int = 64):
  enc = jax.jit(lambda v, x: vae.apply(v, x, method="encode"))
  outs = [enc(vae_vars, jnp.asarray(x[s:s + batch])) for s in range(0, len(x), batch)]
  return (np.concatenate([np.asarray(m) for m, _ in outs]),
          np.concatenate([np.asarray(lv) for _, lv in outs]))


def pretrain_vae(ctx: RunContext, images_u8: np.ndarray):
  """The small VAE from scratch; its scaling factor is 1 / std of the train posterior means
  (how SD's 0.18215 was chosen)."""
  config = ctx.config
  v, key = config.diffusion.vae, ctx.keys["vae"]
  cfg = vae_config(config)
  model = vae_lib.AutoencoderKL(cfg)
  steps, b, n = int(v.steps), int(v.batch_size), len(images_u8)
  opt = _opt(float(v.lr), steps)
  step = _Step(functools.partial(edge.vae_pretrain_step, vae=model, opt=opt,
                                 kl_weight=float(v.kl_weight)), opt)
  mode = str(config.edge.vae_input)

  def batch_fn(i):
    idx = host_rng(key, 1, i).choice(n, b, replace=False)
    return jnp.asarray(edge.to_vae_input(images_u8[idx], mode))
  params = numpy_init(vae_lib.param_template(cfg), host_rng(key, 2))
  params = _param_loop(ctx, "edge_vae", params, step, batch_fn, steps,
                       jax.random.fold_in(key, 0))
  mean, _ = _encode_all(model, params, edge.to_vae_input(images_u8[:512], mode))
  return model, params, float(np.float32(1.0 / np.std(mean)))


def pretrain_unet(ctx: RunContext, images_u8: np.ndarray, table: np.ndarray, vae, vae_vars,
                  scale: float):
  """The small text-conditioned U-Net from scratch (DDPM loss, 10 % null captions)."""
  config, data = ctx.config, ctx.data
  u, key = config.diffusion.unet, ctx.keys["unet"]
  f = 2 ** (len(vae.config.block_out_channels) - 1)
  cfg = unet_config(config, data.image_size // f, vae.config.latent_channels, table.shape[1])
  model = unet_lib.UNet2DConditionModel(cfg)
  steps, b = int(u.steps), int(u.batch_size)
  means, logvars = _encode_all(vae, vae_vars, edge.to_vae_input(images_u8,
                                                                str(config.edge.vae_input)))
  n = len(means)
  index = data.train.image_index
  order = np.argsort(index, kind="stable")
  starts = np.searchsorted(index[order], np.arange(n + 1))
  null = jnp.zeros((1, 1, table.shape[1]), jnp.float32)
  opt = _opt(float(u.lr), steps)
  step = _Step(functools.partial(edge.ddpm_pretrain_step, unet=model,
                                 schedule=sched.ScheduleConfig(), opt=opt, scaling_factor=scale,
                                 p_uncond=float(u.p_uncond)), opt)

  def batch_fn(i):
    rs = host_rng(key, 1, i)
    idx = rs.choice(n, b, replace=False)
    pick = rs.integers(0, 1 << 30, b)
    caps = order[starts[idx] + pick % (starts[idx + 1] - starts[idx])]  # one caption per image
    return {"mean": jnp.asarray(means[idx]), "logvar": jnp.asarray(logvars[idx]),
            "context": jnp.asarray(table[caps][:, None, :]), "null": null}
  params = numpy_init(unet_lib.param_template(cfg, 1), host_rng(key, 2))
  params = _param_loop(ctx, "edge_unet", params, step, batch_fn, steps,
                       jax.random.fold_in(key, 0))
  return model, params
