"""INFER's recover stage: J real images per class plus one compensator per (class group, slot,
teacher), each group's compensators optimised side by side in rounds (`jdd.methods.infer` is
the maths and the budget arithmetic).

Real images are J per class, class-major, drawn with the `recover_init` key (the indices go to
`W/recover/real_init.json`). Teacher m serves compensator m of every (group, slot); each
teacher's units run in rounds of `recover.groups_per_step`, one checkpointed loop per round
(`jdd.loop`), each round's compensators kept in `W/recover_rounds/`. The stored set is the real
images and the compensators; the instances a student trains on are derived from them
(`infer.materialise`).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jdd import checkpoint, mesh as mesh_lib
from jdd.data import normalize
from jdd.loop import RunContext
from jdd.methods import infer
from jdd.stages import distilled as distilled_lib, teachers as teachers_lib
from jdd.stages.distilled import DistilledSet
from jdd.stages.evaluate import random_subset_indices


def _units(budget: infer.CompensatorBudget, teacher_index: int) -> np.ndarray:
  """(G J, 3) rows (global unit id, group, slot) of one teacher, group-major."""
  g, j = np.meshgrid(np.arange(budget.num_groups), np.arange(budget.real_per_class),
                     indexing="ij")
  g, j = g.ravel(), j.ravel()
  uid = (teacher_index * budget.num_groups + g) * budget.real_per_class + j
  return np.stack([uid, g, j], 1).astype(np.int32)


def _init_summary(real_init: dict) -> dict:
  """The real-image draw without its index list (that stays in export/real_init.json)."""
  out = {k: v for k, v in real_init.items() if k != "train_indices"}
  if "train_indices" in real_init:
    out["train_indices"] = "export/real_init.json (class-major, J per class)"
  return out


def recover_stage(ctx: RunContext) -> DistilledSet:
  """Real images + one compensator per (group, slot, teacher) -> W/recover."""
  config, data, mesh = ctx.config, ctx.data, ctx.mesh
  rc = config.recover
  rdir = distilled_lib.recover_dir(ctx.workdir)
  teachers = teachers_lib.ordered(ctx)   # teacher m serves compensator m
  budget = infer.compensator_budget(int(rc.ipc), data.num_classes, len(teachers),
                                    int(rc.classes_per_batch))
  extra = {"infer_budget": dataclasses.asdict(budget),
           "teacher_per_compensator": [t.name for t in teachers]}
  fields = dict(stored=("real_images", "real_labels", "compensators"),
                derived=("images", "labels"), side_files=("grid.png", "real_init.json"))
  if distilled_lib.is_done(ctx.workdir):
    print("[recover] compensators already recovered: skipped", flush=True)
    extra["real_init"] = _init_summary(checkpoint.read_json(os.path.join(rdir, "real_init.json")))
    return distilled_lib.load(ctx.workdir, extra=extra, **fields)
  j, b = budget.real_per_class, budget.classes_per_group
  print(f"[recover] INFER: {j} real images per class, {budget.compensators} compensators "
        f"({len(teachers)} teachers), {budget.instances_per_class} instances per class; "
        f"stored {budget.stored} <= budget {budget.budget} image-sized tensors", flush=True)
  # Real images: J per class, class-major, from the recorded key (or the first J per class
  # of a streamed split).
  if hasattr(data.train, "images"):
    idx = random_subset_indices(data, j, ctx.keys["recover_init"])
    real = data.train.images[idx]
    real_init = {"source": "train split, uniform without replacement per class",
                 "seed": int(config.seed), "key": "fold_in(key(seed), 1) (recover_init)",
                 "train_indices": idx.tolist()}
  else:
    real = data.train.take_per_class(j, data.num_classes).images
    real_init = {"source": "train split, first J images of each class in record order"}
  real = real.reshape(data.num_classes, j, *data.image_shape)
  real_norm = np.asarray(normalize(real, data.mean, data.std), np.float32)
  hp = infer.hparams_from_config(rc, data.mean, data.std)
  per_round = max(1, min(int(rc.groups_per_step), budget.num_groups * j))
  comps = np.zeros((budget.num_groups, j, budget.num_teachers, *data.image_shape), np.float32)
  rounds_dir = os.path.join(ctx.workdir, "recover_rounds")
  for m, teacher in enumerate(teachers):
    units = _units(budget, m)
    tvars = mesh_lib.replicate(teacher.variables, mesh)
    step_fn = jax.jit(functools.partial(infer.step, model=teacher.model, hp=hp),
                      donate_argnums=0)   # the state, as jdd.stages.pixel_groups
    for r, start in enumerate(range(0, len(units), per_round)):
      rows = units[start:start + per_round]
      out = os.path.join(rounds_dir, f"{teacher.name}_round{r:05d}.npy")
      if not os.path.exists(out):
        # (U, B, H, W, C): unit (g, j) sees slot j of every class of group g.
        reals = np.stack([real_norm[g * b:(g + 1) * b, s] for _, g, s in rows])
        targets = np.stack([np.arange(g * b, (g + 1) * b) for _, g, _ in rows]).astype(np.int32)
        batch = {"real": mesh_lib.shard(jnp.asarray(reals), mesh),
                 "targets": mesh_lib.shard(jnp.asarray(targets), mesh),
                 "unit_ids": mesh_lib.shard(jnp.asarray(rows[:, 0]), mesh)}
        state = infer.init(len(rows), data.image_shape, hp)
        state = state.replace(u=mesh_lib.shard(state.u, mesh))
        state = ctx.loop(f"recover_{teacher.name}_round{r:05d}", state,
                         lambda st, bt, k, f=step_fn, v=tvars: f(st, bt, k, v),
                         lambda i, bt=batch: bt, hp.iterations, ctx.keys["recover"])
        checkpoint.atomic_save_npy(out, np.asarray(mesh_lib.fetch(state.u))[:, 0])
      u = np.load(out)
      for (_, g, s), ui in zip(rows, u):
        comps[g, s, m] = ui
  real_flat = real.reshape(-1, *data.image_shape)
  real_labels = np.repeat(np.arange(data.num_classes), j).astype(np.int32)
  images = infer.materialise(real, comps, data.mean, data.std, b)
  labels = np.repeat(np.arange(data.num_classes), budget.instances_per_class).astype(np.int32)
  checkpoint.atomic_write_json(os.path.join(rdir, "real_init.json"), real_init)
  distilled_lib.save(ctx, images, {"real_images": real_flat, "real_labels": real_labels,
                                   "compensators": comps, "labels": labels, "images": images},
                     budget.instances_per_class, hp.iterations)
  extra["real_init"] = _init_summary(real_init)
  return DistilledSet(images, labels, extra=extra, **fields)
