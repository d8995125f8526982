"""Recover for methods that optimise pixels in independent class batches: SRe2L and FADRM.

The set is `recover.ipc` x (classes / `recover.classes_per_batch`) groups, each one image per
class of a class block (`sre2l.group_targets`). Groups are optimised side by side in rounds of
`recover.groups_per_step`; each round is one checkpointed loop (`jdd.loop`) whose result is
kept in `W/recover_rounds/roundNNNNN.npy`, so a killed run redoes at most one round's remaining
steps. The finished set is written class-major to `W/recover/` (`jdd.stages.distilled`).

What differs between methods is a small adapter with the same five members:

    iterations                     steps per round
    init_round(name, group_ids)    the round's initial state (FADRM: the restore template)
    step(state, batch, rng)        one jitted step on every group of the round
    before_step                    a `jdd.loop` hook, or None
    images_uint8(state)            the round's images at full size, uint8

`Sre2lRecover` is here; FADRM's (patch initialisation, stage boundaries, teacher round-robin)
is `jdd.stages.residual_matching.FadrmRecover`.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jdd import checkpoint, mesh as mesh_lib
from jdd.loop import RunContext
from jdd.methods import sre2l
from jdd.stages import distilled as distilled_lib
from jdd.stages.distilled import DistilledSet


class Sre2lRecover:
  """SRe2L's pure functions (`jdd.methods.sre2l`) bound to the run's first teacher."""

  def __init__(self, ctx: RunContext, targets: np.ndarray):
    data = ctx.data
    self.ctx, self.targets = ctx, targets
    self.hp = sre2l.hparams_from_config(ctx.config.recover, data.mean, data.std)
    self.iterations = self.hp.iterations
    teacher = ctx.teachers[0]
    variables = mesh_lib.replicate(teacher.variables, ctx.mesh)
    # The state is donated: the new images and Adam moments reuse the old buffers (the loop
    # never reads a state after stepping it), as PyTorch updates them in place.
    jitted = jax.jit(functools.partial(sre2l.step, model=teacher.model, hp=self.hp),
                     donate_argnums=0)
    self.step = lambda state, batch, rng: jitted(state, batch, rng, variables)
    self.before_step = None
    self.side_files, self.extra = ("grid.png",), {}

  def init_round(self, name: str, group_ids: np.ndarray):
    del name
    data = self.ctx.data
    state = sre2l.init(self.ctx.keys["recover_init"], jnp.asarray(group_ids),
                       self.targets.shape[1], data.image_shape, self.hp)
    return state.replace(images=mesh_lib.shard(state.images, self.ctx.mesh, axes=(0, 1)))

  def images_uint8(self, state) -> np.ndarray:
    return sre2l.to_uint8(mesh_lib.fetch(state.images), self.ctx.data.mean, self.ctx.data.std)


def recover_stage(ctx: RunContext, make_adapter=Sre2lRecover) -> DistilledSet:
  """Runs the adapter's recover in rounds of `groups_per_step` class groups (resuming)."""
  config, data, mesh = ctx.config, ctx.data, ctx.mesh
  rc = config.recover
  targets = sre2l.group_targets(data.num_classes, int(rc.classes_per_batch), int(rc.ipc))
  adapter = make_adapter(ctx, targets)
  if distilled_lib.is_done(ctx.workdir):
    print("[recover] distilled images already recovered: skipped", flush=True)
    return distilled_lib.load(ctx.workdir, side_files=adapter.side_files, extra=adapter.extra)
  num_groups = len(targets)
  per_round = min(int(rc.groups_per_step), num_groups)
  rounds_dir = os.path.join(ctx.workdir, "recover_rounds")
  finished = []
  for r, start in enumerate(range(0, num_groups, per_round)):
    out = os.path.join(rounds_dir, f"round{r:05d}.npy")
    if not os.path.exists(out):
      group_ids = np.arange(start, min(start + per_round, num_groups), dtype=np.int32)
      batch = {"targets": mesh_lib.shard(jnp.asarray(targets[group_ids]), mesh),
               "group_ids": mesh_lib.shard(jnp.asarray(group_ids), mesh)}
      name = f"recover_round{r:05d}"
      state = ctx.loop(name, adapter.init_round(name, group_ids), adapter.step,
                       lambda i, b=batch: b, adapter.iterations, ctx.keys["recover"],
                       before_step=adapter.before_step)
      checkpoint.atomic_save_npy(out, adapter.images_uint8(state))
    finished.append(np.load(out))
  images, labels = distilled_lib.class_major(finished, targets)
  distilled_lib.save(ctx, images, {"labels": labels, "images": images}, int(rc.ipc),
                     adapter.iterations)
  return DistilledSet(images, labels, side_files=adapter.side_files, extra=adapter.extra)
