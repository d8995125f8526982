"""`jdd eval` of a classification set jdd did not make: the set against random real subsets of
the same budget, under jdd's protocol (docs/evaluation.md), by the functions the drivers use.

Why: every reference trains its own student its own way and selects on test, so two papers'
numbers cannot be put side by side. Here the set only supplies images and labels; the student,
its step budget, the random-subset draws, the label modes (soft / hard / soft without
augmentation), validation selection, the paired interval and DD-Ranking's scores are jdd's
(`jdd.stages.evaluate.compare`, `jdd.evaluation.stats`, `jdd.evaluation.ddranking`), taken from
the dataset's base config (`--config`, default `BASE_CONFIGS`).

Soft labels: a jdd export's stored labels are used when they were made for this plan (same
epochs and batch); otherwise, and for every layout without a label file, a teacher labels the
set online (DD-Ranking's and the references' relabel: FKD crops, flips and mixes with the
teacher on the augmented batch). The teacher is the base config's (Fashion-MNIST: the ConvNet-3
shipped in jdd/assets/teachers, so no teacher is trained) or `--teacher DIR` (a converted or
jdd-trained teacher folder with card.json).
"""

from __future__ import annotations

import os
import shutil

import numpy as np

import jdd
from jdd import checkpoint
from jdd.data import load_classification
from jdd.drivers import classification as driver
from jdd.errors import ConfigError
from jdd.evaluation import classification as evaluation, curves, ddranking
from jdd.judge import compute
from jdd.judge.sets import ClassSet
from jdd.loop import RunContext
from jdd.stages import evaluate as evaluate_stage, relabel, teachers

EVAL_POINTS = 5   # validation points of a student when `--epochs` sets its length


