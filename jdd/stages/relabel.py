"""Relabel: builds the label source of a set from `config.relabel.mode`, storing what it stores.

    'stored'   FKD teacher logits per (epoch, batch), float16     -> <dir>/soft_labels.npy
    'online'   FKD labels, the teachers run during student training (nothing stored)
    'static'   INFER: one teacher-ensemble logit vector per image -> <dir>/soft_labels.npy
    'dynamic'  INFER: the teacher ensemble online on every augmented batch (nothing stored)
    'bssl'     FADRM: BSSL logits per (epoch, batch), teachers in train mode on the student's
               `relabel.num_splits` micro-batches, mixed by `relabel.teacher_weights`, float16
                                                                  -> <dir>/soft_labels.npy
    'bssl_online'  the same labels computed during student training (nothing stored)

With several teachers every mode uses all of them, their logits averaged. A stored file is the
stage's marker: it exists only when complete (atomic write), so a rerun skips it. A new label
kind is one more entry in `BUILDERS`. With several processes the stored modes compute epoch e
on process e mod N (`jdd.distributed.spread_arrays`; an epoch's labels depend on the relabel
keys and e alone) and every process receives all of them.

Stored labels cover the epochs and batch size of the set's `Plan`
(`jdd.evaluation.classification.make_plan`): a random subset smaller than the distilled set it
is compared with trains more passes of the same step budget, and gets labels for all of them.

Besides the method's labels, the evaluation asks for two variants of every set (DD-Ranking's
protocol, docs/evaluation.md): `hard_source`, the set's class labels as one-hot targets under
the same crops, flips and mixes (no teacher); and the method's labels without augmentation
(`without_augmentation`: no crop, no flip, no mix), for the augmentation-robust score.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jdd import checkpoint, distributed, reporting
from jdd.data import augment, normalize
from jdd.labels import bssl as bssl_lib, fkd, infer as infer_labels
from jdd.labels.source import Ensemble, LabelSource
from jdd.stages import teachers as teachers_lib
from jdd.loop import RunContext


def label_teachers(ctx: RunContext):
  """The teachers a label source averages: `relabel.teacher_names` when the config has it,
  else the method's `teacher_names` (or the single teacher)."""
  return teachers_lib.ordered(ctx, ctx.config.relabel.get("teacher_names") or None)


def _ensemble(ctx: RunContext):
  ts = label_teachers(ctx)
  return Ensemble(tuple(t.model for t in ts)), tuple(t.variables for t in ts)


def _fkd_augment(ctx, rc):
  data = ctx.data
  return functools.partial(fkd.augmented_batch, cfg=rc, mean=data.mean, std=data.std)


def _online(ctx: RunContext, rc, kind: str, description: str) -> LabelSource:
  ensemble, variables = _ensemble(ctx)
  data = ctx.data
  fn = functools.partial(infer_labels.online_batch_fn, ensemble=ensemble, cfg=rc,
                         mean=data.mean, std=data.std, aug_key=ctx.keys["relabel_aug"])
  return LabelSource(kind, fn, operands=variables, description=description)


