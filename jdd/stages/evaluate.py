"""Evaluate: students on the distilled set and on a random real subset of the same budget.

Each finished (set, seed) result is written at once, so a killed evaluation loses one student.
"""

from __future__ import annotations

import os

import numpy as np

from jdd import checkpoint, reporting
from jdd.evaluation import classification as evaluation
from jdd.labels.source import LabelSource
from jdd.loop import RunContext, host_rng


def random_subset(data, ipc: int, key) -> np.ndarray:
  """`ipc` real training images per class, drawn with a recorded key."""
  return data.train.images[random_subset_indices(data, ipc, key)] if hasattr(
      data.train, "images") else data.train.take_per_class(ipc, data.num_classes).images


def random_subset_indices(data, ipc: int, key) -> np.ndarray:
  """Class-major training indices: `ipc` distinct images of every class, from `key`."""
  rng = host_rng(key)
  idx = []
  for c in range(data.num_classes):
    pool = np.flatnonzero(data.train.labels == c)
    if len(pool) < ipc:
      raise ValueError(f"class {c} has {len(pool)} training images; {ipc} are needed")
    idx.append(rng.choice(pool, ipc, replace=False))
  return np.concatenate(idx)


def evaluate_set(ctx: RunContext, name: str, images: np.ndarray, source: LabelSource) -> dict:
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
