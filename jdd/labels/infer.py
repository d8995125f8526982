"""INFER's soft labels: static (one ensemble logit vector per image) and dynamic (online).

Zhang, Du, Liu & Zhou, "Breaking Class Barriers: Efficient Dataset Distillation via
Inter-Class Feature Compensator", ICLR 2025; reference code zhangxin-xd/UFC,
`ufc_validation/val_static.py` and `val_dyn.py` (research/unimodal_dd_methods.md §4.5).

- Static: y_i = mean over the M teachers (eval mode) of their logits on the *un-augmented*
  image i. A student batch is RandomCrop(pad) + flip per image, then one Mixup per batch
  (alpha 0.8); its target is lam * y_i + (1 - lam) * y_perm(i), i.e. the mix happens in logit
  space and the crop is ignored, as in the reference. Loss KL(softmax(y/T) || softmax(s/T)).
- Dynamic: the teachers run on every augmented, mixed batch and their logits are averaged
  (online KD); the config divides the epochs by (M + 1).

Deliberate differences from the reference code: static labels are written to the export folder
(float32, counted in the manifest) instead of being recomputed in memory at every start, so a
static-label evaluation needs no teacher; every crop, flip and mix draw is derived from keys.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jdd.data import augment, normalize
from jdd.labels import fkd
from jdd.labels.source import Ensemble


def static_logits(models: Sequence[Any], variables: Sequence[Any], images_uint8: np.ndarray,
                  mean, std, batch_size: int = 256) -> np.ndarray:
  """(N, C) float32: the mean of the teachers' eval-mode logits on the un-augmented images."""
  ensemble = Ensemble(tuple(models))
  fn = jax.jit(lambda v, x: ensemble.apply(v, normalize(x, mean, std), train=False)
               .astype(jnp.float32))
  n = len(images_uint8)
  out = []
  for start in range(0, n, batch_size):
    chunk = images_uint8[start:start + batch_size]
    m = len(chunk)
    if m < batch_size and n > batch_size:  # pad the last chunk: one compiled shape
      chunk = np.concatenate([chunk, np.zeros((batch_size - m, *chunk.shape[1:]), chunk.dtype)])
    out.append(np.asarray(fn(tuple(variables), jnp.asarray(chunk)))[:m])
  return np.concatenate(out).astype(np.float32)


def mix_logits(logits, params: dict, mix: str):
  """The target of a mixed batch in logit space: lam * y + (1 - lam) * y[perm].

  Mixup uses its lambda; CutMix the area-adjusted one (the pasted box's share); 'none' keeps y.
  """
  if mix == "none":
    return logits
  lam = params["lam"] if mix == "mixup" else params["lam_adjusted"]
  lam = jnp.asarray(lam, jnp.float32)
  logits = logits.astype(jnp.float32)
  return lam * logits + (1.0 - lam) * logits[params["perm"]]


def static_batch_fn(operands, batch: dict, *, cfg, mean, std, aug_key):
  """(x, target logits) of a student batch under static labels; operands unused."""
  del operands
  x = normalize(batch["images"], mean, std)
  x, params = augment.augment_for_relabel(
      augment.relabel_key(aug_key, batch["epoch"], batch["k"]), x, cfg,
      pad_value=augment.normalized_zero(mean, std), return_params=True)
  return x, mix_logits(batch["image_logits"], params, cfg.mix)


def online_batch_fn(operands, batch: dict, *, ensemble: Ensemble, cfg, mean, std, aug_key):
  """(x, ensemble logits on x): online labels (INFER dynamic; FKD 'online' with 1 teacher)."""
  x = fkd.augmented_batch(aug_key, batch["epoch"], batch["k"], batch["images"], cfg=cfg,
                          mean=mean, std=std)
  return x, ensemble.apply(operands, x, train=False)