def _stored_soft_labels(ctx: RunContext, name: str, images: np.ndarray, out_dir: str, plan, rc,
                        what: str, compute) -> tuple[str, np.ndarray]:
  """W/.../soft_labels.npy: loaded when complete, else `compute(...)` over the plan's epochs
  and batch size with the relabel keys, then saved atomically."""
  path = os.path.join(out_dir, "soft_labels.npy")
  if os.path.exists(path):
    print(f"[relabel:{name}] {what} exist: skipped", flush=True)
    return path, np.load(path)
  epochs, batch = int(plan.epochs), int(plan.batch_size)
  # Epoch e on process e mod N (keyed by e alone), then every process has every epoch.
  spread = distributed.array_spreader(
      (fkd.steps_per_epoch(len(images), batch), batch, int(ctx.data.num_classes)), np.float16)
  mine = len(range(distributed.process_index(), epochs, distributed.process_count()))
  progress = reporting.Progress(f"relabel:{name}", max(1, mine),
                                every=max(1, epochs // 5))
  soft = compute(images, epochs=epochs, batch_size=batch, order_key=ctx.keys["relabel_order"],
                 aug_key=ctx.keys["relabel_aug"], cfg=rc, mean=ctx.data.mean,
                 std=ctx.data.std, progress=progress, spread=spread)
  checkpoint.atomic_save_npy(path, soft)
  return path, soft


def fkd_stored(ctx: RunContext, name: str, images: np.ndarray, out_dir: str, plan,
               rc) -> LabelSource:
  def compute(images, **kw):
    ensemble, variables = _ensemble(ctx)
    return fkd.compute_soft_labels(ensemble, variables, images, **kw)

  path, soft = _stored_soft_labels(ctx, name, images, out_dir, plan, rc, "soft labels", compute)
  aug = _fkd_augment(ctx, rc)
  aug_key = ctx.keys["relabel_aug"]

  def batch_fn(operands, batch):
    del operands
    x = aug(aug_key, batch["epoch"], batch["k"], batch["images"])
    return x, batch["teacher_logits"]

  return LabelSource(
      "stored", batch_fn, host_fields=lambda e, k, idx: {"teacher_logits": jnp.asarray(soft[e, k])},
      files=(path,), description="stored: teacher logits per (epoch, batch), float16; crops, "
      "flips and mixes re-derived from the seed")


def fkd_online(ctx, name, images, out_dir, plan, rc) -> LabelSource:
  del name, images, out_dir, plan
  return _online(ctx, rc, "online", "online: the teacher runs during student training (no "
                 "label bytes)")


def infer_static(ctx: RunContext, name: str, images: np.ndarray, out_dir: str, plan,
                 rc) -> LabelSource:
  del plan
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
  fn = functools.partial(infer_labels.static_batch_fn, cfg=rc, mean=ctx.data.mean,
                         std=ctx.data.std, aug_key=ctx.keys["relabel_aug"])
  return LabelSource(
      "static", fn, host_fields=lambda e, k, idx: {"image_logits": jnp.asarray(logits[idx])},
      files=(path,), description="static: one float32 logit vector per image (mean of the "
      f"{len(label_teachers(ctx))} teachers on the un-augmented image), mixed in logit space")


def infer_dynamic(ctx, name, images, out_dir, plan, rc) -> LabelSource:
  del name, images, out_dir, plan
  return _online(ctx, rc, "dynamic", f"dynamic: the {len(label_teachers(ctx))} teachers run on "
                 "every augmented batch, logits averaged (no label bytes)")


def _bssl_setup(ctx: RunContext):
  """(models, variables, weights, num_splits, train_mode) of the BSSL mixture; refuses a
  student whose gradient-accumulation micro-batches differ from the labelling chunks."""
  rc, ec = ctx.config.relabel, ctx.config.evaluate
  splits = int(rc.get("num_splits", 2))
  accum = int(ec.get("grad_accum_steps", 1))
  if accum != splits:
    raise ValueError(f"relabel.num_splits={splits} but evaluate.grad_accum_steps={accum}: BSSL "
                     "labels each micro-batch of the student separately, so they must be equal")
  ts = label_teachers(ctx)
  weights = bssl_lib.mixture_weights(len(ts), tuple(rc.get("teacher_weights") or ()) or None)
  return (tuple(t.model for t in ts), tuple(t.variables for t in ts), weights, splits,
          bool(rc.get("train_mode", True)))


def _bssl_description(ts, weights, splits, train_mode, where) -> str:
  mode = "train-mode" if train_mode else "eval-mode"
  return (f"bssl {where}: {mode} teachers {[t.name for t in ts]} on {splits} micro-batches per "
          f"batch, logits mixed with weights {[round(float(w), 6) for w in weights]}; crops, "
          "flips and CutMix re-derived from the seed")


def bssl_stored(ctx: RunContext, name: str, images: np.ndarray, out_dir: str, plan,
                rc) -> LabelSource:
  models, variables, weights, splits, train_mode = _bssl_setup(ctx)
  compute = functools.partial(bssl_lib.compute_soft_labels, models, variables, num_splits=splits,
                              weights=weights, train_mode=train_mode)
  path, soft = _stored_soft_labels(ctx, name, images, out_dir, plan, rc, "BSSL labels", compute)
  aug = _fkd_augment(ctx, rc)
  aug_key = ctx.keys["relabel_aug"]

  def batch_fn(operands, batch):
    del operands
    return aug(aug_key, batch["epoch"], batch["k"], batch["images"]), batch["teacher_logits"]

  return LabelSource(
      "bssl", batch_fn,
      host_fields=lambda e, k, idx: {"teacher_logits": jnp.asarray(soft[e, k])}, files=(path,),
      description=_bssl_description(label_teachers(ctx), weights, splits, train_mode,
                                    "stored: logits per (epoch, batch), float16"))


def bssl_online(ctx: RunContext, name: str, images: np.ndarray, out_dir: str, plan,
                rc) -> LabelSource:
  del name, images, out_dir, plan
  models, variables, weights, splits, train_mode = _bssl_setup(ctx)
  aug = _fkd_augment(ctx, rc)
  aug_key = ctx.keys["relabel_aug"]

  def batch_fn(operands, batch):
    x = aug(aug_key, batch["epoch"], batch["k"], batch["images"])
    return x, bssl_lib.bssl_logits(models, operands, x, num_splits=splits, weights=weights,
                                   train_mode=train_mode)

  return LabelSource("bssl_online", batch_fn, operands=variables, description=_bssl_description(
      label_teachers(ctx), weights, splits, train_mode, "online (no label bytes)"))


BUILDERS = {"stored": fkd_stored, "online": fkd_online, "static": infer_static,
            "dynamic": infer_dynamic, "bssl": bssl_stored, "bssl_online": bssl_online}


def without_augmentation(rc):
  """The relabel config with no crop, no flip and no mix (DD-Ranking's 'without augmentation');
  every other field (teachers, splits, weights) unchanged."""
  out = rc.copy_and_resolve_references()
  with out.unlocked():
    out.crop, out.flip, out.mix = "none", False, "none"
  return out


def label_source(ctx: RunContext, name: str, images: np.ndarray, out_dir: str, plan,
                 with_augmentation: bool = True) -> LabelSource:
  """The method's soft labels (`config.relabel.mode`) for a set trained by `plan`;
  with_augmentation=False: the same labels on un-augmented batches."""
  mode = ctx.config.relabel.mode
  if mode not in BUILDERS:
    raise ValueError(f"config.relabel.mode={mode!r} is not one of {sorted(BUILDERS)}")
  rc = ctx.config.relabel if with_augmentation else without_augmentation(ctx.config.relabel)
  return BUILDERS[mode](ctx, name, images, out_dir, plan, rc)


def hard_batch_fn(operands, batch: dict, *, num_classes, cfg, mean, std, aug_key):
  """(x, target probabilities): the batch augmented as the soft labels' batches are, the
  one-hot class labels (`batch['labels']`) mixed with the batch's Mixup / CutMix weight."""
  del operands
  x = normalize(batch["images"], mean, std)
  x, params = augment.augment_for_relabel(
      augment.relabel_key(aug_key, batch["epoch"], batch["k"]), x, cfg,
      pad_value=augment.normalized_zero(mean, std), return_params=True)
  onehot = jax.nn.one_hot(batch["labels"], num_classes, dtype=jnp.float32)
  return x, infer_labels.mix_logits(onehot, params, cfg.mix)


def hard_source(ctx: RunContext, labels: np.ndarray, with_augmentation: bool = True
                ) -> LabelSource:
  """Hard labels (no teacher): the set's classes, with the method's augmentation or none."""
  rc = ctx.config.relabel if with_augmentation else without_augmentation(ctx.config.relabel)
  fn = functools.partial(hard_batch_fn, num_classes=ctx.data.num_classes, cfg=rc,
                         mean=ctx.data.mean, std=ctx.data.std, aug_key=ctx.keys["relabel_aug"])
  labels = np.asarray(labels, np.int32)
  return LabelSource("hard", fn, host_fields=lambda e, k, idx: {"labels": labels[idx]},
                     description="hard: the set's class labels, one-hot (mixed with the "
                     "batch's Mixup/CutMix weight), no teacher", target="probs")
