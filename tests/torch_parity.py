"""Shared harness for PyTorch-parity tests of jdd networks (imported by the tests, not a test).

A parity check builds the torch network inside the test, randomises every weight and running
statistic (so a wrong mapping cannot pass by symmetry), converts its state dict with jdd's own
converter (`third_party.torch_to_flax` + the model module's `torch_key`), and compares on one
input, in eval mode and in train mode (batch statistics):

  * logits, relative to the largest logit, to `logits_tol` (1e-4);
  * the mean and biased variance of every BN input, in call order, to `bn_tol` (1e-4);
  * the gradient of the SRe2L recover loss (CE + 0.01 * BN-statistics loss, first BN x10) with
    respect to the input, relative to its largest entry, to `grad_tol` (1e-3).

Train mode needs care: differentiating through batch statistics of a small batch is badly
conditioned, so float32 *torch itself* can sit a few 1e-3 away from the float64 truth (measured
up to 2.8e-2 on a torchvision ResNet-18, batch 4, 128x128). In train mode the gradient is
therefore compared with torch run in float64, to max(`grad_tol`, 2 x torch float32's own error):
jdd must be as exact as torch is, and exact to `grad_tol` where torch is.

On the torch side the BN statistics are read with forward *pre*-hooks, so the running statistics
are the ones before a train-mode update, which is what `jdd.models.bn.BatchNorm` records.
"""

from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F

from jdd.models import init_variables, ordered_bn_stats
from jdd.objectives.bn_matching import bn_statistics_loss
from third_party.torch_to_flax import convert_state_dict

torch.set_num_threads(2)


def randomise(model: tnn.Module, seed: int = 0) -> tnn.Module:
  """Random BN affine parameters and running statistics (torch initialises them to 1/0)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, tnn.modules.batchnorm._BatchNorm) and m.affine:
        c = m.num_features
        m.weight.copy_(0.5 + torch.rand(c, generator=g))
        m.bias.copy_(0.2 * torch.randn(c, generator=g))
        m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + torch.rand(c, generator=g))
  return model.eval()


def state_dict_numpy(model: tnn.Module) -> dict:
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def convert(torch_model, jax_model, image_shape, torch_key, arch="?"):
  """jdd variables for `jax_model` from `torch_model`'s state dict through the real converter."""
  template = jax.eval_shape(lambda: init_variables(jax_model, jax.random.key(0), image_shape))
  return jax.tree.map(jnp.asarray, convert_state_dict(template, state_dict_numpy(torch_model),
                                                      torch_key, arch))


def torch_recover_terms(model, x_nchw, targets, train: bool, first_bn_multiplier=10.0):
  model.train(train)
  records = []

  def pre_hook(module, inputs):
    a = inputs[0]
    mean = a.mean([0, 2, 3])
    var = a.transpose(0, 1).reshape(a.shape[1], -1).var(1, unbiased=False)
    records.append((mean, var, module.running_mean.clone(), module.running_var.clone()))

  handles = [m.register_forward_pre_hook(pre_hook) for m in model.modules()
             if isinstance(m, tnn.BatchNorm2d)]
  x = x_nchw.clone().requires_grad_(True)
  try:
    logits = model(x)
  finally:
    for h in handles:
      h.remove()
    model.eval()
  terms = [torch.norm(rv - var, 2) + torch.norm(rm - mean, 2) for mean, var, rm, rv in records]
  bn = first_bn_multiplier * terms[0] + sum(terms[1:])
  (F.cross_entropy(logits, targets) + 0.01 * bn).backward()
  return {"logits": logits.detach().numpy(),
          "bn_mean": [r[0].detach().numpy() for r in records],
          "bn_var": [r[1].detach().numpy() for r in records],
          "grad": x.grad.numpy().transpose(0, 2, 3, 1)}


def jax_recover_grad_fn(model, variables, targets, train: bool):
  """Jitted x -> (input gradient of the SRe2L recover loss, (logits, BN means, BN vars))."""
  mutable = ["bn_stats", "batch_stats"] if train else ["bn_stats"]

  def objective(x):
    logits, col = model.apply(variables, x, train=train, mutable=mutable)
    entries = ordered_bn_stats(col["bn_stats"])
    bn = bn_statistics_loss(entries)
    logp = jax.nn.log_softmax(logits)
    ce = -jnp.mean(jnp.take_along_axis(logp, targets[:, None], axis=1))
    return ce + 0.01 * bn, (logits, [e["mean"] for e in entries], [e["var"] for e in entries])

  return jax.jit(jax.grad(objective, has_aux=True))


def jax_recover_terms(model, variables, x_nhwc, targets, train: bool):
  grad, (logits, means, varis) = jax_recover_grad_fn(model, variables, targets, train)(x_nhwc)
  return {"logits": np.asarray(logits), "bn_mean": [np.asarray(m) for m in means],
          "bn_var": [np.asarray(v) for v in varis], "grad": np.asarray(grad)}


def float64_model(model, variables):
  """The jdd model and variables in float64 (call under `jax.enable_x64(True)`)."""
  return (model.clone(dtype=jnp.float64),    # the compute dtype of every layer
          jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables))


def parity_inputs(batch, channels, hw, num_classes, seed=1):
  """The check's input (torch NCHW, and NHWC for jdd) and targets, drawn from `seed`."""
  g = torch.Generator().manual_seed(seed)
  h, w = (hw, hw) if isinstance(hw, int) else hw
  x = torch.randn(batch, channels, h, w, generator=g)
  targets = torch.randint(0, num_classes, (batch,), generator=g)
  return x, targets, jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


