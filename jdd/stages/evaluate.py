"""Evaluate: the distilled set against random real subsets of the same budget, like with like.

For every label mode of `evaluate.label_modes` (DD-Ranking's protocol, docs/evaluation.md):

    'soft'        the method's soft labels and augmentation (the headline number)
    'hard'        the set's class labels, one-hot, under the same crops, flips and mixes
    'soft_noaug'  the method's soft labels without crop, flip or mix

students are trained on the distilled set (`evaluate.seeds` seeds) and on random real subsets
(`evaluate.subset_draws` draws of `recover.ipc` images per class; 0: one per seed), every one by
the same `Plan`: the same optimiser steps, batch size and schedule
(`jdd.evaluation.classification.make_plan`). Random students are max(seeds, draws); student j
trains draw j % draws from seed j % seeds, so with as many draws as seeds each seed sees its own
draw and the paired difference (distilled - random, per seed) carries the spread of both.

Each finished student is written at once to W/eval/<set>/<mode>/seed<k>[_draw<d>].json, so a
killed evaluation loses at most one student; label files are written whole before any student
reads them. Curves of every set go to W/eval/curves.png (`jdd.evaluation.curves`).

With several processes the students of a label mode are dealt round-robin
(`jdd.distributed.spread`: student i on process i mod N, each keyed by its own seed and draw)
and every process then writes the finished ones together (process 0 alone touches the disk).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from jdd import checkpoint, distributed, reporting
from jdd.evaluation import classification as evaluation, stats
from jdd.loop import RunContext, host_rng
from jdd.stages import relabel

MODES = ("soft", "hard", "soft_noaug")
MODE_NAMES = {"soft": "soft labels", "hard": "hard labels",
              "soft_noaug": "soft labels, no augmentation"}


def random_subset(data, ipc: int, key) -> tuple[np.ndarray, np.ndarray]:
  """`ipc` real training images per class drawn with a recorded key, and their labels."""
  if hasattr(data.train, "images"):
    idx = random_subset_indices(data, ipc, key)
    return data.train.images[idx], data.train.labels[idx]
  split = data.train.take_per_class(ipc, data.num_classes)
  return split.images, split.labels


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


def label_modes(ec) -> tuple[str, ...]:
  modes = tuple(ec.get("label_modes", ("soft",)))
  bad = [m for m in modes if m not in MODES]
  if not modes or bad or "soft" not in modes:
    raise ValueError(f"evaluate.label_modes={modes} must include 'soft' and only name {MODES}")
  return modes


def _source(ctx: RunContext, name: str, mode: str, images, labels, plan):
  if mode == "hard":
    return relabel.hard_source(ctx, labels)
  folder = name if mode == "soft" else f"{name}_noaug"
  return relabel.label_source(ctx, name, images, os.path.join(ctx.workdir, "labels", folder),
                              plan, with_augmentation=mode == "soft")


class _Set:
  """One set of a comparison: its images, labels, plan and (lazily) its label sources. Sets of
  one kind (`group`: the random-subset draws) share their trainers, one per mode."""

  def __init__(self, ctx, name, images, labels, plan, trainers: dict, sources=None):
    self.ctx, self.name, self.images, self.labels, self.plan = ctx, name, images, labels, plan
    self.sources, self.trainers = dict(sources or {}), trainers

  def source(self, mode: str):
    if mode not in self.sources:
      self.sources[mode] = _source(self.ctx, self.name, mode, self.images, self.labels,
                                   self.plan)
    return self.sources[mode]

  def trainer(self, mode: str) -> evaluation.Trainer:
    if mode not in self.trainers:
      self.trainers[mode] = evaluation.Trainer(source=self.source(mode), data=self.ctx.data,
                                               ecfg=self.ctx.config.evaluate, plan=self.plan)
    return self.trainers[mode]


def _student(ctx: RunContext, s: _Set, mode: str, seed: int, path: str) -> dict:
  ec, p = ctx.config.evaluate, s.plan
  every = p.eval_steps[0] * max(1, len(p.eval_steps) // 4)
  label = os.path.relpath(path, os.path.join(ctx.workdir, "eval")).removesuffix(".json")
  progress = reporting.Progress(f"evaluate:{label}", p.total_steps, every=every)
  r = s.trainer(mode).train(s.images, order_key=ctx.keys["relabel_order"],
                            seed=int(ctx.config.seed) * 1000 + seed, source=s.source(mode),
                            progress=progress,
                            test_every_eval=bool(ec.get("test_every_eval", False)))
  r["eval_seed"] = seed
  return r


def _students(ctx: RunContext, jobs: list, name: str) -> list[dict]:
  """Trains the students `jobs` = [(set, mode, seed, path)] that have no result file yet and
  returns every result; each is written as soon as it is known (one process) or after the round
  (several: the write is collective)."""
  for s, mode, _, _ in jobs:   # label files are built (by every process alike) before students
    s.source(mode)
  done = [os.path.exists(path) for *_, path in jobs]
  many = distributed.is_multiprocess()

  def one(i: int) -> dict:
    s, mode, seed, path = jobs[i]
    if done[i]:
      return checkpoint.read_json(path)
    # As JSON holds it (string keys, lists): a fresh result, a resumed one and one received
    # from another process summarise alike.
    r = json.loads(json.dumps(_student(ctx, s, mode, seed, path),
                              default=checkpoint.json_default))
    if not many:
      checkpoint.atomic_write_json(path, r)
    return r

  results = distributed.spread(len(jobs), one, name)
  if many:
    for i, r in enumerate(results):
      if not done[i]:
        checkpoint.atomic_write_json(jobs[i][3], r)
  return results


def _paired(a: dict, b: dict) -> dict:
  """distilled - random over the evaluation seeds both have (per-seed means), in points."""
  keys = sorted(set(a["seed_means"]) & set(b["seed_means"]), key=int)
  return stats.paired_difference([a["seed_means"][k] for k in keys],
                                 [b["seed_means"][k] for k in keys])


def compare(ctx: RunContext, images: np.ndarray, labels: np.ndarray, sources=None) -> dict:
  """Every student of the comparison (module docstring) and its statistics.

  `sources` may hold already built label sources of the distilled set by mode (the driver's
  'soft' source, whose stored labels the export includes)."""
  config, data = ctx.config, ctx.data
  ec = config.evaluate
  modes = label_modes(ec)
  seeds = int(ec.seeds)
  draws = int(ec.get("subset_draws", 0)) or seeds
  n = len(images)
  distilled = _Set(ctx, "distilled", images, labels, evaluation.make_plan(ec, n, n), {},
                   sources)
  subsets, shared = [], {}
  if ec.baseline:
    for d in range(draws):
      sub_images, sub_labels = random_subset(data, int(config.recover.ipc),
                                             jax.random.fold_in(ctx.keys["baseline"], d))
      subsets.append(_Set(ctx, f"random_subset_draw{d}", sub_images, sub_labels,
                          evaluation.make_plan(ec, n, len(sub_images)), shared))
  out = {"label_modes": list(modes), "seeds": seeds,
         "subset_draws": draws if subsets else 0,
         "plan": {"distilled": distilled.plan.description,
                  **({"random_subset": subsets[0].plan.description} if subsets else {})},
         "modes": {}}
  root = os.path.join(ctx.workdir, "eval")
  for mode in modes:
    jobs = [(distilled, mode, k, os.path.join(root, "distilled", mode, f"seed{k}.json"))
            for k in range(seeds)]
    pairs = [(j % seeds, j % draws) for j in range(max(seeds, draws))] if subsets else []
    jobs += [(subsets[dr], mode, k,
              os.path.join(root, "random_subset", mode, f"seed{k}_draw{dr}.json"))
             for k, dr in pairs]
    results = _students(ctx, jobs, f"evaluate_{mode}")
    block = {"distilled": evaluation.summarise(results[:seeds])}
    if subsets:
      r = [{**res, "draw": dr} for res, (_, dr) in zip(results[seeds:], pairs)]
      block["random_subset"] = evaluation.summarise(r)
      block["difference"] = _paired(block["distilled"], block["random_subset"])
      block["verdict"] = stats.describe("the distilled set", "the random subset",
                                        block["difference"])
    out["modes"][mode] = block
  return out
