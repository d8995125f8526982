"""EDGE's fine-tuning stage: the method's losses (`jdd.methods.edge.train_step`) on real
(image, caption) pairs, one checkpointed loop (`jdd.loop`, W/checkpoints/edge_finetune) over the
DiffFit parameters of the U-Net of either backend (`jdd.stages.edge_backends`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jdd.data import pipeline
from jdd.loop import RunContext, host_rng
from jdd.methods import edge
from jdd.stages import edge_backends
from jdd.stages.edge_backends import EdgeSetup


def hparams(config) -> edge.EdgeHparams:
  ec = config.edge
  return edge.EdgeHparams(lr=float(ec.lr), contrastive_lambda=float(ec.contrastive_lambda),
                          diversity_lambda=float(ec.diversity_lambda),
                          mse_lambda=float(ec.mse_lambda), temperature=float(ec.temperature),
                          unet_input=str(ec.unet_input),
                          rescale_before_decode=bool(ec.rescale_before_decode),
                          clip_input=str(ec.clip_input))


def finetune_steps(config, data) -> int:
  ec = config.edge
  return int(ec.steps) or int(ec.epochs) * max(1, len(data.train) // int(ec.batch_size))


def finetune(ctx: RunContext, setup: EdgeSetup):
  """EDGE's fine-tuning on real (image, caption) pairs, checkpointed and resumable; each
  batch's images are read from disk (`jdd.data.pipeline`) while the previous step runs."""
  config, data = ctx.config, ctx.data
  ec = config.edge
  hp = dataclasses.replace(hparams(config), scaling_factor=setup.scaling_factor)
  captions = list(data.train.captions)
  b, n = int(ec.batch_size), len(captions)
  ids_all, mask_all = setup.tokenize(captions)
  key = ctx.keys["finetune"]
  size = int(ec.finetune_size) or data.image_size
  edge_backends.check_latent_size(setup.models, size)
  files = data.files("train")
  if size != data.image_size:
    files = pipeline.ImageFiles(files.paths, size, threads=files.threads, cache_bytes=0)

  def batch_fn(i):
    cap = host_rng(key, 1, i).choice(n, b, replace=False)
    imgs = files.uint8(data.train.image_index[cap])
    return {"images": jnp.asarray(edge.to_vae_input(imgs, str(ec.vae_input))),
            "input_ids": jnp.asarray(ids_all[cap]), "attention_mask": jnp.asarray(mask_all[cap])}

  step = jax.jit(functools.partial(edge.train_step, models=setup.models, hp=hp))
  frozen = jax.tree.map(jnp.asarray, setup.frozen)
  state = edge.init(jax.tree.map(jnp.asarray, setup.unet_vars), hp)
  steps = finetune_steps(config, data)
  with pipeline.Prefetcher(batch_fn, steps) as ahead:
    state = ctx.loop("edge_finetune", state, lambda s, batch, k: step(s, batch, k, frozen),
                     ahead.get, steps, jax.random.fold_in(key, 0))
  return state.unet
