"""Backward-pass work that XLA cannot move ahead of the cotangent that needs it.

XLA schedules an operation as soon as its operands exist. In a backward pass that undoes two
memory savings on XLA:CPU (jax 0.10.2):

* a convolution's input gradient reads a reversed, regrouped copy of the kernel, which depends
  only on the weights, so every layer's copy can be (and is) made at the start of the backward
  pass: a frozen network holds all its kernels twice (`jdd.models.conv`);
* `jax.checkpoint` recomputes a function in the backward pass from its saved inputs; its
  `optimization_barrier`, which should keep the recomputation apart, is expanded by XLA:CPU
  before its common-subexpression pass, so the recomputation is merged with the forward values
  and nothing is saved (five 1024-token attention layers: 724.6 MiB of temporaries with
  `jax.checkpoint` and without it).

`after(x, g)` returns `x` made to depend on `g` (`x + isnan(g[0]) * 0`: `x` for every value of
`g`; XLA does not fold a float product with 0, which would be wrong for inf and NaN), so work
on the result waits for `g`. `remat(f)` is rematerialisation built on it: a `jax.custom_vjp`
whose forward keeps only `f`'s inputs and whose backward recomputes `f` on inputs that depend on
the cotangent, then takes `jax.vjp` of it. Same values and gradients as `f`, gradients of
gradients included (the backward is itself differentiable).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def _first(tree) -> jax.Array:
  leaf = jax.tree.leaves(tree)[0]
  return leaf[(0,) * leaf.ndim]


def after(x, g):
  """`x` (an array or a pytree of arrays) unchanged in value, computed only once `g` exists."""
  flag = jnp.isnan(_first(g))
  return jax.tree.map(lambda a: a + flag.astype(a.dtype) * 0, x)


def remat(f: Callable) -> Callable:
  """`f(*arrays)` rematerialised in the backward pass, after the cotangent arrives.

  The positional arguments must be (pytrees of) float arrays; close over anything else. Use it
  where `jax.checkpoint` saves nothing on XLA:CPU (outside loops); inside `lax.scan` /
  `lax.map` bodies `jax.checkpoint` already works, the loop keeping the recomputation apart.
  """
  @jax.custom_vjp
  def g(*args):
    return f(*args)

  def fwd(*args):
    return f(*args), args

  def bwd(args, ct):
    _, vjp = jax.vjp(f, *after(args, ct))
    return vjp(ct)

  g.defvjp(fwd, bwd)
  return g