def prepare_config(config, s: ClassSet, *, epochs=None, seeds=None, draws=None, teacher=None):
  """The base config with the set's budget (`recover.ipc`), the label source and the command
  line's evaluation changes. Labels: the set's stored ones (with the relabel block of the config
  that made them) when they fit the plan, else every set of the comparison is labelled online
  by the teacher, so the distilled set and the random subsets get the same kind of labels."""
  config = config.copy_and_resolve_references()
  config.unlock()
  config.recover.ipc = s.ipc
  if epochs is not None:   # 5 validation points (docs/evaluation.md: fewer validation passes)
    config.evaluate.epochs = int(epochs)
    config.evaluate.eval_every = max(1, int(epochs) // EVAL_POINTS)
  if seeds is not None:
    config.evaluate.seeds = int(seeds)
  if draws is not None:
    config.evaluate.subset_draws = int(draws)
  if teacher:
    config.teacher.checkpoint = teacher
  config.evaluate.distill_seeds = 1
  made = (s.config or {}).get("relabel", {})
  if s.label_file and made.get("mode") == "stored":
    for k, v in made.items():
      if k in config.relabel:
        config.relabel[k] = tuple(v) if isinstance(v, list) else v
  n = len(s.images)
  plan = evaluation.make_plan(config.evaluate, n, n)
  want = (plan.epochs, plan.steps_per_epoch, plan.batch_size)
  if s.label_file and made.get("mode") == "stored":
    shape = tuple(np.load(s.label_file, mmap_mode="r").shape)
    if shape[:3] == want:
      s.notes.append("soft labels: the set's own stored labels (its relabel settings)")
    else:
      s.notes.append(f"the set's stored labels {shape[:3]} (epochs, batches, batch) were made "
                     f"for another plan than {want}: every set relabelled online by the teacher")
      s.label_file = None
  else:
    if s.label_file:
      s.notes.append(f"the set's labels ({made.get('mode')!r}) are not stored per batch: "
                     "relabelled online by the teacher")
    else:
      s.notes.append("no label file: soft labels from the teacher (online relabel)")
    s.label_file = None
  if not s.label_file:
    config.relabel.mode = "online"
  config.lock()
  return config


def _label_source(ctx: RunContext, s: ClassSet, plan):
  """The 'soft' source: the set's stored labels (copied where relabel looks for them), or
  the teacher online."""
  out_dir = driver.labels_dir(ctx.workdir, "distilled")
  if s.label_file:
    os.makedirs(out_dir, exist_ok=True)
    shutil.copyfile(s.label_file, os.path.join(out_dir, "soft_labels.npy"))
  return relabel.label_source(ctx, "distilled", s.images, out_dir, plan)


def evaluate(s: ClassSet, config, workdir: str) -> dict:
  """Every student of the comparison, results.json in `workdir`, and the results dict."""
  clock = compute.Clock()
  data = load_classification(config.dataset)
  if tuple(s.images.shape[1:]) != tuple(data.image_shape):
    raise ConfigError(f"{s.path}: images are {s.images.shape[1:]}, {data.name} is "
                      f"{data.image_shape}")
  if s.labels.max() >= data.num_classes:
    raise ConfigError(f"{s.path}: class {int(s.labels.max())} but {data.name} has "
                      f"{data.num_classes} classes")
  banner = f"{s.format} set {s.path}: {len(s.images)} images, {s.ipc} per class, on {data.name}"
  with compute.open_run(config, workdir, data, banner) as ctx:
    ctx.teachers = teachers.squeeze(ctx)
    ceiling = teachers.full_data_student(ctx)
    n = len(s.images)
    source = _label_source(ctx, s, evaluation.make_plan(config.evaluate, n, n))
    ev = evaluate_stage.compare(ctx, s.images, s.labels, {"soft": source})
    summary = teachers.summary(ctx.teachers)
    results = {
        "jdd_version": jdd.__version__, "method": f"{s.format} set", "set": os.path.abspath(s.path),
        "format": s.format, "dataset": data.name, "ipc": s.ipc, "num_images": n,
        "val_source": data.val_source, "labels": source.kind,
        "label_description": source.description, "notes": s.notes, "teachers": summary,
        "student": dict(config.evaluate.student), "evaluation": ev,
        "distilled": ev["modes"]["soft"]["distilled"],
        "ceiling": {"teacher": summary[0]}}
    if "random_subset" in ev["modes"]["soft"]:
      results["random_subset"] = ev["modes"]["soft"]["random_subset"]
    if ceiling is not None:
      results["ceiling"]["full_data_student"] = {
          k: ceiling.get(k) for k in ("arch", "kwargs", "val_top1", "test_top1",
                                      "same_as_teacher") if k in ceiling}
    results["ddranking"] = ddranking.scores(
        None if ceiling is None else float(ceiling["test_top1"]), driver._seed_means(ev))
    curves.plot({m: {k: b[k]["per_seed"] for k in ("distilled", "random_subset") if k in b}
                 for m, b in ev["modes"].items()}, evaluate_stage.MODE_NAMES,
                os.path.join(workdir, "eval", "curves.png"))
    results["image_bytes"] = int(s.images.nbytes + s.labels.nbytes)
    results["label_bytes"] = int(os.path.getsize(s.label_file)) if s.label_file else 0
    results["compute"] = clock.report(ctx.mesh.shape["data"])
    checkpoint.atomic_write_json(os.path.join(workdir, "results.json"), results)
  return results


def print_summary(results: dict) -> None:
  """The drivers' table (distilled vs random per label mode, ceiling, DD-Ranking), the notes,
  the compute, and the one `summary:` line a script reads."""
  driver.print_summary(results)
  for note in results["notes"]:
    print(f"note: {note}")
  print(compute.line(results["compute"]))
  soft = results["evaluation"]["modes"]["soft"]
  fields = {"format": results["format"], "dataset": results["dataset"],
            "ipc": results["ipc"], "test_top1_mean": soft["distilled"]["test_top1_mean"],
            "test_top1_std": soft["distilled"]["test_top1_std"]}
  if "random_subset" in soft:
    fields.update(random_top1_mean=soft["random_subset"]["test_top1_mean"],
                  difference=soft["difference"]["mean"], verdict=soft["difference"]["verdict"])
  lrs = results.get("ddranking", {}).get("lrs")
  if lrs:
    fields["lrs"] = lrs["lrs"]["mean"]
  print(summary_line(fields), flush=True)


def summary_line(fields: dict) -> str:
  fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v).replace(" ", "_")
  return "summary: " + " ".join(f"{k}={fmt(v)}" for k, v in fields.items())
