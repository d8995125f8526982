"""The run context every stage reads, and the one checkpointed loop every stage runs.

`RunContext` is plain data: the config, the workdir, the dataset, one base key per purpose, the
metric writer, the device mesh, the teachers (classification; empty elsewhere) and the
`debug.interrupt_after` counter. A driver builds one per run (`jdd.run`); a notebook can build
one by hand with `RunContext.create(config, workdir, data)`.

`run_loop` (also `ctx.loop`) is the only training loop of jdd's stages: teachers, pixel-group and
compensator recover, FADRM rounds, experts, trajectory distillation, encoder pre-training and
EDGE's pre-training and fine-tuning all run through it. From the stage's last Orbax checkpoint
to `num_steps` it calls a jitted

    step_fn(state, batch_fn(s), fold_in(key, s)) -> (state, metrics)

and, every `log_every` steps (and at every checkpoint and at the end), fetches the metrics,
stops at the first non-finite one naming the step and the term, writes them to the metric
writer and prints a progress line with rate and ETA. It checkpoints every `checkpoint_every`
steps and at the end. Because the key of step s is a pure function of (key, s), a run killed
at any moment and restarted continues bit for bit.

Stages that need more than a step say so with hooks, each optional:

    on_start(start, state)           once, after restoring (start = 0 on a fresh run)
    before_step(s, state) -> state   host-side state changes between jitted steps (FADRM's
                                     stage boundaries)
    on_log(done, state, values) -> dict   extra scalars for the log (diagnostics)
    after_step(done, state) -> state after each step (expert snapshots, periodic evaluation)
    on_save(done, state)             after each checkpoint (side files such as a history)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from jdd import checkpoint, mesh as mesh_lib, reporting


class SimulatedInterruption(RuntimeError):
  """Raised by `config.debug.interrupt_after` to test resumption in-process."""


class InterruptCounter:
  """Counts loop steps in this process and raises `SimulatedInterruption` after `limit` of them
  (`config.debug.interrupt_after`; 0 never interrupts). A testing aid, not a storage budget."""

  def __init__(self, limit: int = 0):
    self.limit, self.count = int(limit), 0

  def tick(self) -> None:
    self.count += 1
    if self.limit and self.count >= self.limit:
      raise SimulatedInterruption(f"debug.interrupt_after={self.limit} reached")


class Teacher(NamedTuple):
  """A frozen teacher: its name in `config.teacher_names`, Flax module, variables and card."""
  name: str
  model: Any
  variables: Any
  card: dict


# One base key per purpose, the same table for every family: key(seed) folded with the
# purpose's index. A new purpose is appended so that no existing key moves.
KEY_NAMES = (
    # decoupled image distillation (and the random-subset baselines of every family)
    "squeeze", "recover_init", "recover", "relabel_order", "relabel_aug", "baseline", "eval",
    # image-text: encoder pre-training, experts, trajectory distillation
    "pretrain", "experts", "distill_init", "distill",
    # EDGE: the offline VAE and U-Net, fine-tuning, sampling
    "vae", "unet", "finetune", "sample")


def make_keys(seed: int) -> dict[str, jax.Array]:
  """{purpose: fold_in(key(seed), index of the purpose in KEY_NAMES)}."""
  base = jax.random.key(int(seed))
  return {name: jax.random.fold_in(base, i) for i, name in enumerate(KEY_NAMES)}


def host_rng(key: jax.Array, *path: int) -> np.random.Generator:
  """A NumPy generator for host-side draws (batch indices, subsets, initialisations), seeded
  by the key's data after folding in `path`: derived from the run's keys like every other
  draw, so it replays on resume."""
  for i in path:
    key = jax.random.fold_in(key, i)
  return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


@dataclasses.dataclass
class RunContext:
  """Everything a stage may read; see the module docstring."""
  config: Any
  workdir: str
  data: Any
  keys: dict[str, jax.Array]
  writer: Any
  mesh: Any
  interrupts: InterruptCounter
  teachers: list = dataclasses.field(default_factory=list)

  @classmethod
  def create(cls, config, workdir: str, data=None, *, mesh=None, writer=None,
             keys: dict | None = None) -> "RunContext":
    debug = config.get("debug") or {}
    return cls(config=config, workdir=workdir, data=data,
               keys=keys if keys is not None else make_keys(int(config.seed)),
               writer=writer or reporting.create_writer(workdir),
               mesh=mesh or mesh_lib.make_mesh(config.get("num_devices") or None),
               interrupts=InterruptCounter(int(debug.get("interrupt_after", 0))))

  @classmethod
  def standalone(cls, config, workdir: str, keys: dict, data=None) -> "RunContext":
    """A context for calling one stage directly (tests, benchmarks, notebooks): the given keys,
    metrics written nowhere (progress lines still print)."""
    from clu import metric_writers
    return cls.create(config, workdir, data, keys=keys, writer=metric_writers.MultiWriter([]))

  def loop(self, stage: str, state, step_fn, batch_fn, num_steps: int, key, **hooks):
    return run_loop(self, stage, state, step_fn, batch_fn, num_steps, key, **hooks)


def fetch_scalars(metrics) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def run_loop(ctx: RunContext, stage: str, state, step_fn: Callable, batch_fn: Callable,
             num_steps: int, key, *, checkpoint_every: int | None = None, log_every: int | None = None,
             show: tuple[str, ...] | None = None, on_start: Callable | None = None,
             before_step: Callable | None = None, on_log: Callable | None = None,
             after_step: Callable | None = None, on_save: Callable | None = None):
  """Runs `step_fn` from the stage's last checkpoint to `num_steps`; returns the final state.

  `show` limits the progress line to those metrics (all of them go to the writer).
  """
  config = ctx.config
  every = int(checkpoint_every or config.checkpoint_every)
  log = int(log_every or config.log_every)
  ckpt = checkpoint.StageCheckpointer(ctx.workdir, stage)
  try:
    state, start = ckpt.restore_or(state)
    if start:
      print(f"[{stage}] resuming from checkpoint at step {start}/{num_steps}", flush=True)
    if on_start is not None:
      on_start(start, state)
    progress = reporting.Progress(stage, num_steps, start, every=log)
    for s in range(start, num_steps):
      if before_step is not None:
        state = before_step(s, state)
      state, metrics = step_fn(state, batch_fn(s), jax.random.fold_in(key, s))
      done = s + 1
      saving = done % every == 0 or done == num_steps
      if done % log == 0 or saving:
        values = fetch_scalars(metrics)
        reporting.check_finite(stage, done, values)
        if on_log is not None:
          values.update(on_log(done, state, values) or {})
        ctx.writer.write_scalars(done, {f"{stage}/{k}": v for k, v in values.items()})
        progress(done, values if show is None else {k: values[k] for k in show if k in values})
      if after_step is not None:
        state = after_step(done, state)
      if saving:
        ckpt.save(done, state)
        if on_save is not None:
          on_save(done, state)
      ctx.interrupts.tick()
  finally:
    ckpt.close()
  return state

