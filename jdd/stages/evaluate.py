"""Evaluate: students on the distilled set and on a random real subset; the byte manifest.

Each finished (set, seed) result is written at once, so a killed evaluation loses one student.
The manifest lists every export file with its shape, bytes and sha256, split into what the
distilled set stores (its budget) and what is derived from it (e.g. INFER's materialised
instances), plus the label files of the label source.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np

import jdd
from jdd import checkpoint, reporting
from jdd.evaluation import classification as evaluation
from jdd.labels.source import LabelSource
from jdd.stages.context import DistilledSet, StageContext
from jdd.stages.recover import export_dir


def random_subset(data, ipc: int, key) -> np.ndarray:
  """`ipc` real training images per class, drawn with a recorded key."""
  return data.train.images[random_subset_indices(data, ipc, key)] if hasattr(
      data.train, "images") else data.train.take_per_class(ipc, data.num_classes).images


def random_subset_indices(data, ipc: int, key) -> np.ndarray:
  """Class-major training indices: `ipc` distinct images of every class, from `key`."""
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  idx = []
  for c in range(data.num_classes):
    pool = np.flatnonzero(data.train.labels == c)
    if len(pool) < ipc:
      raise ValueError(f"class {c} has {len(pool)} training images; {ipc} are needed")
    idx.append(rng.choice(pool, ipc, replace=False))
  return np.concatenate(idx)


def evaluate_set(ctx: StageContext, name: str, images: np.ndarray, source: LabelSource) -> dict:
  """Students over `config.evaluate.seeds`; each finished seed is kept, so a kill loses one."""
  ec, config = ctx.config.evaluate, ctx.config
  results = []
  for seed in range(int(ec.seeds)):
    path = os.path.join(ctx.workdir, "eval", f"{name}_seed{seed}.json")
    if os.path.exists(path):
      results.append(checkpoint.read_json(path))
      continue
    progress = reporting.Progress(f"evaluate:{name}:seed{seed}", int(ec.epochs),
                                  every=max(1, int(ec.epochs) // 5))
    r = evaluation.train_student(
        images, source=source, data=ctx.data, ecfg=ec, order_key=ctx.keys["relabel_order"],
        seed=int(config.seed) * 1000 + seed, progress=progress)
    checkpoint.atomic_write_json(path, r)
    results.append(r)
  return evaluation.summarise(results)


def file_entry(path: str) -> dict:
  arr = np.load(path, mmap_mode="r")
  with open(path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  return {"shape": list(arr.shape), "dtype": str(arr.dtype), "array_bytes": int(arr.nbytes),
          "file_bytes": os.path.getsize(path), "sha256": digest}


def write_manifest(ctx: StageContext, distilled: DistilledSet, source: LabelSource) -> dict:
  config, data = ctx.config, ctx.data
  edir = export_dir(ctx.workdir)
  entry = lambda name: file_entry(os.path.join(edir, f"{name}.npy"))
  stored = {name: entry(name) for name in distilled.stored}
  derived = {name: entry(name) for name in distilled.derived}
  label_files = {os.path.basename(p).removesuffix(".npy"): file_entry(p) for p in source.files}
  files = {**stored, **derived, **label_files}
  soft_bytes = sum(f["array_bytes"] for f in label_files.values())
  set_bytes = sum(f["array_bytes"] for f in stored.values())
  hard_label_bytes = sum(f["array_bytes"] for k, f in stored.items() if k.endswith("labels"))
  manifest = {
      "jdd_version": jdd.__version__, "method": config.method, "dataset": data.name,
      "num_classes": data.num_classes, "ipc": int(config.recover.ipc),
      "num_images": int(len(distilled.images)), "files": files,
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
  checkpoint.atomic_write_json(os.path.join(edir, "manifest.json"), manifest)
  return manifest
