"""Student training on a distilled (or random real) set: one step budget for every set compared,
whole stretches of training compiled as one program, and honest model selection.

A student is trained from scratch on the small set with the targets of a `LabelSource` (FKD
logits stored or online, INFER's static or dynamic labels, BSSL, or hard one-hot labels), as the
references' validate scripts do: AdamW + cosine, KL with temperature (hard labels: KL to the
mixed one-hot target at T = 1, i.e. cross-entropy up to a constant).

Like with like (`Plan`, `make_plan`). Every set of one comparison trains the same number of
optimiser steps with the same batch size and the same learning-rate schedule:

    steps = evaluate.epochs x ceil(N_ref / b),   N_ref = the distilled set's training instances,

so a random subset of 100 images compared with INFER's 350 instances trains as many steps as
INFER does (it sees more passes over its smaller set), instead of `epochs` passes of its own.
The schedule is laid out over those steps; with `lr_per_epoch` the rate is held over blocks of
ceil(N_ref / b) steps (the reference set's epoch) for every set alike. Validation is scored
every `eval_every` reference epochs, i.e. at the same step counts for every set. The batch
order of a set's epoch e is `fkd.batch_indices(order_key, e, ...)`, the order stored labels were
made for; a set smaller than the batch trains on batches of its own size.

Selection. The reported number is the test top-1 at the evaluation point with the best
*validation* top-1 (the validation split is carved from train when the dataset has none); the
references' protocol (the last point's test top-1) is reported beside it. The test split is
scored only where it is reported (the selected and the final point) unless
`evaluate.test_every_eval` asks for the whole test curve (the runs that chose the offline
configs' student length did). Several evaluation seeds give mean and spread.

Speed. The set stays on the device and each step gathers its batch there. On accelerators the
steps between two evaluation points run as one compiled program (`lax.scan` over the stretch's
batches), built once per `Trainer` and reused for every seed. On the CPU backend each step is
its own jitted call instead (`evaluate.steps_program`, default 'auto': scan but on the CPU):
XLA:CPU runs the convolution gradients inside a while loop 30-100x slower than the same program
outside one (measured on jax 0.10.2 with the ConvNet-3 step: 0.06 CPU s per step alone, 0.8
inside a scan; a bare conv's weight gradient 0.9 ms alone, 0.2 s per iteration of a scan:
`benchmarks/evaluate.py` shows both), which outweighs the dispatch a scan saves (about 1 ms per
step). Both paths compute the same steps (tested). Seeds are not batched with `vmap`: on CPU a
ConvNet-3 step costs more per image at batch 150 than at 50 (benchmarks/evaluate.py), so
three seeds side by side are slower than one after another.

Two options FADRM's validate scripts need:
- `evaluate.grad_accum_steps` k > 1: each batch of b is fed as k consecutive micro-batches
  (boundaries floor(i b / k), those of `jdd.labels.bssl.split_points`), the student's BN
  normalising each with its own statistics and updating its running statistics k times; the
  gradients of the micro-batch losses, each divided by k as the reference's
  `loss / accumulation_steps` does, are summed into one optimiser update per batch. This is
  what BSSL labels are made for: its teachers saw the same micro-batches.
- `evaluate.cosine_eta` eta != 1: lr = lr0 * 0.5 (1 + cos(pi t / (T eta))), i.e. the cosine
  of a run eta times as long, cut at the end (eta = 2 ends at half the initial rate). epochs *
  eta must be a whole number of epochs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jdd import models, training
from jdd.labels import bssl, fkd
from jdd.labels.source import LabelSource


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one set trains in a comparison whose reference set has `reference_size` instances."""
  total_steps: int          # optimiser steps, the same for every set compared
  batch_size: int           # min(evaluate.batch_size, N): this set's batch
  steps_per_epoch: int      # ceil(N / batch): this set's epoch
  epochs: int               # passes over this set the steps need (the last one may be cut)
  reference_steps_per_epoch: int   # the schedule's epoch (lr_per_epoch blocks, eval spacing)
  eval_steps: tuple[int, ...]      # step counts after which validation is scored

  @property
  def description(self) -> dict:
    return {"total_steps": self.total_steps, "batch_size": self.batch_size,
            "steps_per_epoch": self.steps_per_epoch, "epochs": self.epochs,
            "reference_steps_per_epoch": self.reference_steps_per_epoch,
            "eval_steps": list(self.eval_steps)}


