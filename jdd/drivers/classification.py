"""Decoupled image distillation (SRe2L, INFER, FADRM / FADRM+): squeeze, recover, relabel, export,
evaluate, each skipped when its output in the workdir is complete.

    squeeze   train (or load) the teachers  -> W/teacher/ (one) or W/teachers/<name>/ (several),
              each {variables/, card.json}                         (jdd.stages.teachers)
    recover   the method's recover stage    -> W/recover/ (images.npy last), W/recover_rounds/
              (jdd.stages.pixel_groups: SRe2L, FADRM; jdd.stages.compensators: INFER)
    relabel   the label source of the set   -> W/labels/<set>/soft_labels.npy when labels are
              stored                                               (jdd.stages.relabel)
    export    the set, its labels and a byte manifest -> W/export/, replaced atomically
                                                                   (jdd.export)
    evaluate  students on the distilled set, several seeds, and on a random real subset of
              the same budget (the baseline every DD paper reports) -> W/results.json
                                                                   (jdd.stages.evaluate)

A method plugs in with one entry of `RECOVER`: `recover_stage(ctx) -> DistilledSet`, which
writes its files under `W/recover/` and names which of them are the stored budget and which are
derived. Labels are chosen independently by `config.relabel.mode` (`jdd.stages.relabel`).
"""

from __future__ import annotations

import functools
import json
import os

import jdd
from jdd import export
from jdd.data import load_classification
from jdd.labels.source import LabelSource
from jdd.loop import RunContext
from jdd.stages import (compensators, evaluate as evaluate_stage, pixel_groups, relabel,
                        residual_matching, teachers)
from jdd.stages.distilled import DistilledSet, recover_dir

RECOVER = {
    "sre2l": pixel_groups.recover_stage,
    "infer": compensators.recover_stage,
    "fadrm": functools.partial(pixel_groups.recover_stage,
                               make_adapter=residual_matching.FadrmRecover),
}


def check(config) -> None:
  if config.method not in RECOVER:
    raise ValueError(f"config.method={config.method!r} is not a classification method "
                     f"({sorted(RECOVER)})")
  teachers.teacher_specs(config)  # a malformed teacher list fails before any data is read


def load_data(config):
  return load_classification(config.dataset)


def labels_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, "labels", name)


def run(ctx: RunContext) -> dict:
  config, data, workdir = ctx.config, ctx.data, ctx.workdir
  ctx.teachers = teachers.squeeze(ctx)
  distilled = RECOVER[config.method](ctx)
  source = relabel.label_source(ctx, "distilled", distilled.images,
                                labels_dir(workdir, "distilled"))
  manifest = export_set(ctx, distilled, source)
  summary = teachers.summary(ctx.teachers)
  results = {"jdd_version": jdd.__version__, "method": config.method,
             "dataset": data.name, "ipc": int(config.recover.ipc),
             "num_images": int(len(distilled.images)), "val_source": data.val_source,
             "teacher": {k: summary[0].get(k) for k in ("arch", "val_top1", "test_top1")},
             "teachers": summary, "labels": config.relabel.mode,
             "student": dict(config.evaluate.student), **distilled.extra}
  results["distilled"] = evaluate_stage.evaluate_set(ctx, "distilled", distilled.images, source)
  if config.evaluate.baseline:
    subset = evaluate_stage.random_subset(data, int(config.recover.ipc), ctx.keys["baseline"])
    source_b = relabel.label_source(ctx, "random_subset", subset,
                                    labels_dir(workdir, "random_subset"))
    results["random_subset"] = evaluate_stage.evaluate_set(ctx, "random_subset", subset,
                                                           source_b)
  results["manifest"] = {k: manifest[k] for k in ("bytes", "stored_files", "derived_files",
                                                  "soft_labels")}
  results["label_bytes"] = manifest["bytes"]["labels"]
  results["image_bytes"] = manifest["bytes"]["images"]
  return results


def export_set(ctx: RunContext, distilled: DistilledSet, source: LabelSource) -> dict:
  """W/export: the stage's arrays (stored and derived), its side files and the label files,
  with the byte manifest; skipped when a complete export exists."""
  final = export.export_dir(ctx.workdir)
  export.recover(final)
  if export.is_complete(final):
    return export.read_manifest(final)
  config, data = ctx.config, ctx.data
  src = recover_dir(ctx.workdir)
  label_names = [os.path.basename(p).removesuffix(".npy") for p in source.files]

  def build(entries: dict) -> dict:
    entry = lambda name: export.npy_entry(os.path.join(out, f"{name}.npy"),
                                          entries[f"{name}.npy"])
    stored = {name: entry(name) for name in distilled.stored}
    derived = {name: entry(name) for name in distilled.derived}
    label_files = {name: entry(name) for name in label_names}
    soft_bytes = sum(f["array_bytes"] for f in label_files.values())
    set_bytes = sum(f["array_bytes"] for f in stored.values())
    hard_label_bytes = sum(f["array_bytes"] for k, f in stored.items() if k.endswith("labels"))
    return {
        "jdd_version": jdd.__version__, "method": config.method, "dataset": data.name,
        "num_classes": data.num_classes, "ipc": int(config.recover.ipc),
        "num_images": int(len(distilled.images)), "files": {**stored, **derived, **label_files},
        "stored_files": sorted(stored), "derived_files": sorted(derived),
        "bytes": {"images": set_bytes - hard_label_bytes,
                  "labels": hard_label_bytes + soft_bytes,
                  "soft_labels": soft_bytes,
                  "derived": sum(f["array_bytes"] for f in derived.values())},
        "soft_labels": source.description,
        "normalisation": {"mean": list(data.mean), "std": list(data.std)},
        **distilled.extra,
        "config": json.loads(config.to_json_best_effort()),
    }

  with export.staged(ctx.workdir) as out:
    for name in dict.fromkeys(distilled.stored + distilled.derived):
      export.link(out, f"{name}.npy", os.path.join(src, f"{name}.npy"))
    for name in distilled.side_files:
      export.link(out, name, os.path.join(src, name))
    for path in source.files:
      export.link(out, os.path.basename(path), path)
    out.manifest = build
  return export.read_manifest(final)


def print_summary(results: dict) -> None:
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
