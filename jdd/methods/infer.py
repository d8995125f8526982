"""INFER: universal feature compensators (UFC) added to real images, one per class group.

Zhang, Du, Liu & Zhou, "Breaking Class Barriers: Efficient Dataset Distillation via
Inter-Class Feature Compensator", ICLR 2025 (arXiv 2408.06927); reference code
zhangxin-xd/UFC, `ufc_generation/ufc_{cifar,imgnet}.py` (research/unimodal_dd_methods.md §4).

The method, as reproduced:
- Budget: with M teachers and class groups of B classes, J = floor(IPC * B / (B + M)) real
  images per class are kept (the reference's floor(IPC / (M/C + 1)), B = C in every released
  setting) and J * M compensators per group are learnt, so J * (C + M * C/B) <= IPC * C
  image-sized tensors are stored, and (M + 1) * J instances per class are materialised.
- For class group g, real slot j and teacher m: u in R^{1 x H x W x 3}, zero-initialised,
  broadcast over the batch {x_c^(j)}_{c in g} (one real image per class of the group) and
  optimised alone with
      (1/B) sum_c CE(f_m(A(x_c + u)), c) + r_bn * sum_l w_l (||RV_l - var_l|| + ||RM_l - mu_l||)
  through teacher m in eval mode (BN statistics of the batch of sums; w_1 = 10), Adam
  (0.5, 0.9, eps 1e-8), cosine learning rate. A is the reference's augmentation: a wrap-around
  roll by U{0..J} (CIFAR), or RandomResizedCrop + flip + roll (ImageNet), one draw per batch.
- Instance (c, i) of the materialised set is the real image x_c^(i) for i < J, else
  clip(x_c^(j) + u_{g,j,m}) with m = i // J - 1, j = i % J (the reference's `ipc_id` order).
- Teacher m is the m-th of `config.teacher_names`; teachers without BatchNorm contribute CE only.

Deliberate differences from the reference code (§4.7):
- The materialised instance is clip(x + u) with u *after* its last update (the reference saves
  the sum from before the last Adam step), and jdd stores the real images and the compensators
  themselves (the budget), deriving the instances; the reference stores only the instances.
- Real images are drawn at random from the training split with a recorded key (the class-major
  training indices go to the manifest) instead of a Google-Drive tensor file.
- The budget uses integer arithmetic (no float floor surprises) and the group size B, which
  equals the reference's formula when B = C; an IPC that leaves no real image per class is a
  ValueError naming the smallest IPC that works, not an empty set.
- Every draw is seeded: compensator (m, g, j) augments at step t with
  fold_in(fold_in(key, t), unit id), so a resumed run is bit-identical and a unit's result does
  not depend on which units share its round. Units of one teacher run side by side via vmap.
- `recover.clip_in_loss` (default False: the paper's loss on the unclipped sum) optionally
  feeds the teacher clip(x + u), the image that is exported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdd.data import normalize
from jdd.methods import sre2l
from jdd.models import ordered_bn_stats
from jdd.objectives import bn_statistics_loss


# ------------------------------------------------------------------------------ the budget


@dataclasses.dataclass(frozen=True)
class CompensatorBudget:
  """INFER's storage arithmetic; sizes count image-shaped tensors (a u is one)."""
  ipc: int
  num_classes: int
  num_teachers: int
  classes_per_group: int
  num_groups: int
  real_per_class: int            # J (the reference's ipc_init)
  instances_per_class: int       # (M + 1) J (the reference's ipc_end)
  real_images: int               # J C, stored
  compensators: int              # J M G, stored
  stored: int                    # real_images + compensators
  budget: int                    # IPC C
  materialised_instances: int    # (M + 1) J C, derived


