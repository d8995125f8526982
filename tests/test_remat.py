"""jdd.models.remat: `after` leaves values alone, and `remat` rematerialises for real on XLA:CPU
(where `jax.checkpoint` outside a loop saves nothing), with the plain function's values,
gradients and gradients of gradients."""

import jax
import jax.numpy as jnp
import numpy as np

from jdd.models import remat as remat_lib
from jdd.models.diffusion import layers


def _f(x, w):
  h = jnp.tanh(x @ w)
  return jnp.exp(-h ** 2) @ w.T


def test_after_keeps_values_for_every_cotangent():
  x = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.array([-1.5, jnp.inf])}
  for g in (jnp.zeros(3), jnp.full(3, jnp.nan), jnp.full(3, jnp.inf), -jnp.ones((2, 2))):
    out = remat_lib.after(x, g)
    for k in x:
      np.testing.assert_array_equal(out[k], x[k])


def test_remat_matches_the_plain_function_to_second_order():
  rs = np.random.RandomState(0)
  x, w = jnp.asarray(rs.randn(4, 5), jnp.float32), jnp.asarray(rs.randn(5, 6), jnp.float32)
  r = remat_lib.remat(_f)
  np.testing.assert_allclose(r(x, w), _f(x, w), rtol=1e-6)

  def loss(fn):
    return lambda x, w: jnp.sum(jnp.sin(fn(x, w)))
  for a, b in zip(jax.jit(jax.grad(loss(r), (0, 1)))(x, w), jax.grad(loss(_f), (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Gradient of a gradient norm (TESLA-style second pass) through the custom rule.
  def outer(fn):
    return lambda w: jnp.sum(jax.grad(loss(fn))(x, w) ** 2)
  np.testing.assert_allclose(jax.grad(outer(r))(w), jax.grad(outer(_f))(w), rtol=1e-4, atol=1e-6)


def test_attention_does_not_keep_every_layers_probabilities():
  """Five 1024-token self-attention layers (batch 2, 8 heads: 64 MiB of probabilities each):
  the compiled gradient's temporaries stay under two layers' worth of score-sized buffers plus
  the activations, where a plain (or `jax.checkpoint`ed) stack keeps all five."""
  b, length, heads, d = 2, 1024, 8, 8
  rs = np.random.RandomState(0)
  q, k, v = (jnp.asarray(rs.randn(b, length, heads * d), jnp.float32) for _ in range(3))

  def f(q, k, v):
    x = q
    for _ in range(5):
      x = x + layers.attention(x, k, v, heads)
    return jnp.sum(jnp.sin(x))
  temp = jax.jit(jax.grad(f, (0, 1, 2))).lower(q, k, v).compile().memory_analysis()
  probs = b * heads * length * length * 4
  assert temp.temp_size_in_bytes < 5 * probs, (temp.temp_size_in_bytes, probs)
