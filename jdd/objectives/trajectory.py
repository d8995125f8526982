"""Trajectory matching for image-text distillation: student unroll, distance, exact and TESLA
gradients, as pure functions of pytrees.

References: `distill.py` of princetonvisualai/multimodal_dataset_distillation (MTT-VL: exact
MTT, backprop through the whole unroll) and `distill_tesla_lors.py` / `distill_repblend.py` of
silicx/LoRS_Distill and zhangxin-xd/RepBlend (TESLA two-pass gradient), as written down in
shared/research/multimodal_dd_methods.md §5.3-5.6. Facts carried over:

* the student starts at an expert snapshot theta*_s and takes `syn_steps` plain SGD steps
  theta_{k+1} = theta_k - eta_m g_k per modality m (image, text), each on a mini-batch of the
  synthetic pairs; mini-batches are consecutive chunks of a random permutation, reshuffled
  when fewer than a chunk remain;
* L = ||Delta_img||^2 / D_img + ||Delta_txt||^2 / D_txt, with Delta_m = theta_{m,N} -
  theta*_{m,s+M} and D_m = ||theta*_{m,s} - theta*_{m,s+M}||^2 (squared L2 over every
  parameter), or the merged form (sum of numerators) / (sum of denominators);
* TESLA: pass 1 unrolls with detached gradients and sums G_m = sum_k g_k; pass 2 recomputes
  each g_i at theta_i and backpropagates <dL/dg_i, g_i> to the synthetic data, where
  dL/dg_i = 2 (eta_m (theta*_T - theta_0) + eta_m^2 G_m) / D_m = -2 eta_m Delta_m / D_m is the
  same for every step. The learned learning rates get dL/deta_m with G held constant.

jdd differs on purpose (research §9, weaknesses 7 and 8):

* every random draw inside a student step (dropout masks, RepBlend's blending lambda and
  permutation) comes from the step's key, so pass 2 replays pass 1 exactly (the reference
  redraws dropout masks in pass 2, so its recomputed g_i is not the step it took);
* the learning-rate gradient uses the same normalisation as the data gradient (the reference
  always uses per-branch denominators for it, even with `--merge_loss_branches`);
* pass 2 re-runs the unroll from theta_0 instead of storing every theta_i, so TESLA memory is
  constant in `syn_steps` for the parameters too (the reference keeps the list of theta_i);
* exact mode (differentiate through the `lax.scan` unroll, optionally rematerialised with
  `jax.checkpoint`) is available for every method, not only MTT-VL.

A student loss is `loss_fn(theta, data, idx, key) -> scalar`: theta = {'image', 'text'}
parameter pytrees, data the differentiable distilled pytree (images, texts, similarity
factors), idx the (b,) mini-batch indices and key the step's key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

MODALITIES = ("image", "text")
StudentLoss = Callable[[dict, Any, jax.Array, jax.Array], jax.Array]


def minibatch_indices(key: jax.Array, n: int, batch: int, steps: int) -> jax.Array:
  """(steps, batch) indices: chunks of a permutation, a fresh permutation when fewer than
  `batch` indices remain (the reference's cycling, §5.3). Permutation p is drawn from
  fold_in(key, p), so the order is a pure function of the key."""
  if batch > n:
    raise ValueError(f"mini-batch {batch} exceeds the {n} synthetic pairs; lower "
                     "distill.mini_batch")
  per = n // batch
  num_perms = -(-steps // per)
  perms = jnp.stack([jax.random.permutation(jax.random.fold_in(key, p), n)
                     for p in range(num_perms)])
  k = jnp.arange(steps)
  rows = (k // per)[:, None]
  cols = ((k % per) * batch)[:, None] + jnp.arange(batch)[None, :]
  return perms[rows, cols]


def step_keys(key: jax.Array, steps: int) -> jax.Array:
  """One key per student step, fold_in(key, k): identical in every pass that replays step k."""
  return jax.vmap(lambda k: jax.random.fold_in(key, k))(jnp.arange(steps))


def sq_norm(tree) -> jax.Array:
  return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def _sub(a, b):
  return jax.tree.map(jnp.subtract, a, b)


def match_loss(theta_end: dict, start: dict, target: dict, merge: bool):
  """The normalised parameter distance (§5.4) and its per-modality numerators/denominators."""
  num = {m: sq_norm(_sub(theta_end[m], target[m])) for m in MODALITIES}
  den = {m: sq_norm(_sub(start[m], target[m])) for m in MODALITIES}
  if merge:
    loss = (num["image"] + num["text"]) / (den["image"] + den["text"])
    parts = {m: num[m] / (den["image"] + den["text"]) for m in MODALITIES}
  else:
    parts = {m: num[m] / den[m] for m in MODALITIES}
    loss = parts["image"] + parts["text"]
  return loss, parts


def _sgd(theta: dict, grads: dict, lrs: dict) -> dict:
  return {m: jax.tree.map(lambda p, g, lr=lrs[m]: p - lr * g, theta[m], grads[m])
          for m in MODALITIES}


# The student steps are a plain loop (`lax.scan`, unroll 1) on every backend.
# Until 2026-12-05 the CPU backend fully unrolled the steps of convolutional students (MTT-VL's
# and LoRS's NFNet), because XLA:CPU ran JAX's default convolution gradients 30-100x slower
# inside a while loop; the unrolled program made LoRS at Flickr30K shapes outgrow 24 GiB. The
# NFNet's convolutions now use `jdd.models.conv` (canonical-layout gradients, as fast in a loop
# as outside one: `benchmarks/loop_conv.py`), and the loop is as fast as the unroll: LoRS TESLA
# at 32 px, 41 pairs, 4 student steps (`benchmarks/trajectory_matching.py --which lors --modes
# tesla --res 32 --pairs 41 --syn-steps 4`) 0.60 CPU s per iteration in the loop against 0.66
# unrolled, compile 121 against 225 s, XLA buffers 190 against 369 MiB, the same loss.


def unroll(loss_fn: StudentLoss, theta0: dict, data, lrs: dict, idx: jax.Array,
           keys: jax.Array, *, remat: bool = False):
  """theta_N after `len(idx)` differentiable SGD steps, and the per-step inner losses."""
  def body(theta, xs):
    i, k = xs
    value, grads = jax.value_and_grad(loss_fn)(theta, data, i, k)
    return _sgd(theta, grads, lrs), value

  if remat:
    body = jax.checkpoint(body)
  return jax.lax.scan(body, theta0, (idx, keys))


def exact_value_and_grad(loss_fn: StudentLoss, theta0: dict, target: dict, data, lrs: dict,
                         idx: jax.Array, keys: jax.Array, *, merge: bool, remat: bool = False):
  """(loss, aux), (d loss / d data, d loss / d lrs), differentiating through the whole unroll
  (full MTT, including the Hessian cross terms TESLA drops)."""
  def outer(data, lrs):
    theta_n, inner = unroll(loss_fn, theta0, data, lrs, idx, keys, remat=remat)
    loss, parts = match_loss(theta_n, theta0, target, merge)
    return loss, {"parts": parts, "inner": inner}

  (loss, aux), grads = jax.value_and_grad(outer, argnums=(0, 1), has_aux=True)(data, lrs)
  return (loss, aux), grads


def tesla_value_and_grad(loss_fn: StudentLoss, theta0: dict, target: dict, data, lrs: dict,
                         idx: jax.Array, keys: jax.Array, *, merge: bool):
  """The constant-memory two-pass gradient (§5.5-5.6); same return as `exact_value_and_grad`.

  Pass 2 obtains g_i and its vector-Jacobian product with respect to the data from one
  `jax.vjp` of the inner gradient, so each step is computed once per pass.
  """
  lrs_c = jax.lax.stop_gradient(lrs)
  data_c = jax.lax.stop_gradient(data)
  grad_theta = jax.grad(loss_fn)

  def pass1(carry, xs):
    theta, gsum = carry
    i, k = xs
    value, g = jax.value_and_grad(loss_fn)(theta, data_c, i, k)
    return (_sgd(theta, g, lrs_c), jax.tree.map(jnp.add, gsum, g)), value

  zeros = jax.tree.map(jnp.zeros_like, theta0)
  (_, gsum), inner = jax.lax.scan(pass1, (theta0, zeros), (idx, keys))
  # theta_N = theta_0 - eta G, exactly the reference's expression for the distance.
  theta_n = {m: jax.tree.map(lambda p, g, lr=lrs_c[m]: p - lr * g, theta0[m], gsum[m])
             for m in MODALITIES}
  loss, parts = match_loss(theta_n, theta0, target, merge)
  delta = {m: _sub(theta_n[m], target[m]) for m in MODALITIES}
  den = {m: sq_norm(_sub(theta0[m], target[m])) for m in MODALITIES}
  if merge:
    den = {m: den["image"] + den["text"] for m in MODALITIES}
  # dL/dg_i, the same for every step i.
  cot = {m: jax.tree.map(lambda d, lr=lrs_c[m], dn=den[m]: -2.0 * lr * d / dn, delta[m])
         for m in MODALITIES}

  def pass2(carry, xs):
    theta, acc = carry
    i, k = xs
    g, vjp = jax.vjp(lambda d: grad_theta(theta, d, i, k), data_c)
    (gd,) = vjp(cot)
    return (_sgd(theta, g, lrs_c), jax.tree.map(jnp.add, acc, gd)), None

  (_, g_data), _ = jax.lax.scan(pass2, (theta0, jax.tree.map(jnp.zeros_like, data_c)),
                                (idx, keys))
  g_lrs = {m: -2.0 * sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(gsum[m]),
                                                         jax.tree.leaves(delta[m]))) / den[m]
           for m in MODALITIES}
  return (loss, {"parts": parts, "inner": inner}), (g_data, g_lrs)


def value_and_grad(mode: str, loss_fn: StudentLoss, theta0: dict, target: dict, data,
                   lrs: dict, idx: jax.Array, keys: jax.Array, *, merge: bool,
                   remat: bool = False):
  """The config switch: mode 'exact' or 'tesla'."""
  if mode == "exact":
    return exact_value_and_grad(loss_fn, theta0, target, data, lrs, idx, keys, merge=merge,
                                remat=remat)
  if mode == "tesla":
    return tesla_value_and_grad(loss_fn, theta0, target, data, lrs, idx, keys, merge=merge)
  raise ValueError(f"distill.grad_mode must be 'exact' or 'tesla', got {mode!r}")
