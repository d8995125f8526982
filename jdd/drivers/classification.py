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
    evaluate  students on the distilled set and on random real subsets of the same budget,
              every one with the same optimiser steps, under soft labels, hard labels and
              soft labels without augmentation, several seeds and draws; the paired difference
              with its interval, the ceiling (teacher, full-data student) and DD-Ranking's
              scores -> W/results.json, W/eval/curves.png           (jdd.stages.evaluate)

`evaluate.distill_seeds=N` repeats recover, relabel and the soft-label comparison for the seeds
config.seed + 1 .. + N - 1 (same teachers) under W/distill_seeds/, and reports the spread of the
distilled set's accuracy and of its difference from the random subset over the N sets.

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
from jdd.config import override
from jdd.data import load_classification
from jdd.evaluation import classification as evaluation, curves, ddranking, stats
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
  if not ctx.teachers:   # a distillation-seed run reuses its parent's teachers
    ctx.teachers = teachers.squeeze(ctx)
  ceiling = teachers.full_data_student(ctx)
  distilled = RECOVER[config.method](ctx)
  n = len(distilled.images)
  source = relabel.label_source(ctx, "distilled", distilled.images,
                                labels_dir(workdir, "distilled"),
                                evaluation.make_plan(config.evaluate, n, n))
  manifest = export_set(ctx, distilled, source)
  summary = teachers.summary(ctx.teachers)
  results = {"jdd_version": jdd.__version__, "method": config.method,
             "dataset": data.name, "ipc": int(config.recover.ipc),
             "num_images": n, "val_source": data.val_source,
             "teacher": {k: summary[0].get(k) for k in ("arch", "val_top1", "test_top1")},
             "teachers": summary, "labels": config.relabel.mode,
             "label_description": source.description,
             "student": dict(config.evaluate.student), **distilled.extra}
  ev = evaluate_stage.compare(ctx, distilled.images, distilled.labels, {"soft": source})
  results["evaluation"] = ev
  results["distilled"] = ev["modes"]["soft"]["distilled"]
  if "random_subset" in ev["modes"]["soft"]:
    results["random_subset"] = ev["modes"]["soft"]["random_subset"]
  results["ceiling"] = {"teacher": summary[0]}
  if ceiling is not None:
    results["ceiling"]["full_data_student"] = {
        k: ceiling.get(k) for k in ("arch", "kwargs", "val_top1", "test_top1", "digest",
                                    "same_as_teacher") if k in ceiling}
  results["ddranking"] = ddranking.scores(
      None if ceiling is None else float(ceiling["test_top1"]), _seed_means(ev))
  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  curves.plot({m: {s: b[s]["per_seed"] for s in ("distilled", "random_subset") if s in b}
               for m, b in ev["modes"].items()}, evaluate_stage.MODE_NAMES,
              os.path.join(workdir, "eval", "curves.png"))
  if int(config.evaluate.get("distill_seeds", 1)) > 1:
    results["distill_seeds"] = distill_seeds(ctx, results)
  results["manifest"] = {k: manifest[k] for k in ("bytes", "stored_files", "derived_files",
                                                  "soft_labels")}
  results["label_bytes"] = manifest["bytes"]["labels"]
  results["image_bytes"] = manifest["bytes"]["images"]
  return results


def _seed_means(ev: dict) -> dict:
  """{mode: {set: per-seed mean accuracies (percent)}} over the seeds every set has."""
  blocks = [b[s] for b in ev["modes"].values() for s in ("distilled", "random_subset") if s in b]
  keys = sorted(set.intersection(*(set(b["seed_means"]) for b in blocks)), key=int)
  return {m: {s: [b[s]["seed_means"][k] for k in keys] for s in ("distilled", "random_subset")
              if s in b} for m, b in ev["modes"].items()}


def distill_seeds(ctx: RunContext, results: dict) -> dict:
  """The spread over distillation seeds (module docstring): each extra seed recovers its own
  set with the run's teachers and is compared with the random subsets under soft labels."""
  config = ctx.config
  rows = [_seed_row(int(config.seed), results)]
  for j in range(1, int(config.evaluate.distill_seeds)):
    seed = int(config.seed) + j
    sub = override(config.copy_and_resolve_references(), **{
        "seed": seed, "evaluate.distill_seeds": 1, "evaluate.label_modes": ("soft",),
        "evaluate.full_data": False})
    sub_ctx = RunContext.create(sub, os.path.join(ctx.workdir, "distill_seeds", f"seed{seed}"),
                                ctx.data, mesh=ctx.mesh, writer=ctx.writer)
    sub_ctx.teachers = ctx.teachers
    print(f"[distill_seeds] seed {seed} ({j + 1}/{config.evaluate.distill_seeds})", flush=True)
    rows.append(_seed_row(seed, run(sub_ctx)))
  out = {"per_seed": rows,
         "distilled_soft": stats.mean_std([r["distilled_soft"] for r in rows])}
  if all("difference" in r for r in rows):
    out["difference"] = stats.mean_std([r["difference"] for r in rows])
  return out


