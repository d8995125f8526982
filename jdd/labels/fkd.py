"""FKD-style soft labels whose crops, flips and mixes are derived from keys, never stored.

The reference (SRe2L relabel, FKD) saves, per (epoch, batch), the crop boxes, flip bits,
permutation, lambda, bbox and teacher logits, then patches PyTorch's DataLoader so the student
can replay them. Here the batch order of epoch e is `permutation(fold_in(order_key, e))` and the
augmentation of (e, k) is `augment_for_relabel(relabel_key(aug_key, e, k), ...)`, so teacher and
student rebuild the same batch from the keys alone: the stored labels are just the logits
(E, S, b, C) in float16, or nothing when the teacher runs online.

Deliberate differences: the teacher always runs in eval mode (the reference CIFAR relabel
leaves it in train mode by accident, drifting its running statistics); a final partial batch
is filled by wrapping around the epoch's permutation so that every step has the same shape.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jdd.data import augment, normalize


def steps_per_epoch(num_images: int, batch_size: int) -> int:
  return math.ceil(num_images / batch_size)


def batch_indices(order_key, epoch: int, num_images: int, batch_size: int) -> np.ndarray:
  """(S, b) image indices of one epoch: a keyed permutation, wrapped to fill the last batch."""
  perm = np.asarray(jax.random.permutation(jax.random.fold_in(order_key, epoch), num_images))
  s = steps_per_epoch(num_images, batch_size)
  return np.take(perm, np.arange(s * batch_size), mode="wrap").reshape(s, batch_size)


def augmented_batch(aug_key, epoch, batch, images_uint8, *, cfg, mean, std):
  """The normalised, augmented images of FKD batch (epoch, batch)."""
  x = normalize(images_uint8, mean, std)
  return augment.augment_for_relabel(
      augment.relabel_key(aug_key, epoch, batch), x, cfg,
      pad_value=augment.normalized_zero(mean, std))


def make_relabel_fn(teacher_model, *, cfg, mean, std):
  """Jitted (teacher_variables, aug_key, epoch, batch, images) -> float16 logits."""

  def fn(variables, aug_key, epoch, batch, images_uint8):
    x = augmented_batch(aug_key, epoch, batch, images_uint8, cfg=cfg, mean=mean, std=std)
    return teacher_model.apply(variables, x, train=False).astype(jnp.float16)

  return jax.jit(fn)


def compute_soft_labels(teacher_model, teacher_variables, images_uint8: np.ndarray, *, epochs,
                        batch_size, order_key, aug_key, cfg, mean, std, progress=None,
                        spread=None):
  """Teacher logits for every (epoch, batch) of student training: (E, S, b, C) float16.

  Epoch e depends on (keys, e) alone: `spread(epochs, epoch_fn)` may compute the epochs
  elsewhere and must return their stack (`jdd.distributed.spread_arrays`)."""
  relabel = make_relabel_fn(teacher_model, cfg=cfg, mean=mean, std=std)
  return relabel_epochs(relabel, teacher_variables, images_uint8, epochs=epochs,
                        batch_size=batch_size, order_key=order_key, aug_key=aug_key,
                        progress=progress, spread=spread)


def relabel_epochs(relabel, teachers, images_uint8: np.ndarray, *, epochs, batch_size,
                   order_key, aug_key, progress=None, spread=None) -> np.ndarray:
  """`relabel(teachers, aug_key, e, k, batch)` over every (epoch e, batch k) of the student's
  order (`batch_indices`): (E, S, b, C). The loop FKD and BSSL labels share; epoch e depends on
  (keys, e) alone, so `spread(epochs, epoch_fn)` may compute the epochs elsewhere and must
  return their stack. `progress(n)` hears how many epochs this process has finished."""
  images = jnp.asarray(images_uint8)
  finished = [0]

  def epoch(e):
    idx = batch_indices(order_key, e, len(images_uint8), batch_size)
    out = np.stack([np.asarray(relabel(teachers, aug_key, e, k, images[idx[k]]))
                    for k in range(len(idx))])
    finished[0] += 1
    if progress is not None:
      progress(finished[0])
    return out

  if spread is not None:
    return spread(epochs, epoch)
  return np.stack([epoch(e) for e in range(epochs)])
