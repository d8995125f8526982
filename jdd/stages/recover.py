"""Recover for methods that optimise pixels in independent class batches (SRe2L).

The method module supplies pure functions (`hparams_from_config`, `group_targets`, `init`,
`step`, `to_uint8`); this stage runs them in rounds of `recover.groups_per_step` class batches,
one checkpointed loop per round, and exports the set class-major. It uses the first teacher of
the config. Methods with another recover structure (INFER's compensators, FADRM's stages)
provide their own `recover_stage(ctx)` instead.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jdd import checkpoint, mesh as mesh_lib, reporting
from jdd.stages.context import DistilledSet, StageContext


def export_dir(workdir: str) -> str:
  return os.path.join(workdir, "export")


def pixel_groups_stage(method, ctx: StageContext) -> DistilledSet:
  """Runs `method`'s recover in rounds of `groups_per_step` class batches."""
  config, workdir, data, mesh = ctx.config, ctx.workdir, ctx.data, ctx.mesh
  edir = export_dir(workdir)
  if os.path.exists(os.path.join(edir, "images.npy")):
    print("[recover] distilled images already exported: skipped", flush=True)
    return DistilledSet(np.load(os.path.join(edir, "images.npy")),
                        np.load(os.path.join(edir, "labels.npy")))
  teacher = ctx.teachers[0]
  rc = config.recover
  hp = method.hparams_from_config(rc, data.mean, data.std)
  targets = method.group_targets(data.num_classes, int(rc.classes_per_batch), int(rc.ipc))
  num_groups = len(targets)
  per_round = min(int(rc.groups_per_step), num_groups)
  teacher_variables = mesh_lib.replicate(teacher.variables, mesh)
  step = jax.jit(functools.partial(method.step, model=teacher.model, hp=hp))
  rounds_dir = os.path.join(workdir, "recover_rounds")
  finished = []
  for r, start in enumerate(range(0, num_groups, per_round)):
    out = os.path.join(rounds_dir, f"round{r:05d}.npy")
    if os.path.exists(out):
      finished.append(np.load(out))
      continue
    group_ids = np.arange(start, min(start + per_round, num_groups), dtype=np.int32)
    batch = {"targets": mesh_lib.shard(jnp.asarray(targets[group_ids]), mesh),
             "group_ids": mesh_lib.shard(jnp.asarray(group_ids), mesh)}
    state = method.init(ctx.keys["recover_init"], jnp.asarray(group_ids), targets.shape[1],
                        data.image_shape, hp)
    state = state.replace(images=mesh_lib.shard(state.images, mesh, axes=(0, 1)))
    state = ctx.loop(f"recover_round{r:05d}", state,
                     lambda st, b, k: step(st, b, k, teacher_variables), lambda i: batch,
                     hp.iterations, ctx.keys["recover"])
    images = method.to_uint8(jax.device_get(state.images), data.mean, data.std)
    checkpoint.atomic_save_npy(out, images)
    finished.append(images)
  # Order the set class-major: image i of class c at c * ipc + i.
  groups = np.concatenate(finished)            # (G, B, H, W, C)
  labels = np.asarray(targets).reshape(-1)
  images = groups.reshape(-1, *groups.shape[2:])
  order = np.argsort(labels, kind="stable")
  images, labels = images[order], labels[order].astype(np.int32)
  checkpoint.atomic_save_npy(os.path.join(edir, "labels.npy"), labels)
  save_grid(ctx, images, int(rc.ipc), hp.iterations)
  checkpoint.atomic_save_npy(os.path.join(edir, "images.npy"), images)  # last: marks done
  return DistilledSet(images, labels)


def save_grid(ctx: StageContext, images: np.ndarray, per_row: int, step: int,
              name: str = "grid") -> None:
  grid = reporting.image_grid(images, nrow=per_row)
  reporting.save_png(os.path.join(export_dir(ctx.workdir), f"{name}.png"), grid)
  ctx.writer.write_images(step, {f"synthetic_set/{name}": grid[None]})