def _seed_row(seed: int, results: dict) -> dict:
  soft = results["evaluation"]["modes"]["soft"]
  row = {"distill_seed": seed, "distilled_soft": soft["distilled"]["test_top1_mean"]}
  if "difference" in soft:
    row["difference"] = soft["difference"]["mean"]
    row["random_soft"] = soft["random_subset"]["test_top1_mean"]
  return row


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
  """The one table a user reads: each label mode's distilled set and random subset (mean ± std
  over students), their paired difference with its 95% interval and the verdict; the ceiling;
  DD-Ranking's scores; the bytes."""
  ev = results["evaluation"]
  plan = ev["plan"]["distilled"]
  print(f"\n== {results['method']} on {results['dataset']}: {results['ipc']} images per class "
        f"({results['num_images']} training instances), {results['labels']} labels ==")
  rnd = ev["plan"].get("random_subset")
  print(f"every student: {plan['total_steps']} optimiser steps at batch {plan['batch_size']} "
        f"({plan['epochs']} epochs of the distilled set"
        + (f", {rnd['epochs']} of a random subset" if rnd else "") + f"); {ev['seeds']} seeds"
        + (f", {ev['subset_draws']} random-subset draws" if rnd else "")
        + "; test top-1 % at the validation-selected point, mean ± std")
  fmt = lambda r: f"{r['test_top1_mean']:6.2f} ± {r['test_top1_std']:.2f}"
  print(f"{'labels':32s}{'distilled set':17s}{'random subset':17s}"
        f"{'distilled - random (95% interval)':36s}verdict")
  for mode, b in ev["modes"].items():
    line = f"{evaluate_stage.MODE_NAMES[mode]:32s}{fmt(b['distilled']):17s}"
    if "random_subset" in b:
      d = b["difference"]
      diff = f"{d['mean']:+6.2f} ({d['ci_low']:+.2f} to {d['ci_high']:+.2f})"
      line += f"{fmt(b['random_subset']):17s}{diff:36s}{d['verdict']}"
    print(line)
  ceiling = results.get("ceiling", {})
  named = lambda n: "teacher" if n == "teacher" else f"teacher {n}"  # not "teacher teacher"
  parts = [f"{named(t['name'])} ({t['arch']}) {t['test_top1'] * 100:.2f}"
           for t in results["teachers"] if t.get("test_top1") is not None]
  if "full_data_student" in ceiling:
    f = ceiling["full_data_student"]
    same = (f" = {named(f['same_as_teacher'])}, the same network"
            if f.get("same_as_teacher") else "")
    parts.append(f"full-data student ({f['arch']}, hard labels{same}) "
                 f"{f['test_top1'] * 100:.2f}")
  if parts:
    print("ceiling: " + "; ".join(parts))
  dd = results.get("ddranking", {})
  scores = []
  if "lrs" in dd:
    scores.append(f"LRS {dd['lrs']['lrs']['mean']:.3f} ± {dd['lrs']['lrs']['std']:.3f} (HLR "
                  f"{dd['lrs']['hlr']['mean']:.3f}, IOR {dd['lrs']['ior']['mean']:+.3f})")
  if "ars" in dd:
    scores.append(f"ARS {dd['ars']['ars']['mean']:.3f} ± {dd['ars']['ars']['std']:.3f}")
  if scores:
    print("DD-Ranking scores (accuracies as fractions): " + "; ".join(scores))
  if "difference" in ev["modes"]["soft"]:
    print(ev["modes"]["soft"]["verdict"] + " (soft labels)")
  if "distill_seeds" in results:
    ds = results["distill_seeds"]
    line = (f"over {len(ds['per_seed'])} distillation seeds: distilled set "
            f"{ds['distilled_soft']['mean']:.2f} ± {ds['distilled_soft']['std']:.2f}")
    if "difference" in ds:
      line += f", difference {ds['difference']['mean']:+.2f} ± {ds['difference']['std']:.2f}"
    print(line)
  print(f"bytes: images {results['image_bytes']}, labels {results['label_bytes']}", flush=True)
