"""Projection head, InfoNCE, WBCE and the LoRS similarity matrix against plain torch code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F

from jdd.models import heads
from jdd.objectives import contrastive as C
from third_party.torch_to_flax import convert_state_dict, to_state_dict

torch.set_num_threads(2)


class TorchProjectionHead(tnn.Module):
  """The references' head as the spec describes it (Linear, GELU, Linear, dropout, +, LN)."""

  def __init__(self, d_in, d_out, dropout=0.1):
    super().__init__()
    self.projection = tnn.Linear(d_in, d_out)
    self.gelu = tnn.GELU()
    self.fc = tnn.Linear(d_out, d_out)
    self.dropout = tnn.Dropout(dropout)
    self.layer_norm = tnn.LayerNorm(d_out)

  def forward(self, x):
    p = self.projection(x)
    return self.layer_norm(self.dropout(self.fc(self.gelu(p))) + p)


def _torch_head(d_in=12, d_out=20, seed=0):
  torch.manual_seed(seed)
  m = TorchProjectionHead(d_in, d_out)
  with torch.no_grad():  # LayerNorm starts at 1/0; randomise so a swapped map cannot pass
    m.layer_norm.weight.copy_(0.5 + torch.rand(d_out))
    m.layer_norm.bias.copy_(0.3 * torch.randn(d_out))
  return m.eval()


def test_projection_head_matches_torch():
  tm = _torch_head()
  sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
  head = heads.ProjectionHead(features=20)
  template = jax.eval_shape(head.init, jax.random.key(0), jnp.zeros((1, 12)))
  variables = convert_state_dict(template, sd, heads.torch_key, "projection_head")
  x = np.random.default_rng(0).normal(size=(6, 12)).astype(np.float32) * 3
  got = np.asarray(head.apply(variables, x))
  want = tm(torch.from_numpy(x)).detach().numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The name map round-trips to exactly torch's keys.
  assert set(to_state_dict(variables, heads.torch_key)) == set(sd)
  assert heads.torch_key(("params", "fc", "kernel"), prefix="text_projection") == \
      "text_projection.fc.weight"


def test_projection_head_train_mode_dropout():
  head = heads.ProjectionHead(features=8)
  x = jnp.ones((4, 5))
  v = head.init(jax.random.key(0), x)
  eval_out = head.apply(v, x)
  a = head.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)})
  b = head.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)})
  c = head.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)})
  np.testing.assert_array_equal(a, b)  # replayable masks
  assert not np.allclose(a, eval_out) and not np.allclose(a, c)
  no_drop = heads.ProjectionHead(features=8, dropout=0.0)
  np.testing.assert_allclose(no_drop.apply(v, x, train=True), eval_out, rtol=1e-6)


def test_projection_head_init_and_reference_sizes():
  v = heads.ProjectionHead(features=64).init(jax.random.key(0), jnp.zeros((1, 32)))["params"]
  bound = 1 / np.sqrt(32)
  k = np.asarray(v["projection"]["kernel"])
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.8 * bound  # torch's U(+-1/sqrt(fan_in))
  np.testing.assert_array_equal(v["layer_norm"]["scale"], 1.0)
  np.testing.assert_array_equal(v["layer_norm"]["bias"], 0.0)

  def count(d_in, d_out):
    shapes = jax.eval_shape(heads.ProjectionHead(features=d_out).init, jax.random.key(0),
                            jnp.zeros((1, d_in)))
    return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))

  assert count(768, 2304) == 7_087_104  # text projection (research notes section 3.3)
  assert count(2304, 2304) == 10_626_048  # RepBlend's image projection


def _torch_logits(u, v, tau):
  u, v = torch.from_numpy(u), torch.from_numpy(v)
  u = u / u.norm(dim=1, keepdim=True)
  v = v / v.norm(dim=1, keepdim=True)
  return (torch.ones([]) * np.log(1 / tau)).float().exp() * u @ v.t()


@pytest.fixture(scope="module")
def embeddings():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(6, 10)).astype(np.float32), rng.normal(size=(6, 10)).astype(np.float32))


@pytest.mark.parametrize("tau", [0.07, 0.1])
def test_logits_and_infonce_match_torch(embeddings, tau):
  u, v = embeddings
  logits = C.contrastive_logits(u, v, tau)
  t_logits = _torch_logits(u, v, tau)
  np.testing.assert_allclose(logits, t_logits.numpy(), rtol=1e-5, atol=1e-5)
  gt = torch.arange(6)
  want = ((F.cross_entropy(t_logits, gt) + F.cross_entropy(t_logits.t(), gt)) / 2).item()
  np.testing.assert_allclose(C.infonce_loss(logits), want, rtol=1e-5)
  # The soft-target form with S = I is the same loss.
  np.testing.assert_allclose(C.soft_infonce_loss(logits, jnp.eye(6)), want, rtol=1e-5)


