"""SRe2L recover: synthesise images by matching a frozen teacher's BatchNorm statistics.

Yin, Xing & Shen, "Squeeze, Recover and Relabel: Dataset Condensation at ImageNet Scale From
A New Perspective", NeurIPS 2023 (arXiv 2306.13092); reference code VILA-Lab/SRe2L.

What is reproduced exactly (see shared/research/unimodal_dd_methods.md §2.1-2.2, §3.3):
- loss = CE(teacher(x_aug), y) + r_bn * sum_l w_l (||RV_l - var_l||_2 + ||RM_l - mu_l||_2),
  over every BN input, biased variance, plain (unsquared) L2 norms, w_1 = 10 on the stem BN;
- teacher in eval mode (running statistics normalise the forward; batch statistics of the
  synthetic batch enter only the loss);
- one image per class per batch, x ~ N(0, 1) in normalised space;
- Adam(betas=(0.5, 0.9), eps=1e-8) with lr0 * 0.5 (1 + cos(pi t / T)), no warm-up;
- per step: one RandomResizedCrop box and one flip for the whole batch, then a wrap-around roll
  by (randint(0, J), randint(0, J)) (or {-J..J} for Tiny-ImageNet);
- after each update, per-channel clipping to the image of [0, 1] under the normalisation.

Deliberate differences from the reference code:
- Every draw is seeded: group g's initial pixels come from fold_in(init_key, g) and its
  augmentation at iteration t from fold_in(fold_in(key, t), g). A resumed run is bit-identical
  and a group's result does not depend on how many groups run side by side.
- Independent class batches (one per IPC index and class block) are optimised side by side in
  one jitted step via vmap. Each group keeps its own BN statistics, crop box and flip, and Adam
  is elementwise, so this equals running the groups one after another, only faster.
- The dead "best image" bookkeeping is gone: the final iterate is exported, which is what the
  reference saves in practice.
- Export rounds to uint8 (the reference truncates with `astype(uint8)` and saves lossy JPEG);
  the exported PNG-exact uint8 images are what relabel and evaluation read back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdd.data import augment
from jdd.objectives import bn_statistics_loss_from_collection


@dataclasses.dataclass(frozen=True)
class RecoverHParams:
  iterations: int
  lr: float
  r_bn: float
  first_bn_multiplier: float
  random_resized_crop: bool
  crop_scale: tuple[float, float]
  flip: bool
  jitter: int
  jitter_symmetric: bool
  mean: tuple[float, ...]
  std: tuple[float, ...]

  @property
  def augmentation(self) -> "RecoverAugmentation":
    return RecoverAugmentation(self.random_resized_crop, self.crop_scale, self.flip, self.jitter,
                               self.jitter_symmetric)


@flax.struct.dataclass
class RecoverState:
  images: jax.Array      # (G, B, H, W, C) float32, normalised pixel space
  opt_state: Any


def hparams_from_config(rc, mean, std) -> RecoverHParams:
  return RecoverHParams(
      iterations=int(rc.iterations), lr=float(rc.lr), r_bn=float(rc.r_bn),
      first_bn_multiplier=float(rc.first_bn_multiplier),
      random_resized_crop=bool(rc.random_resized_crop),
      crop_scale=tuple(float(s) for s in rc.crop_scale), flip=bool(rc.flip),
      jitter=int(rc.jitter), jitter_symmetric=bool(rc.jitter_symmetric),
      mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


def make_optimizer(hp: RecoverHParams) -> optax.GradientTransformation:
  schedule = optax.cosine_decay_schedule(hp.lr, hp.iterations)
  return optax.adam(schedule, b1=0.5, b2=0.9, eps=1e-8)


def group_targets(num_classes: int, classes_per_batch: int, ipc: int) -> np.ndarray:
  """(ipc * blocks, B) class ids: group g = (ipc index g // blocks, class block g % blocks)."""
  b = min(num_classes, classes_per_batch)
  if num_classes % b:
    raise ValueError(
        f"recover.classes_per_batch={classes_per_batch} must divide the {num_classes} classes "
        f"(each batch holds one image per class of one block); pick a divisor of {num_classes}.")
  blocks = num_classes // b
  rows = [np.arange(k * b, (k + 1) * b) for _ in range(ipc) for k in range(blocks)]
  return np.stack(rows).astype(np.int32)


def init_images(key: jax.Array, group_ids: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """N(0, 1) pixels in normalised space, group g drawn from fold_in(key, g)."""
  return jax.vmap(lambda g: jax.random.normal(jax.random.fold_in(key, g), shape))(group_ids)


def init(key, group_ids, classes_per_group, image_shape, hp: RecoverHParams) -> RecoverState:
  images = init_images(key, group_ids, (classes_per_group, *image_shape))
  images = clip_to_valid(images, hp)
  return RecoverState(images=images, opt_state=make_optimizer(hp).init(images))


def clip_to_valid(x: jax.Array, hp: RecoverHParams) -> jax.Array:
  mean, std = jnp.asarray(hp.mean), jnp.asarray(hp.std)
  return jnp.clip(x, (0.0 - mean) / std, (1.0 - mean) / std)


@dataclasses.dataclass(frozen=True)
class RecoverAugmentation:
  """The reference's recover augmentation for one class batch (B, H, W, C): one
  RandomResizedCrop box and one flip for the whole batch, then a wrap-around roll by
  (randint(0, J), randint(0, J)), or by {-J..J} when `jitter_symmetric` (Tiny-ImageNet)."""
  random_resized_crop: bool
  crop_scale: tuple[float, float]
  flip: bool
  jitter: int
  jitter_symmetric: bool = False

  def __call__(self, key: jax.Array, x: jax.Array) -> jax.Array:
    k_crop, k_flip, k_roll = jax.random.split(key, 3)
    h, w = x.shape[1:3]
    if self.random_resized_crop:
      x = augment.random_resized_crop(k_crop, x, (h, w), scale=self.crop_scale,
                                      ratio=(3 / 4, 4 / 3), per_image=False)
    if self.flip:
      x = augment.random_flip(k_flip, x, per_image=False)
    if self.jitter:
      x = augment.random_roll(k_roll, x, self.jitter, symmetric=self.jitter_symmetric)
    return x


def augment_batch(key: jax.Array, x: jax.Array, hp) -> jax.Array:
  """`hp.augmentation` applied to one class batch (any recover hparams that define it)."""
  return hp.augmentation(key, x)


def group_loss(x, targets, key, teacher_variables, *, model, hp: RecoverHParams):
  """SRe2L's loss for one class batch; returns (loss, (ce, bn, top1))."""
  x_aug = augment_batch(key, x, hp)
  logits, collections = model.apply(teacher_variables, x_aug, train=False,
                                    mutable=["bn_stats"])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  bn = bn_statistics_loss_from_collection(collections["bn_stats"], hp.first_bn_multiplier)
  top1 = jnp.mean(jnp.argmax(logits, -1) == targets)
  return ce + hp.r_bn * bn, (ce, bn, top1)


def step(state: RecoverState, batch: dict, rng: jax.Array, teacher_variables, *, model,
         hp: RecoverHParams):
  """One Adam step on all groups. batch: {'targets': (G, B) int, 'group_ids': (G,) int}."""

  def total_loss(images):
    keys = jax.vmap(lambda g: jax.random.fold_in(rng, g))(batch["group_ids"])
    losses, (ce, bn, top1) = jax.vmap(
        lambda x, y, k: group_loss(x, y, k, teacher_variables, model=model, hp=hp))(
            images, batch["targets"], keys)
    # Groups are independent, so the gradient of the sum is each group's own gradient.
    return losses.sum(), {"loss": losses.mean(), "ce": ce.mean(), "bn": bn.mean(),
                          "teacher_top1": top1.mean()}

  grads, metrics = jax.grad(total_loss, has_aux=True)(state.images)
  updates, opt_state = make_optimizer(hp).update(grads, state.opt_state, state.images)
  images = clip_to_valid(optax.apply_updates(state.images, updates), hp)
  return RecoverState(images=images, opt_state=opt_state), metrics


def to_uint8(images_normalised: np.ndarray, mean, std) -> np.ndarray:
  """Denormalise to [0, 1] and round to uint8 (the reference truncates)."""
  x = np.asarray(images_normalised, np.float32) * np.asarray(std, np.float32) + np.asarray(
      mean, np.float32)
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
