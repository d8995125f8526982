"""Student training on a distilled (or random real) set, with honest model selection.

A student is trained from scratch on the small set with soft labels from a `LabelSource` (FKD
logits stored or online, INFER's static or dynamic labels), as the references' validate scripts
do: AdamW + cosine, KL with temperature.
Every `eval_every` epochs it is scored on the validation split (carved from train when the
dataset has none) and on the test split. The reported number is the test top-1 at the epoch
with the best *validation* top-1; the references' own protocol (the last epoch's test top-1)
is reported beside it, labelled as such. Several evaluation seeds give mean and std.

Two options FADRM's validate scripts need (defaults leave every other method's run unchanged,
bit for bit, since they take the original code path):
- `evaluate.grad_accum_steps` k > 1: each batch of b is fed as k consecutive micro-batches
  (boundaries floor(i b / k), those of `jdd.labels.bssl.split_points`), the student's BN
  normalising each with its own statistics and updating its running statistics k times; the
  gradients of the micro-batch losses, each divided by k as the reference's
  `loss / accumulation_steps` does, are summed into one optimiser update per batch. This is
  what BSSL labels are made for: its teachers saw the same micro-batches.
- `evaluate.cosine_eta` eta != 1: lr_e = lr0 * 0.5 (1 + cos(pi e / (E eta))), i.e. the cosine
  of a run eta times as long, cut at E epochs (eta = 2 ends at half the initial rate). E * eta
  must be a whole number of epochs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jdd import models, training
from jdd.labels import bssl, fkd
from jdd.labels.source import LabelSource


def _student_step(state, batch, rng, operands, *, model, optimizer, batch_fn, temperature,
                  t_squared, kd_step=training.kd_step):
  x, logits = batch_fn(operands, batch)
  return kd_step(state, {"images": x, "teacher_logits": logits}, rng, model=model,
                 optimizer=optimizer, temperature=temperature, t_squared=t_squared)


def _accumulated_kd_step(state, batch, rng, *, model, optimizer, temperature, t_squared,
                         num_splits: int):
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
      return training.kd_loss(logits, target[lo:hi], temperature, t_squared), new_stats

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


def train_student(images_uint8: np.ndarray, *, source: LabelSource, data, ecfg, order_key,
                  seed: int, progress=None) -> dict:
  """Trains one student; returns its validation/test curve and the selected numbers.

  source: where each batch's augmented inputs and target logits come from (stored FKD logits,
  online teachers, INFER static labels, ...); see `jdd.labels.source`. The batch order of
  epoch e is `fkd.batch_indices(order_key, e, ...)`, the order stored labels were made for.
  """
  mean, std = data.mean, data.std
  n = len(images_uint8)
  epochs, batch_size = int(ecfg.epochs), int(min(ecfg.batch_size, n))
  s = fkd.steps_per_epoch(n, batch_size)
  student = models.build_model(ecfg.student.arch, data.num_classes,
                               **dict(ecfg.student.get("kwargs", {})))
  variables = models.init_variables(student, jax.random.key(seed), data.image_shape)
  optimizer = training.make_optimizer(_eta_config(ecfg), s)
  state = training.init_state(variables, optimizer)
  accum = int(ecfg.get("grad_accum_steps", 1))
  kd = {} if accum == 1 else {"kd_step": functools.partial(_accumulated_kd_step,
                                                            num_splits=accum)}
  step = jax.jit(functools.partial(
      _student_step, model=student, optimizer=optimizer, batch_fn=source.batch_fn,
      temperature=float(ecfg.temperature), t_squared=bool(ecfg.t_squared), **kd))
  predict = training.predict_fn(student)
  images = jnp.asarray(images_uint8)
  curve = []
  for e in range(epochs):
    idx = fkd.batch_indices(order_key, e, n, batch_size)
    for k in range(s):
      batch = {"images": images[idx[k]], "idx": idx[k], "epoch": e, "k": k}
      if source.host_fields is not None:
        batch.update(source.host_fields(e, k, idx[k]))
      state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(seed), e * s + k),
                            source.operands)
    if (e + 1) % int(ecfg.eval_every) == 0 or e + 1 == epochs:
      v = training.variables_of(state)
      curve.append({
          "epoch": e + 1, "kd_loss": float(metrics["kd_loss"]),
          "val_top1": training.accuracy(predict, v, data.val.images, data.val.labels, mean, std),
          "test_top1": training.accuracy(predict, v, data.test.images, data.test.labels, mean,
                                         std)})
      if not np.isfinite(curve[-1]["kd_loss"]):
        raise FloatingPointError(f"[evaluate] student seed {seed}: non-finite kd_loss at epoch "
                                 f"{e + 1}; lower evaluate.lr")
    if progress is not None:
      progress(e + 1, {"kd_loss": float(metrics["kd_loss"])})
  best = max(curve, key=lambda r: (r["val_top1"], -r["epoch"]))
  return {"seed": seed, "curve": curve, "selected_epoch": best["epoch"],
          "val_top1": best["val_top1"], "test_top1": best["test_top1"],
          "final_epoch_test_top1": curve[-1]["test_top1"]}


def summarise(per_seed: list[dict]) -> dict:
  test = np.array([r["test_top1"] for r in per_seed]) * 100
  final = np.array([r["final_epoch_test_top1"] for r in per_seed]) * 100
  return {
      "test_top1_mean": float(test.mean()), "test_top1_std": float(test.std()),
      "selection": "epoch with the best validation top-1, test reported",
      "reference_protocol_final_epoch_test_top1_mean": float(final.mean()),
      "reference_protocol_final_epoch_test_top1_std": float(final.std()),
      "num_seeds": len(per_seed), "per_seed": per_seed}