def compensator_budget(ipc: int, num_classes: int, num_teachers: int,
                       classes_per_group: int | None = None) -> CompensatorBudget:
  """J = floor(IPC B / (B + M)) real images per class; raises when J would be 0."""
  c, m = int(num_classes), int(num_teachers)
  b = c if classes_per_group is None else min(int(classes_per_group), c)
  if ipc < 1 or m < 1 or c < 1:
    raise ValueError(f"need ipc >= 1, at least one teacher and one class; got ipc={ipc}, "
                     f"{m} teachers, {c} classes")
  if c % b:
    raise ValueError(f"recover.classes_per_batch={b} must divide the {c} classes (each "
                     f"compensator serves one block of classes); pick a divisor of {c}")
  groups = c // b
  j = (ipc * b) // (b + m)       # == floor(IPC / (M / B + 1)), in integers
  if j == 0:
    smallest = -(-(b + m) // b)  # ceil((B + M) / B)
    raise ValueError(
        f"INFER with ipc={ipc}, {m} teachers and {b} classes per group keeps "
        f"floor({ipc} * {b} / ({b} + {m})) = 0 real images per class, so nothing would be "
        f"distilled; the smallest IPC that works is {smallest} (or use fewer teachers).")
  return CompensatorBudget(
      ipc=ipc, num_classes=c, num_teachers=m, classes_per_group=b, num_groups=groups,
      real_per_class=j, instances_per_class=(m + 1) * j, real_images=j * c,
      compensators=j * m * groups, stored=j * c + j * m * groups, budget=ipc * c,
      materialised_instances=(m + 1) * j * c)


# ------------------------------------------------------------------------ the pure maths


@dataclasses.dataclass(frozen=True)
class InferHParams(sre2l.RecoverHParams):
  """SRe2L's recover hyperparameters, plus whether the loss sees the clipped instance."""
  clip_in_loss: bool


@flax.struct.dataclass
class CompensatorState:
  u: jax.Array           # (U, 1, H, W, C) float32, normalised pixel space; one per unit
  opt_state: Any


def hparams_from_config(rc, mean, std) -> InferHParams:
  base = sre2l.hparams_from_config(rc, mean, std)
  return InferHParams(**dataclasses.asdict(base), clip_in_loss=bool(rc.clip_in_loss))


def init(num_units: int, image_shape: tuple[int, ...], hp: InferHParams) -> CompensatorState:
  """Zero compensators: at step 0 every instance is its real image."""
  u = jnp.zeros((num_units, 1, *image_shape), jnp.float32)
  return CompensatorState(u=u, opt_state=sre2l.make_optimizer(hp).init(u))


def unit_loss(u, real, targets, key, teacher_variables, *, model, hp: InferHParams):
  """INFER's loss for one compensator u (1, H, W, C) over its real batch (B, H, W, C)."""
  x = real + u                                   # one u for every class of the group
  if hp.clip_in_loss:
    x = sre2l.clip_to_valid(x, hp)
  x_aug = sre2l.augment_batch(key, x, hp)
  logits, collections = model.apply(teacher_variables, x_aug, train=False,
                                    mutable=["bn_stats"])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  entries = ordered_bn_stats(collections.get("bn_stats", {}))
  bn = (bn_statistics_loss(entries, hp.first_bn_multiplier) if entries
        else jnp.zeros((), jnp.float32))        # a BN-free teacher contributes CE only
  top1 = jnp.mean(jnp.argmax(logits, -1) == targets)
  return ce + hp.r_bn * bn, (ce, bn, top1)


def compensator_grads(u, batch: dict, rng: jax.Array, teacher_variables, *, model,
                      hp: InferHParams):
  """(d loss_i / d u_i for every unit i, metrics); see `step` for `batch`."""

  def total_loss(u):
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(batch["unit_ids"])
    losses, (ce, bn, top1) = jax.vmap(
        lambda ui, x, y, k: unit_loss(ui, x, y, k, teacher_variables, model=model, hp=hp))(
            u, batch["real"], batch["targets"], keys)
    # Units are independent, so the gradient of the sum is each unit's own gradient.
    return losses.sum(), {"loss": losses.mean(), "ce": ce.mean(), "bn": bn.mean(),
                          "teacher_top1": top1.mean()}

  return jax.grad(total_loss, has_aux=True)(u)


def step(state: CompensatorState, batch: dict, rng: jax.Array, teacher_variables, *, model,
         hp: InferHParams):
  """One Adam step on every unit of a round, all through the same teacher.

  batch: {'real': (U, B, H, W, C) normalised real images, 'targets': (U, B) int,
          'unit_ids': (U,) int (global ids: the key of unit i at this step is
          fold_in(rng, unit_ids[i]))}.
  """
  grads, metrics = compensator_grads(state.u, batch, rng, teacher_variables, model=model, hp=hp)
  updates, opt_state = sre2l.make_optimizer(hp).update(grads, state.opt_state, state.u)
  return CompensatorState(u=optax.apply_updates(state.u, updates), opt_state=opt_state), metrics


def materialise(real_uint8: np.ndarray, compensators: np.ndarray, mean, std,
                classes_per_group: int) -> np.ndarray:
  """The (C (M+1) J, H, W, C) uint8 instances, class-major in the reference's `ipc_id` order.

  real_uint8: (C, J, H, W, Ch); compensators: (G, J, M, H, W, Ch) in normalised space.
  Instance i of class c is real[c, i] for i < J, else clip(real[c, j] + u[g, j, m]) with
  m = i // J - 1, j = i % J, g = c // B.
  """
  c, j = real_uint8.shape[:2]
  m = compensators.shape[2]
  x = np.asarray(normalize(real_uint8, mean, std), np.float32)           # (C, J, H, W, Ch)
  u = np.repeat(np.asarray(compensators, np.float32), classes_per_group, axis=0)  # (C, J, M..)
  sums = sre2l.to_uint8(x[:, :, None] + u, mean, std)                    # (C, J, M, H, W, Ch)
  per_class = [real_uint8] + [sums[:, :, k] for k in range(m)]           # (C, J, ...) each
  return np.stack(per_class, axis=1).reshape(c * (m + 1) * j, *real_uint8.shape[2:])
