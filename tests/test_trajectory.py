"""Trajectory matching objective: exact gradients vs finite differences, TESLA vs the
references' formula, and the gap between the two modes (jdd.objectives.trajectory)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd.objectives import trajectory as tm
from jdd.objectives.contrastive import similarity_matrix, wbce_loss

N, B, STEPS, DX, DT, E = 6, 4, 3, 4, 3, 5
ALPHA = 2.0


def tiny_problem(seed=0, dtype=jnp.float64):
  """Tiny heads on 'features' and texts, a low-rank S, and a key-driven mask standing in for
  dropout (so replaying the step key matters)."""
  rng = np.random.default_rng(seed)
  arr = lambda *s, scale=1.0: jnp.asarray(scale * rng.normal(size=s), dtype)
  data = {"images": arr(N, DX), "texts": arr(N, DT),
          "sim": {"diag": jnp.ones((N,), dtype) + arr(N, scale=0.05), "left": arr(N, 2),
                  "right": arr(N, 2, scale=0.05)}}
  theta0 = {"image": {"w": arr(DX, E, scale=0.5)},
            "text": {"w": arr(DT, E, scale=0.5), "b": arr(E, scale=0.1)}}
  target = jax.tree.map(lambda p: p + arr(*p.shape, scale=0.1), theta0)
  lrs = {"image": jnp.asarray(0.3, dtype), "text": jnp.asarray(0.2, dtype)}

  def loss_fn(theta, d, idx, key):
    mask = jax.random.bernoulli(key, 0.8, (idx.shape[0], E)).astype(dtype) / 0.8
    u = jnp.tanh(d["images"][idx] @ theta["image"]["w"]) * mask
    v = d["texts"][idx] @ theta["text"]["w"] + theta["text"]["b"]
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
    v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    return wbce_loss(5.0 * u @ v.T, similarity_matrix(d["sim"], ALPHA, idx))

  key = jax.random.key(3)
  idx = tm.minibatch_indices(jax.random.fold_in(key, 0), N, B, STEPS)
  keys = tm.step_keys(jax.random.fold_in(key, 1), STEPS)
  return loss_fn, theta0, target, data, lrs, idx, keys


def test_minibatch_indices_cycle_and_reshuffle():
  key = jax.random.key(0)
  idx = np.asarray(tm.minibatch_indices(key, 10, 4, 5))
  assert idx.shape == (5, 4)
  # 10 // 4 = 2 chunks per permutation: rows (0,1), (2,3) are disjoint, row 4 a fresh one.
  for a, b in ((0, 1), (2, 3)):
    assert not set(idx[a]) & set(idx[b])
  assert all(len(set(r)) == 4 for r in idx)
  np.testing.assert_array_equal(idx, np.asarray(tm.minibatch_indices(key, 10, 4, 5)))
  assert not np.array_equal(idx, np.asarray(tm.minibatch_indices(jax.random.key(1), 10, 4, 5)))
  with pytest.raises(ValueError, match="mini-batch"):
    tm.minibatch_indices(key, 3, 4, 2)


def test_match_loss_closed_form():
  start = {"image": jnp.zeros(3), "text": jnp.zeros(2)}
  target = {"image": jnp.array([1.0, 0, 0]), "text": jnp.array([0, 2.0])}
  end = {"image": jnp.array([1.0, 1, 0]), "text": jnp.array([0, 1.0])}
  sep, _ = tm.match_loss(end, start, target, merge=False)
  merged, _ = tm.match_loss(end, start, target, merge=True)
  np.testing.assert_allclose(sep, 1 / 1 + 1 / 4)
  np.testing.assert_allclose(merged, (1 + 1) / (1 + 4))


@pytest.mark.parametrize("merge", [False, True])
def test_exact_gradient_matches_finite_differences(merge):
  with jax.enable_x64(True):
    loss_fn, theta0, target, data, lrs, idx, keys = tiny_problem()

    @jax.jit
    def total(d, l):
      theta_n, _ = tm.unroll(loss_fn, theta0, d, l, idx, keys)
      return tm.match_loss(theta_n, theta0, target, merge)[0]

    (loss, _), (g_data, g_lrs) = jax.jit(lambda d, l: tm.exact_value_and_grad(
        loss_fn, theta0, target, d, l, idx, keys, merge=merge, remat=True))(data, lrs)
    np.testing.assert_allclose(loss, total(data, lrs), rtol=1e-12)
    rng = np.random.default_rng(1)
    eps = 1e-6
    # Every leaf of the data (images, texts, a, L, R) and each learning rate, one direction each.
    leaves, treedef = jax.tree.flatten(data)
    for i, leaf in enumerate(leaves):
      direction = jnp.asarray(rng.normal(size=leaf.shape))
      shift = lambda s: jax.tree.unflatten(treedef, [l + s * direction if j == i else l
                                                     for j, l in enumerate(leaves)])
      fd = (total(shift(eps), lrs) - total(shift(-eps), lrs)) / (2 * eps)
      analytic = jnp.vdot(jax.tree.leaves(g_data)[i], direction)
      np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-10)
    for m in ("image", "text"):
      up = {**lrs, m: lrs[m] + eps}
      down = {**lrs, m: lrs[m] - eps}
      fd = (total(data, up) - total(data, down)) / (2 * eps)
      np.testing.assert_allclose(g_lrs[m], fd, rtol=1e-6, atol=1e-10)


def reference_tesla(loss_fn, theta0, target, data, lrs, idx, keys, merge):
  """The references' two-pass computation written out as they do it (distill_repblend.py
  L373-526): store every theta_i, then per step backprop 2 * grand_loss_i to the data; the
  learning-rate gradient from the per-branch loss with G held constant."""
  thetas, gsum = [theta0], jax.tree.map(jnp.zeros_like, theta0)
  for k in range(len(idx)):
    g = jax.grad(loss_fn)(thetas[-1], data, idx[k], keys[k])
    thetas.append({m: jax.tree.map(lambda p, q, lr=lrs[m]: p - lr * q, thetas[-1][m], g[m])
                   for m in ("image", "text")})
    gsum = jax.tree.map(jnp.add, gsum, g)
  flat = lambda t: jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)])
  start, tgt, gs = ({m: flat(t[m]) for m in t} for t in (theta0, target, gsum))
  dist = {m: jnp.sum((start[m] - tgt[m]) ** 2) for m in start}
  terms = {m: lrs[m] * (tgt[m] - start[m]) + lrs[m] ** 2 * gs[m] for m in start}
  total = jax.tree.map(jnp.zeros_like, data)
  for i in range(len(idx)):
    def grand(d):
      g_i = jax.grad(loss_fn)(thetas[i], d, idx[i], keys[i])
      dots = {m: terms[m] @ flat(g_i[m]) for m in start}
      if merge:
        return (dots["image"] + dots["text"]) / (dist["image"] + dist["text"])
      return dots["image"] / dist["image"] + dots["text"] / dist["text"]
    total = jax.tree.map(jnp.add, total, jax.grad(lambda d: 2 * grand(d))(data))
  lr_grads = {m: jax.grad(lambda lr: jnp.sum((start[m] - lr * gs[m] - tgt[m]) ** 2)
                          / dist[m])(lrs[m]) for m in start}
  return total, lr_grads


@pytest.mark.parametrize("merge", [False, True])
def test_tesla_gradient_equals_reference_formula(merge):
  with jax.enable_x64(True):
    loss_fn, theta0, target, data, lrs, idx, keys = tiny_problem(seed=2)
    _, (g_data, g_lrs) = jax.jit(lambda d, l: tm.tesla_value_and_grad(
        loss_fn, theta0, target, d, l, idx, keys, merge=merge))(data, lrs)
    ref_data, ref_lrs = jax.jit(lambda d, l: reference_tesla(
        loss_fn, theta0, target, d, l, idx, keys, merge))(data, lrs)
    for a, b in zip(jax.tree.leaves(g_data), jax.tree.leaves(ref_data)):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    if not merge:
      for m in ("image", "text"):
        np.testing.assert_allclose(g_lrs[m], ref_lrs[m], rtol=1e-9)
    else:
      # jdd uses the merged denominator for the lr gradient too (the reference does not, §9 #8).
      loss_fn_lr = lambda l: tm.match_loss(
          {m: jax.tree.map(lambda p, g, lr=l[m]: p - lr * g, theta0[m], gsum[m])
           for m in ("image", "text")}, theta0, target, True)[0]
      gsum = jax.tree.map(jnp.zeros_like, theta0)
      theta, grad_fn = theta0, jax.jit(jax.grad(loss_fn))
      for k in range(STEPS):
        g = grad_fn(theta, data, idx[k], keys[k])
        theta = {m: jax.tree.map(lambda p, q, lr=lrs[m]: p - lr * q, theta[m], g[m])
                 for m in ("image", "text")}
        gsum = jax.tree.map(jnp.add, gsum, g)
      expect = jax.jit(jax.grad(loss_fn_lr))(lrs)
      for m in ("image", "text"):
        np.testing.assert_allclose(g_lrs[m], expect[m], rtol=1e-9)
        assert not np.isclose(g_lrs[m], ref_lrs[m])


def test_exact_vs_tesla_gap():
  """One student step: no cross terms, so the modes agree; more steps: measure the gap."""
  with jax.enable_x64(True):
    loss_fn, theta0, target, data, lrs, idx, keys = tiny_problem(seed=4)
    for steps in (1, STEPS):
      ex, te = (jax.jit(lambda d, l, mode=mode: tm.value_and_grad(
          mode, loss_fn, theta0, target, d, l, idx[:steps], keys[:steps], merge=False))(
              data, lrs) for mode in ("exact", "tesla"))
      np.testing.assert_allclose(ex[0][0], te[0][0], rtol=1e-10)   # same loss value
      for name in ("images", "texts", "sim"):
        a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(ex[1][0][name])])
        b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(te[1][0][name])])
        rel = np.linalg.norm(a - b) / np.linalg.norm(a)
        cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        print(f"syn_steps={steps} {name}: exact-vs-TESLA relative gap {rel:.3e}, cosine {cos:.6f}")
        if steps == 1:
          assert rel < 1e-10
        else:
          assert 0 < rel < 1 and cos > 0.5
      for m in ("image", "text"):
        gap = abs(float(ex[1][1][m] - te[1][1][m])) / abs(float(ex[1][1][m]))
        print(f"syn_steps={steps} lr_{m}: relative gap {gap:.3e}")
        if steps == 1:
          assert gap < 1e-10


def test_bad_mode():
  loss_fn, theta0, target, data, lrs, idx, keys = tiny_problem(dtype=jnp.float32)
  with pytest.raises(ValueError, match="grad_mode"):
    tm.value_and_grad("adjoint", loss_fn, theta0, target, data, lrs, idx, keys, merge=False)