def make_plan(ecfg, reference_size: int, set_size: int) -> Plan:
  """The step budget of a set of `set_size` compared with a reference of `reference_size`."""
  if reference_size < 1 or set_size < 1:
    raise ValueError(f"cannot train on an empty set (reference {reference_size}, set {set_size})")
  b_ref = int(min(ecfg.batch_size, reference_size))
  s_ref = fkd.steps_per_epoch(reference_size, b_ref)
  total = int(ecfg.epochs) * s_ref
  b = int(min(ecfg.batch_size, set_size))
  s = fkd.steps_per_epoch(set_size, b)
  every = int(ecfg.eval_every) * s_ref
  evals = tuple(range(every, total, every)) + (total,)
  return Plan(total, b, s, math.ceil(total / s), s_ref, evals)


def _student_step(state, batch, rng, operands, *, model, optimizer, batch_fn, temperature,
                  t_squared, kd_step=training.kd_step):
  x, target = batch_fn(operands, batch)
  return kd_step(state, {"images": x, "teacher_logits": target}, rng, model=model,
                 optimizer=optimizer, temperature=temperature, t_squared=t_squared)


def _accumulated_kd_step(state, batch, rng, *, model, optimizer, temperature, t_squared,
                         num_splits: int, probs: bool = False):
  """`training.kd_step` over `num_splits` micro-batches: one update from the summed
  gradients of loss_i / k, BN statistics carried from chunk to chunk."""
  del rng  # all randomness of a relabelled batch lives in its (epoch, batch) key
  x, target = batch["images"], batch["teacher_logits"]
  bounds = bssl.split_points(x.shape[0], num_splits)
  stats, grads, losses = state.batch_stats, None, []
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    def loss_fn(params, stats=stats, lo=lo, hi=hi):
      logits, new_stats = training._apply_train(model, state.replace(batch_stats=stats), params,
                                                x[lo:hi])
      return training.kd_loss(logits, target[lo:hi], temperature, t_squared,
                              probs=probs), new_stats

    (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    g = jax.tree.map(lambda v: v / num_splits, g)
    grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
    losses.append(loss)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  return training.TrainState(optax.apply_updates(state.params, updates), stats, opt_state), {
      "kd_loss": jnp.mean(jnp.stack(losses))}


def _eta_config(ecfg):
  """The optimiser config whose cosine spans E * eta epochs (`cosine_eta`, module docstring)."""
  eta = float(ecfg.get("cosine_eta", 1.0))
  if eta == 1.0:
    return ecfg
  span = int(ecfg.epochs) * eta
  if eta < 1.0 or span != int(span):
    raise ValueError(f"evaluate.cosine_eta={eta} must be >= 1 and make epochs * eta "
                     f"({int(ecfg.epochs)} * {eta}) a whole number")
  out = ml_collections.ConfigDict(ecfg.to_dict())
  out.epochs = int(span)
  return out


def _run_stretch(state, images, idx, epochs, ks, steps, host, operands, seed_key, *, step):
  """Steps `steps` (L,) in one program: batch i is images[idx[i]] of (epochs[i], ks[i])."""

  def body(state, xs):
    i, e, k, g, h = xs
    batch = {"images": images[i], "idx": i, "epoch": e, "k": k, **h}
    state, metrics = step(state, batch, jax.random.fold_in(seed_key, g), operands)
    return state, metrics["kd_loss"]

  return jax.lax.scan(body, state, (idx, epochs, ks, steps, host))


def _one_step(state, images, i, e, k, g, h, operands, seed_key, *, step):
  """One step of `_run_stretch`'s body as its own program (the CPU path)."""
  batch = {"images": images[i], "idx": i, "epoch": e, "k": k, **h}
  state, metrics = step(state, batch, jax.random.fold_in(seed_key, g), operands)
  return state, metrics["kd_loss"]


def use_scan(ecfg) -> bool:
  """`evaluate.steps_program`: 'scan', 'per_step', or 'auto' (scan except on the CPU)."""
  choice = ecfg.get("steps_program", "auto")
  if choice not in ("auto", "scan", "per_step"):
    raise ValueError(f"evaluate.steps_program={choice!r}: use 'auto', 'scan' or 'per_step'")
  return jax.default_backend() != "cpu" if choice == "auto" else choice == "scan"


class Trainer:
  """Builds a student's model, optimiser and compiled programs once; `train` runs one seed.

  `source` supplies each batch's augmented inputs and targets (`jdd.labels.source`);
  `plan` fixes the step budget shared by the compared sets (`make_plan`). Sets of one kind
  (the random-subset draws) share a trainer: `train(..., source=s)` takes the host fields and
  operands of s and the compiled program of the trainer's source, which is valid because label
  sources of one mode differ only in those (their batch functions close over no set's data).
  """

  def __init__(self, *, source: LabelSource, data, ecfg, plan: Plan):
    self.source, self.data, self.ecfg, self.plan = source, data, ecfg, plan
    self.model = models.build_model(ecfg.student.arch, data.num_classes,
                                    **dict(ecfg.student.get("kwargs", {})))
    self.optimizer = training.make_optimizer(_eta_config(ecfg), plan.reference_steps_per_epoch)
    probs = source.target == "probs"
    accum = int(ecfg.get("grad_accum_steps", 1))
    kd = functools.partial(training.kd_step, probs=probs) if accum == 1 else functools.partial(
        _accumulated_kd_step, num_splits=accum, probs=probs)
    # One student step, (state, batch, rng, operands) -> (state, metrics), un-jitted.
    self.step = functools.partial(
        _student_step, model=self.model, optimizer=self.optimizer, batch_fn=source.batch_fn,
        temperature=1.0 if probs else float(ecfg.temperature),
        t_squared=False if probs else bool(ecfg.t_squared), kd_step=kd)
    self.stretch = jax.jit(functools.partial(_run_stretch, step=self.step))
    self.one_step = jax.jit(functools.partial(_one_step, step=self.step))
    self.scan = use_scan(ecfg)
    self.predict = training.predict_fn(self.model)

  def _score(self, variables, split: str) -> float:
    s = getattr(self.data, split)
    return training.accuracy(self.predict, variables, s.images, s.labels, self.data.mean,
                             self.data.std)

  def _host_batches(self, source, order_key, start: int, stop: int, n: int):
    p = self.plan
    steps = np.arange(start, stop)
    epochs, ks = np.divmod(steps, p.steps_per_epoch)
    orders = {int(e): fkd.batch_indices(order_key, int(e), n, p.batch_size)
              for e in np.unique(epochs)}
    idx = np.stack([orders[int(e)][int(k)] for e, k in zip(epochs, ks)]).astype(np.int32)
    host = {} if source.host_fields is None else {
        name: np.asarray(v) for name, v in source.host_fields(epochs, ks, idx).items()}
    return idx, epochs.astype(np.int32), ks.astype(np.int32), steps.astype(np.int32), host

  def run_steps(self, state, images, idx, epochs, ks, steps, host, operands, seed_key):
    """The steps of one stretch, scanned or one call each (`use_scan`); (state, last loss)."""
    if self.scan:
      state, losses = self.stretch(state, images, idx, epochs, ks, steps,
                                   {n: jnp.asarray(v) for n, v in host.items()}, operands,
                                   seed_key)
      return state, losses[-1]
    loss = None
    for j in range(len(idx)):
      state, loss = self.one_step(state, images, idx[j], epochs[j], ks[j], steps[j],
                                  {n: v[j] for n, v in host.items()}, operands, seed_key)
    return state, loss

  def train(self, images_uint8: np.ndarray, *, order_key, seed: int, source=None,
            progress=None, test_every_eval: bool = False) -> dict:
    """One student from `seed`; its validation curve and the selected and final numbers."""
    t0, c0 = time.time(), time.process_time()
    p, n = self.plan, len(images_uint8)
    source = source or self.source
    if (source.kind, source.target) != (self.source.kind, self.source.target):
      raise ValueError(f"a trainer built for {self.source.kind!r} labels cannot train with "
                       f"{source.kind!r} labels")
    if fkd.steps_per_epoch(n, p.batch_size) != p.steps_per_epoch:
      raise ValueError(f"the plan was made for {p.steps_per_epoch} batches per epoch, the set "
                       f"has {n} images")
    variables = models.init_variables(self.model, jax.random.key(seed), self.data.image_shape)
    state = training.init_state(variables, self.optimizer)
    images, seed_key = jnp.asarray(images_uint8), jax.random.key(seed)
    curve, best, start = [], None, 0
    for stop in p.eval_steps:
      idx, epochs, ks, steps, host = self._host_batches(source, order_key, start, stop, n)
      state, loss = self.run_steps(state, images, idx, epochs, ks, steps, host,
                                   source.operands, seed_key)
      loss = float(loss)
      if not np.isfinite(loss):
        raise FloatingPointError(f"[evaluate] student seed {seed}: non-finite loss at step "
                                 f"{stop}; lower evaluate.lr")
      v = training.variables_of(state)
      point = {"step": stop, "epoch": round(stop / p.reference_steps_per_epoch, 3),
               "loss": loss, "val_top1": self._score(v, "val")}
      if test_every_eval:
        point["test_top1"] = self._score(v, "test")
      curve.append(point)
      if best is None or point["val_top1"] > best[0]["val_top1"]:
        best = (point, v)
      start = stop
      if progress is not None:
        progress(stop, {"loss": loss, "val_top1": point["val_top1"]})
    point, v = best
    test = point.get("test_top1")
    test = self._score(v, "test") if test is None else test
    final = curve[-1].get("test_top1")
    final = (test if point is curve[-1] else self._score(training.variables_of(state), "test")
             ) if final is None else final
    return {"seed": seed, "optimizer_steps": optimizer_steps(state.opt_state), "curve": curve,
            "selected_step": point["step"], "selected_epoch": point["epoch"],
            "val_top1": point["val_top1"], "test_top1": test, "final_epoch_test_top1": final,
            "wall_seconds": round(time.time() - t0, 2),
            "cpu_seconds": round(time.process_time() - c0, 2)}


def optimizer_steps(opt_state) -> int:
  """The update count in an optax state (the schedule's counter): steps actually taken."""
  counts = optax.tree_utils.tree_get_all_with_path(opt_state, "count")
  if not counts:
    raise ValueError("the optimiser state holds no step counter")
  return int(counts[-1][1])


def train_student(images_uint8: np.ndarray, *, source: LabelSource, data, ecfg, order_key,
                  seed: int, plan: Plan | None = None, progress=None,
                  test_every_eval: bool = False) -> dict:
  """One student on a set compared with nothing else (its own epochs); see `Trainer`."""
  plan = plan or make_plan(ecfg, len(images_uint8), len(images_uint8))
  return Trainer(source=source, data=data, ecfg=ecfg, plan=plan).train(
      images_uint8, order_key=order_key, seed=seed, progress=progress,
      test_every_eval=test_every_eval)


def summarise(students: list[dict]) -> dict:
  """Mean and sample spread (ddof 1) of the students' validation-selected test top-1 (percent),
  the references' final-point protocol beside it, and the per-seed means (for pairing)."""
  from jdd.evaluation import stats
  test = [r["test_top1"] * 100 for r in students]
  final = [r["final_epoch_test_top1"] * 100 for r in students]
  by_seed: dict[int, list[float]] = {}
  for r, t in zip(students, test):
    by_seed.setdefault(int(r["seed"]), []).append(t)
  t, f = stats.mean_std(test), stats.mean_std(final)
  return {
      "test_top1_mean": t["mean"], "test_top1_std": t["std"],
      "selection": "evaluation point with the best validation top-1, test reported",
      "reference_protocol_final_epoch_test_top1_mean": f["mean"],
      "reference_protocol_final_epoch_test_top1_std": f["std"],
      "num_seeds": len(by_seed), "num_students": len(students),
      "seed_means": {str(k): float(np.mean(v)) for k, v in sorted(by_seed.items())},
      "per_seed": students}
