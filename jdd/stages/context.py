"""What every stage receives: the run's context, its teachers, and the checkpointed loop.

A method's recover stage is `recover_stage(ctx: StageContext) -> DistilledSet`. The context is
plain data plus one function (`loop`), so a method module needs nothing else from the driver
and can be exercised from a notebook with a hand-built context.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from jdd import checkpoint, reporting


class SimulatedInterruption(RuntimeError):
  """Raised by `config.debug.interrupt_after` to test resumption in-process."""


class Budget:
  """Counts steps in this process, for `debug.interrupt_after`."""

  def __init__(self, limit: int):
    self.limit, self.count = limit, 0

  def tick(self):
    self.count += 1
    if self.limit and self.count >= self.limit:
      raise SimulatedInterruption(f"debug.interrupt_after={self.limit} reached")


class Teacher(NamedTuple):
  """A frozen teacher: its name in `config.teacher_names`, Flax module, variables and card."""
  name: str
  model: Any
  variables: Any
  card: dict


@dataclasses.dataclass
class DistilledSet:
  """What a recover stage hands to relabel and evaluate.

  images/labels: the uint8 (N, H, W, C) instances a student trains on and their int32 classes
  (for INFER these are the materialised sums, derived from the stored files).
  stored: export file names (without .npy) that make up the distilled set's budget.
  derived: export file names that are recomputable from `stored` (counted separately).
  extra: method-specific manifest fields (e.g. INFER's budget arithmetic).
  """
  images: np.ndarray
  labels: np.ndarray
  stored: tuple[str, ...] = ("images", "labels")
  derived: tuple[str, ...] = ()
  extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class StageContext:
  """Everything a stage may read. `loop(stage, state, step_fn, batch_fn, num_steps, key)` runs a
  jitted step from the stage's last checkpoint to `num_steps` (checkpointing, logging, the
  finite-loss check and `debug.interrupt_after` included) and returns the final state."""
  config: Any
  workdir: str
  data: Any
  teachers: list[Teacher]
  keys: dict[str, jax.Array]
  writer: Any
  mesh: Any
  budget: Budget
  loop: Callable[..., Any]


KEY_NAMES = ("squeeze", "recover_init", "recover", "relabel_order", "relabel_aug", "baseline",
             "eval")


def make_keys(seed: int) -> dict[str, jax.Array]:
  """One base key per purpose; new purposes are appended so existing keys never move."""
  base = jax.random.key(int(seed))
  return {name: jax.random.fold_in(base, i) for i, name in enumerate(KEY_NAMES)}


def checkpointed_loop(stage, workdir, state, step_fn, batch_fn, num_steps, key, config, writer,
                      budget):
  """Runs `step_fn` from the last checkpoint to `num_steps`, checkpointing as it goes."""
  ckpt = checkpoint.StageCheckpointer(workdir, stage)
  state, start = ckpt.restore_or(state)
  if start:
    print(f"[{stage}] resuming from checkpoint at step {start}/{num_steps}", flush=True)
  progress = reporting.Progress(stage, num_steps, start, every=int(config.log_every))
  every = int(config.checkpoint_every)
  try:
    for s in range(start, num_steps):
      state, metrics = step_fn(state, batch_fn(s), jax.random.fold_in(key, s))
      done = s + 1
      if done % int(config.log_every) == 0 or done == num_steps or done % every == 0:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        reporting.check_finite(stage, done, values)
        writer.write_scalars(done, {f"{stage}/{k}": v for k, v in values.items()})
        progress(done, values)
      if done % every == 0 or done == num_steps:
        ckpt.save(done, state)
      budget.tick()
  finally:
    ckpt.close()
  return state
