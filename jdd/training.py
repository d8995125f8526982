"""Supervised and distillation training steps shared by squeeze (teachers) and evaluation (students).

Steps are pure `step(state, batch, rng) -> (state, metrics)` functions; the driver binds the
model, optimiser and hyperparameters with `functools.partial` and jits them once.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdd.data import augment, normalize


@flax.struct.dataclass
class TrainState:
  params: Any
  batch_stats: Any
  opt_state: Any


def make_optimizer(cfg, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD-momentum or AdamW with cosine decay (optional linear warm-up), per the references.

  `cfg.lr_per_epoch`: hold the learning rate constant within an epoch, as the references'
  per-epoch LambdaLR/CosineAnnealing schedulers do.
  """
  epochs = int(cfg.epochs)
  total = epochs * steps_per_epoch
  warmup = int(cfg.get("warmup_epochs", 0)) * steps_per_epoch
  cosine = optax.cosine_decay_schedule(float(cfg.lr), max(total - warmup, 1))
  if warmup:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, float(cfg.lr), warmup), cosine], [warmup])
  else:
    schedule = cosine
  if cfg.get("lr_per_epoch", False):
    per_step = schedule
    schedule = lambda count: per_step((count // steps_per_epoch) * steps_per_epoch)
  # Weight decay on kernels only (no decay on biases and norm parameters), as SRe2L's validate.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  if cfg.optimizer == "sgd":
    return optax.chain(
        optax.add_decayed_weights(float(cfg.weight_decay), mask=decay_mask),
        optax.sgd(schedule, momentum=float(cfg.momentum)))
  if cfg.optimizer == "adamw":
    return optax.adamw(schedule, weight_decay=float(cfg.weight_decay), mask=decay_mask)
  raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")


def init_state(variables, optimizer) -> TrainState:
  return TrainState(params=variables["params"], batch_stats=variables.get("batch_stats", {}),
                    opt_state=optimizer.init(variables["params"]))


def variables_of(state: TrainState) -> dict:
  out = {"params": state.params}
  if state.batch_stats:
    out["batch_stats"] = state.batch_stats
  return out


def _apply_train(model, state, params, x, dropout_rng=None):
  """Train-mode forward; `dropout_rng` switches on dropout / stochastic depth (MobileNetV2,
  EfficientNet), which jdd's modules keep deterministic when no 'dropout' rng is given."""
  variables = {"params": params}
  rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
    return logits, updates["batch_stats"]
  return model.apply(variables, x, train=True, rngs=rngs), state.batch_stats


def supervised_step(state: TrainState, batch: dict, rng, *, model, optimizer, mean, std,
                    crop_padding: int, flip: bool):
  """Cross-entropy on hard labels with RandomCrop(pad) + flip: the teacher (squeeze) recipe."""
  x = normalize(batch["images"], mean, std)
  k_crop, k_flip = jax.random.split(rng)
  # A third stream for dropout, folded in so the crop/flip draws of existing runs are unchanged.
  k_dropout = jax.random.fold_in(rng, 2)
  if crop_padding:
    x = augment.random_crop_with_padding(k_crop, x, crop_padding, per_image=True,
                                         pad_value=augment.normalized_zero(mean, std))
  if flip:
    x = augment.random_flip(k_flip, x, per_image=True)

  def loss_fn(params):
    logits, new_stats = _apply_train(model, state, params, x, k_dropout)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    return loss, (logits, new_stats)

  (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  new_state = TrainState(optax.apply_updates(state.params, updates), new_stats, opt_state)
  top1 = jnp.mean(jnp.argmax(logits, -1) == batch["labels"])
  return new_state, {"loss": loss, "top1": top1}


def kd_loss(student_logits, teacher_logits, temperature: float, t_squared: bool,
            probs: bool = False):
  """KL(softmax(t/T) || softmax(s/T)), batch mean; x T^2 only when asked (Tiny-ImageNet code).

  probs=True: `teacher_logits` already holds target probabilities (hard labels, one-hot or
  mixed), used as they are: KL(t || softmax(s/T)), whose gradient is cross-entropy's.
  """
  t = teacher_logits.astype(jnp.float32)
  t = t if probs else jax.nn.softmax(t / temperature, -1)
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, -1)
  kl = jnp.sum(jax.scipy.special.xlogy(t, t) - t * log_s, -1).mean()
  return kl * temperature**2 if t_squared else kl


def kd_step(state: TrainState, batch: dict, rng, *, model, optimizer, temperature: float,
            t_squared: bool, probs: bool = False):
  """One student step on an already augmented batch and its teacher logits (or, with
  probs=True, its target probabilities)."""
  del rng  # all randomness of a relabelled batch lives in its (epoch, batch) key

  def loss_fn(params):
    logits, new_stats = _apply_train(model, state, params, batch["images"])
    return kd_loss(logits, batch["teacher_logits"], temperature, t_squared, probs), new_stats

  (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  return TrainState(optax.apply_updates(state.params, updates), new_stats, opt_state), {
      "kd_loss": loss}


def predict_fn(model):
  """Jitted eval-mode logits of normalised images (built once per model)."""
  return jax.jit(lambda variables, x: model.apply(variables, x, train=False))


def accuracy(predict, variables, images_uint8: np.ndarray, labels: np.ndarray, mean, std,
             batch_size: int = 500) -> float:
  """Top-1 over a split in fixed-size batches (the last one padded, so nothing recompiles)."""
  n = len(labels)
  correct = 0
  for start in range(0, n, batch_size):
    chunk = images_uint8[start:start + batch_size]
    m = len(chunk)
    if m < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - m, *chunk.shape[1:]), chunk.dtype)])
    logits = predict(variables, normalize(jnp.asarray(chunk), mean, std))
    correct += int(np.sum(np.asarray(jnp.argmax(logits, -1))[:m] == labels[start:start + m]))
  return correct / max(n, 1)