def test_soft_infonce_matches_torch(embeddings):
  u, v = embeddings
  s = np.random.default_rng(1).uniform(0, 1, size=(6, 6)).astype(np.float32)
  logits = np.array(C.contrastive_logits(u, v))  # a writable copy for torch.from_numpy
  tl, ts = torch.from_numpy(logits), torch.from_numpy(s)
  rows = -(ts * torch.log_softmax(tl, 1)).sum(1).mean()
  cols = -(ts.t() * torch.log_softmax(tl.t(), 1)).sum(1).mean()
  np.testing.assert_allclose(C.soft_infonce_loss(logits, s), ((rows + cols) / 2).item(),
                             rtol=1e-5)


def _torch_wbce(logits, target):
  p = torch.sigmoid(logits)
  loss = -target * torch.log(p + 1e-6) - (1 - target) * torch.log(1 - p + 1e-6)
  pos = (target > 0.5).detach()
  lp = torch.where(pos, loss, torch.tensor(0.0)).sum() / (pos.sum() + 1e-6)
  ln = torch.where(~pos, loss, torch.tensor(0.0)).sum() / ((~pos).sum() + 1e-6)
  return (lp + ln) / 2


def test_wbce_value_and_gradients_match_torch(embeddings):
  u, v = embeddings
  logits = np.asarray(C.contrastive_logits(u, v))
  rng = np.random.default_rng(2)
  s = (np.eye(6) + 0.3 * rng.normal(size=(6, 6))).astype(np.float32)  # leaves [0, 1]
  tl = torch.tensor(logits, requires_grad=True)
  ts = torch.tensor(s, requires_grad=True)
  want = _torch_wbce(tl, ts)
  want.backward()
  got, (g_logits, g_s) = jax.value_and_grad(C.wbce_loss, argnums=(0, 1))(logits, s)
  np.testing.assert_allclose(got, want.item(), rtol=1e-5)
  np.testing.assert_allclose(g_logits, tl.grad.numpy(), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(g_s, ts.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_wbce_closed_form():
  # Zero logits: P = 1/2 everywhere, every entry costs log 2 (+ the 1e-6 inside the log).
  s = np.eye(4, dtype=np.float32)
  want = -np.log(0.5 + 1e-6) * (4 / (4 + 1e-6) + 12 / (12 + 1e-6)) / 2
  np.testing.assert_allclose(C.wbce_loss(jnp.zeros((4, 4)), s), want, rtol=1e-6)


def test_lowrank_similarity():
  n, r, alpha = 7, 3, 2.5
  p = C.init_lowrank_similarity(jax.random.key(0), n, r)
  np.testing.assert_array_equal(C.similarity_matrix(p, alpha), np.eye(n))  # R = 0 at init
  rng = np.random.default_rng(3)
  p = {"diag": jnp.asarray(rng.normal(size=n), jnp.float32),
       "left": jnp.asarray(rng.normal(size=(n, r)), jnp.float32),
       "right": jnp.asarray(rng.normal(size=(n, r)), jnp.float32)}
  full = np.diag(p["diag"]) + alpha / r * np.asarray(p["left"]) @ np.asarray(p["right"]).T
  np.testing.assert_allclose(C.similarity_matrix(p, alpha), full, rtol=1e-5, atol=1e-6)
  idx = jnp.array([5, 1, 3])
  block = C.similarity_matrix(p, alpha, idx)
  np.testing.assert_allclose(block, full[np.ix_([5, 1, 3], [5, 1, 3])], rtol=1e-5, atol=1e-6)
  # Gradients of a mini-batch loss reach only the rows in the batch.
  g = jax.grad(lambda q: jnp.sum(C.similarity_matrix(q, alpha, idx) ** 2))(p)
  untouched = np.setdiff1d(np.arange(n), np.asarray(idx))
  for name in ("diag", "left", "right"):
    assert np.all(np.asarray(g[name])[untouched] == 0)
    assert np.any(np.asarray(g[name])[np.asarray(idx)] != 0)


def test_full_similarity():
  p = C.init_full_similarity(5)
  np.testing.assert_array_equal(C.similarity_matrix(p), np.eye(5))
  m = np.arange(25, dtype=np.float32).reshape(5, 5)
  block = C.similarity_matrix({"matrix": jnp.asarray(m)}, indices=jnp.array([4, 0]))
  np.testing.assert_array_equal(block, [[24, 20], [4, 0]])
