"""The driver: stages in order, each skipped when its output in the workdir is complete.

    squeeze   train (or load) the teachers  -> W/teacher/ (one) or W/teachers/<name>/ (several),
              each {variables/, card.json}                         (jdd.stages.teachers)
    recover   the method's recover stage    -> W/export/{images,labels,...}.npy, grid.png
    relabel   the label source of the set   -> W/export/soft_labels.npy when labels are stored
                                                                   (jdd.stages.relabel)
    evaluate  students on the distilled set, several seeds, and on a random real subset of
              the same budget (the baseline every DD paper reports) -> W/results.json
                                                                   (jdd.stages.evaluate)

A checkpoint in the workdir means resume: a run killed at any moment and restarted with the same
command continues from its last checkpoint and ends with the same distilled set, bit for bit,
because every random draw is `fold_in(key, step)` of the config's seed.

How a method plugs in
---------------------
`METHODS` maps `config.method` to the method's recover stage, a function

    recover_stage(ctx: jdd.stages.context.StageContext) -> jdd.stages.context.DistilledSet

`ctx` carries `config`, `workdir`, `data` (jdd.data.ClassificationData), `teachers` (a list of
`Teacher(name, model, variables, card)` in `config.teacher_names` order; SRe2L configs name
one `config.teacher`), `keys` (one base key per purpose, `jdd.stages.context.KEY_NAMES`),
`writer` (clu), `mesh`, `budget` (for `debug.interrupt_after`) and
`loop(stage, state, step_fn, batch_fn, num_steps, key)`, which runs a jitted
`step_fn(state, batch, fold_in(key, s))` from the stage's last Orbax checkpoint to `num_steps`,
checkpointing every `config.checkpoint_every` steps. The stage writes its files under
`W/export/` (`jdd.stages.recover.export_dir`), writing `images.npy` last as its done-marker,
and returns the uint8 instances a student trains on, their labels, which export files are the
stored budget and which are derived, and extra manifest fields. Pixel-group methods reuse
`jdd.stages.recover.pixel_groups_stage` (SRe2L); INFER has its own (`jdd.methods.infer`).

Labels are chosen independently by `config.relabel.mode` through `jdd.stages.relabel.BUILDERS`
('stored', 'online': FKD; 'static', 'dynamic': INFER); a builder returns a
`jdd.labels.source.LabelSource` that student training consumes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time

import jax
import ml_collections

import jdd
from jdd import checkpoint, mesh as mesh_lib, reporting
from jdd.data import load_classification
from jdd.methods import fadrm, infer, sre2l
from jdd.stages import evaluate as evaluate_stage, recover as recover_stage, relabel, teachers
from jdd.stages.context import (Budget, SimulatedInterruption, StageContext, Teacher,
                                checkpointed_loop, make_keys)
from jdd.stages.evaluate import random_subset, write_manifest
from jdd.stages.teachers import load_teacher

METHODS = {
    "sre2l": functools.partial(recover_stage.pixel_groups_stage, sre2l),
    "infer": infer.recover_stage,
    "fadrm": fadrm.recover_stage,
}

__all__ = ["METHODS", "SimulatedInterruption", "Teacher", "load_teacher", "random_subset",
           "run", "write_manifest"]


def make_context(config, workdir: str, data=None, mesh=None, writer=None) -> StageContext:
  """The context every stage reads (teachers empty until squeeze fills them)."""
  budget = Budget(int(config.debug.interrupt_after))
  writer = writer or reporting.create_writer(workdir)
  loop = lambda stage, state, step_fn, batch_fn, num_steps, key: checkpointed_loop(
      stage, workdir, state, step_fn, batch_fn, num_steps, key, config, writer, budget)
  return StageContext(config=config, workdir=workdir,
                      data=data if data is not None else load_classification(config.dataset),
                      teachers=[], keys=make_keys(int(config.seed)), writer=writer,
                      mesh=mesh or mesh_lib.make_mesh(config.get("num_devices") or None),
                      budget=budget, loop=loop)


def _baseline_ipc(config) -> int:
  """A random real subset at the distilled set's budget: IPC images per class."""
  return int(config.recover.ipc)