def assert_rel(got, want, tol, what):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
  err = np.max(np.abs(got - want))
  scale = max(np.max(np.abs(want)), 1e-12)
  assert err <= tol * scale, f"{what}: max abs err {err:.3g} vs scale {scale:.3g}"


def check_parity(torch_model, jax_model, variables, *, image_hw, batch=4, num_classes=10,
                 channels=3, seed=1, modes=("eval", "train"), logits_tol=1e-4, bn_tol=1e-4,
                 grad_tol=1e-3, grad_in_float64=False):
  """Asserts parity in each mode; returns the number of BN layers compared.

  `grad_in_float64`: compare the input gradient of jdd run in float64 (x64, float64 weights)
  with torch float64, to `grad_tol`, instead of float32 against float32 / float64. For inputs
  where the gradient itself jumps within float32 rounding: a ReLU / ReLU6 gate sits that close
  to its threshold (torchvision MobileNetV2 x1.0 at 64 px: moving the input by 1e-6 moves the
  float64 gradient by 1.5 % of its largest entry), so float32 programs that round differently
  each compute the exact gradient of a slightly different input, and which of them happens to
  sit close to float64 is luck (docs/teachers.md; scripts/gradient_tie_probe.py shows it).
  """
  x, targets, x_nhwc = parity_inputs(batch, channels, image_hw, num_classes, seed)
  n_bn = 0
  for mode in modes:
    train = mode == "train"
    # Every torch run on its own copy: a train-mode forward moves the running statistics,
    # which the next run (e.g. the float64 reference) would otherwise start from.
    t = torch_recover_terms(copy.deepcopy(torch_model), x, targets, train)
    j = jax_recover_terms(jax_model, variables, x_nhwc, jnp.asarray(targets.numpy()), train)

    # The float64 references, each computed at most once per mode, when a check needs it.
    @functools.cache
    def torch64():
      return torch_recover_terms(copy.deepcopy(torch_model).double(), x.double(), targets, train)

    @functools.cache
    def jdd64():
      with jax.enable_x64(True):
        m64, v64 = float64_model(jax_model, variables)
        return jax_recover_terms(m64, v64, jnp.asarray(x_nhwc, jnp.float64),
                                 jnp.asarray(targets.numpy()), train)

    # Train-mode logits of a deep net normalise each layer over few values (ResNet-50 at 64 px
    # and batch 4: 16 per channel in the last stage), so each layer amplifies float32 rounding:
    # torch float32 is then 4.6e-5 of the scale off its float64 logits, and jdd 4.2e-5 when
    # XLA compiles at its default optimisation level 2 but 1.1e-4 at the tests' level 1
    # (tests/conftest.py). When float32 against float32 misses `logits_tol`, the computation
    # is checked where rounding cannot hide a mistake, jdd float64 against torch float64, and
    # jdd float32 against torch float64 at four times torch float32's own error.
    logits_scale = max(np.abs(t["logits"]).max(), 1e-12)
    if np.abs(j["logits"] - t["logits"]).max() <= logits_tol * logits_scale:
      assert_rel(j["logits"], t["logits"], logits_tol, f"{mode} logits")
    else:
      t64, j64 = torch64(), jdd64()
      # jdd's classifiers pool and return logits in float32 (their mixed-precision rule), so
      # the float64 run still rounds there once: 1e-6, not float64's 1e-12.
      assert_rel(j64["logits"], t64["logits"], 1e-6, f"{mode} logits, float64 both")
      torch_err = np.abs(t["logits"] - t64["logits"]).max() / np.abs(t64["logits"]).max()
      assert_rel(j["logits"], t64["logits"], max(logits_tol, 4 * torch_err),
                 f"{mode} logits vs torch float64 (torch float32 err {torch_err:.2g})")
    assert len(j["bn_mean"]) == len(t["bn_mean"]), (
        f"{mode}: jdd recorded {len(j['bn_mean'])} BN inputs, torch {len(t['bn_mean'])}")
    for i, (jm, tm, jv, tv) in enumerate(zip(j["bn_mean"], t["bn_mean"], j["bn_var"],
                                             t["bn_var"])):
      np.testing.assert_allclose(jm, tm, rtol=bn_tol, atol=bn_tol * max(np.abs(tm).max(), 1e-3),
                                 err_msg=f"{mode} BN input mean #{i}")
      np.testing.assert_allclose(jv, tv, rtol=bn_tol, atol=bn_tol * max(np.abs(tv).max(), 1e-3),
                                 err_msg=f"{mode} BN input var #{i}")
    scale32 = max(np.abs(t["grad"]).max(), 1e-12)
    if grad_in_float64:
      j64 = jdd64()
      assert j64["grad"].dtype == np.float64
      assert_rel(j64["grad"], torch64()["grad"], grad_tol, f"{mode} input gradient, float64 both")
    # The input gradient can be ill-conditioned (train-mode statistics over few values, deep
    # nets): torch float32 itself is then off its float64 value by more than grad_tol. The
    # reference is then torch float64, with a tolerance of twice torch float32's own error.
    # Train mode always takes that path; eval mode only when the float32 comparison fails.
    elif train or np.abs(j["grad"] - t["grad"]).max() > grad_tol * scale32:
      t64 = torch64()
      scale = np.abs(t64["grad"]).max()
      torch_err = np.abs(t["grad"] - t64["grad"]).max() / scale
      assert_rel(j["grad"], t64["grad"], max(grad_tol, 2 * torch_err),
                 f"{mode} input gradient vs torch float64 (torch float32 err {torch_err:.2g})")
    n_bn = len(t["bn_mean"])
  return n_bn
