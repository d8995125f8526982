"""Evaluate: students on the distilled set and on a random real subset of the same budget.

Each finished (set, seed) result is written at once, so a killed evaluation loses one student.
With several processes the seeds are dealt round-robin (`jdd.distributed.spread`: seed i on
process i mod N, each seed keyed by its index alone) and process 0 writes every result.
"""

from __future__ import annotations

import os

import numpy as np

from jdd import checkpoint, distributed, reporting
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
  path_of = lambda seed: os.path.join(ctx.workdir, "eval", f"{name}_seed{seed}.json")
  missing = [s for s in range(int(ec.seeds)) if not os.path.exists(path_of(s))]
  many = distributed.is_multiprocess()

  def one(seed: int) -> dict:
    path = path_of(seed)
    if seed not in missing:
      return checkpoint.read_json(path)
    progress = reporting.Progress(f"evaluate:{name}:seed{seed}", int(ec.epochs),
                                  every=max(1, int(ec.epochs) // 5))
    r = evaluation.train_student(
        images, source=source, data=ctx.data, ecfg=ec, order_key=ctx.keys["relabel_order"],
        seed=int(config.seed) * 1000 + seed, progress=progress)
    if not many:
      checkpoint.atomic_write_json(path, r)
    return r

  results = distributed.spread(int(ec.seeds), one, f"evaluate_{name}")
  if many:
    for seed in missing:
      checkpoint.atomic_write_json(path_of(seed), results[seed])
  return evaluation.summarise(results)