# Image-text methods run the image-text driver (caption data, experts, retrieval evaluation).
IMAGE_TEXT_METHODS = ("experts", "mttvl", "lors", "repblend", "edge")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage of `config` in `workdir` (resuming) and returns the results dict."""
  if config.method in IMAGE_TEXT_METHODS:
    from jdd import edge_pipeline, image_text  # EDGE: the image-text stages plus its own
    return (edge_pipeline if config.method == "edge" else image_text).run(config, workdir)
  if config.method not in METHODS:
    raise ValueError(f"config.method={config.method!r} is not one of "
                     f"{sorted(METHODS) + list(IMAGE_TEXT_METHODS)}")
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  checkpoint.atomic_write_json(os.path.join(workdir, "config.json"),
                               json.loads(config.to_json_best_effort()))
  teachers.teacher_specs(config)  # a malformed teacher list fails before any data is read
  mesh = mesh_lib.make_mesh(config.get("num_devices") or None)
  print(f"[jdd] {config.method} on {config.dataset.name}; devices: {mesh.shape['data']} x "
        f"{jax.devices()[0].platform}; workdir {workdir}", flush=True)
  ctx = make_context(config, workdir, mesh=mesh)
  data = ctx.data
  with jax.set_mesh(mesh) if hasattr(jax, "set_mesh") else contextlib.nullcontext():
    ctx.teachers = teachers.squeeze(ctx)
    distilled = METHODS[config.method](ctx)
    edir = recover_stage.export_dir(workdir)
    source = relabel.label_source(ctx, "distilled", distilled.images, edir)
    manifest = write_manifest(ctx, distilled, source)
    summary = teachers.summary(ctx.teachers)
    results = {"jdd_version": jdd.__version__, "method": config.method,
               "dataset": data.name, "ipc": int(config.recover.ipc),
               "num_images": int(len(distilled.images)), "val_source": data.val_source,
               "teacher": {k: summary[0].get(k) for k in ("arch", "val_top1", "test_top1")},
               "teachers": summary, "labels": config.relabel.mode,
               "student": dict(config.evaluate.student), **distilled.extra}
    results["distilled"] = evaluate_stage.evaluate_set(ctx, "distilled", distilled.images,
                                                       source)
    if config.evaluate.baseline:
      subset = random_subset(data, _baseline_ipc(config), ctx.keys["baseline"])
      source_b = relabel.label_source(ctx, "random_subset", subset,
                                      os.path.join(workdir, "baseline"))
      results["random_subset"] = evaluate_stage.evaluate_set(ctx, "random_subset", subset,
                                                             source_b)
  results["manifest"] = {k: manifest[k] for k in ("bytes", "stored_files", "derived_files",
                                                  "soft_labels")}
  results["label_bytes"] = manifest["bytes"]["labels"]
  results["image_bytes"] = manifest["bytes"]["images"]
  results["wall_seconds_this_process"] = round(time.time() - t0, 1)
  checkpoint.atomic_write_json(os.path.join(workdir, "results.json"), results)
  ctx.writer.flush()
  _print_summary(results)
  return results


def _print_summary(results):
  def fmt(r):
    return (f"{r['test_top1_mean']:.2f} ± {r['test_top1_std']:.2f}% "
            f"(val-selected; final-epoch {r['reference_protocol_final_epoch_test_top1_mean']:.2f}%)")
  print(f"\n== {results['method']} on {results['dataset']}, {results['ipc']} images per class "
        f"budget ({results['num_images']} training instances), "
        f"{results['distilled']['num_seeds']} seeds, {results['labels']} labels ==")
  print(f"distilled set  test top-1: {fmt(results['distilled'])}")
  if "random_subset" in results:
    print(f"random subset  test top-1: {fmt(results['random_subset'])}")
  for t in results["teachers"]:
    if t.get("test_top1") is not None:
      print(f"teacher {t['name']} ({t['arch']}) test top-1: {t['test_top1'] * 100:.2f}%")
  print(f"bytes: images {results['image_bytes']}, labels {results['label_bytes']}", flush=True)
