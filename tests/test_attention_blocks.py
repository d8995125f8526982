"""jdd.models.diffusion.layers.attention computes the queries in rematerialised blocks (so a
512-px SD U-Net step does not hold every layer's (B, heads, L, L) probabilities); the blocked
result and its gradients must equal plain softmax(q k^T / sqrt(d)) v, for a query length the
block divides, one it does not (blocks of the largest divisor), and one shorter than a block."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd.models.diffusion import layers


def _plain(q, k, v, heads):
  b, lq, inner = q.shape
  d = inner // heads
  split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, d)
  scores = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k)) / np.sqrt(d)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), split(v)).reshape(b, lq, inner)


@pytest.mark.parametrize("lq,lk", [(64, 64), (48, 77), (21, 21), (10, 10)])
def test_blocked_attention_equals_plain(monkeypatch, lq, lk):
  monkeypatch.setattr(layers, "ATTENTION_BLOCK", 16)   # 64 -> 4 blocks, 48 -> 3, 21 -> 7 x 3
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (2, lq, 32))
  k = jax.random.normal(keys[1], (2, lk, 32))
  v = jax.random.normal(keys[2], (2, lk, 32))
  w = jax.random.normal(keys[3], (2, lq, 32))
  np.testing.assert_allclose(layers.attention(q, k, v, 4), _plain(q, k, v, 4), atol=2e-6)

  def loss(fn):
    return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, 4)) * w)

  got = jax.jit(jax.grad(loss(layers.attention), (0, 1, 2)))(q, k, v)
  want = jax.grad(loss(_plain), (0, 1, 2))(q, k, v)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=2e-5)
