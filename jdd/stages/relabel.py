"""Relabel: builds the label source of a set from `config.relabel.mode`, storing what it stores.

    'stored'   FKD teacher logits per (epoch, batch), float16     -> <dir>/soft_labels.npy
    'online'   FKD labels, the teachers run during student training (nothing stored)
    'static'   INFER: one teacher-ensemble logit vector per image -> <dir>/soft_labels.npy
    'dynamic'  INFER: the teacher ensemble online on every augmented batch (nothing stored)

With several teachers every mode uses all of them, their logits averaged. A stored file is the
stage's marker: it exists only when complete (atomic write), so a rerun skips it. A new label
kind (e.g. FADRM's BSSL) is one more entry in `BUILDERS`.
"""

from __future__ import annotations

import functools
import os

import jax.numpy as jnp
import numpy as np

from jdd import checkpoint, reporting
from jdd.labels import fkd, infer as infer_labels
from jdd.labels.source import Ensemble, LabelSource
from jdd.stages import teachers as teachers_lib
from jdd.stages.context import StageContext


def label_teachers(ctx: StageContext):
  """The teachers a label source averages: `relabel.teacher_names` when the config has it,
  else the method's `teacher_names` (or the single teacher)."""
  return teachers_lib.ordered(ctx, ctx.config.relabel.get("teacher_names") or None)


def _ensemble(ctx: StageContext):
  ts = label_teachers(ctx)
  return Ensemble(tuple(t.model for t in ts)), tuple(t.variables for t in ts)


def _fkd_augment(ctx):
  data = ctx.data
  return functools.partial(fkd.augmented_batch, cfg=ctx.config.relabel, mean=data.mean,
                           std=data.std)


def _online(ctx: StageContext, kind: str, description: str) -> LabelSource:
  ensemble, variables = _ensemble(ctx)
  data = ctx.data
  fn = functools.partial(infer_labels.online_batch_fn, ensemble=ensemble, cfg=ctx.config.relabel,
                         mean=data.mean, std=data.std, aug_key=ctx.keys["relabel_aug"])
  return LabelSource(kind, fn, operands=variables, description=description)


def fkd_stored(ctx: StageContext, name: str, images: np.ndarray, out_dir: str) -> LabelSource:
  path = os.path.join(out_dir, "soft_labels.npy")
  if os.path.exists(path):
    print(f"[relabel:{name}] soft labels exist: skipped", flush=True)
    soft = np.load(path)
  else:
    ensemble, variables = _ensemble(ctx)
    epochs = int(ctx.config.evaluate.epochs)
    batch = int(min(ctx.config.evaluate.batch_size, len(images)))
    progress = reporting.Progress(f"relabel:{name}", epochs, every=max(1, epochs // 5))
    soft = fkd.compute_soft_labels(
        ensemble, variables, images, epochs=epochs, batch_size=batch,
        order_key=ctx.keys["relabel_order"], aug_key=ctx.keys["relabel_aug"],
        cfg=ctx.config.relabel, mean=ctx.data.mean, std=ctx.data.std, progress=progress)
    checkpoint.atomic_save_npy(path, soft)
  aug = _fkd_augment(ctx)
  aug_key = ctx.keys["relabel_aug"]

  def batch_fn(operands, batch):
    del operands
    x = aug(aug_key, batch["epoch"], batch["k"], batch["images"])
    return x, batch["teacher_logits"]

  return LabelSource(
      "stored", batch_fn, host_fields=lambda e, k, idx: {"teacher_logits": jnp.asarray(soft[e, k])},
      files=(path,), description="stored: teacher logits per (epoch, batch), float16; crops, "
      "flips and mixes re-derived from the seed")


def fkd_online(ctx, name, images, out_dir) -> LabelSource:
  del name, images, out_dir
  return _online(ctx, "online", "online: the teacher runs during student training (no label "
                 "bytes)")


def infer_static(ctx: StageContext, name: str, images: np.ndarray, out_dir: str) -> LabelSource:
  path = os.path.join(out_dir, "soft_labels.npy")
  if os.path.exists(path):
    print(f"[relabel:{name}] static labels exist: skipped", flush=True)
    logits = np.load(path)
  else:
    ts = label_teachers(ctx)
    print(f"[relabel:{name}] static labels of {len(images)} images from {len(ts)} teachers",
          flush=True)
    logits = infer_labels.static_logits([t.model for t in ts], [t.variables for t in ts],
                                        images, ctx.data.mean, ctx.data.std)
    checkpoint.atomic_save_npy(path, logits)
  fn = functools.partial(infer_labels.static_batch_fn, cfg=ctx.config.relabel,
                         mean=ctx.data.mean, std=ctx.data.std, aug_key=ctx.keys["relabel_aug"])
  return LabelSource(
      "static", fn, host_fields=lambda e, k, idx: {"image_logits": jnp.asarray(logits[idx])},
      files=(path,), description="static: one float32 logit vector per image (mean of the "
      f"{len(label_teachers(ctx))} teachers on the un-augmented image), mixed in logit space")


def infer_dynamic(ctx, name, images, out_dir) -> LabelSource:
  del name, images, out_dir
  return _online(ctx, "dynamic", f"dynamic: the {len(label_teachers(ctx))} teachers run on every "
                 "augmented batch, logits averaged (no label bytes)")


BUILDERS = {"stored": fkd_stored, "online": fkd_online, "static": infer_static,
            "dynamic": infer_dynamic}


def label_source(ctx: StageContext, name: str, images: np.ndarray, out_dir: str) -> LabelSource:
  mode = ctx.config.relabel.mode
  if mode not in BUILDERS:
    raise ValueError(f"config.relabel.mode={mode!r} is not one of {sorted(BUILDERS)}")
  return BUILDERS[mode](ctx, name, images, out_dir)
