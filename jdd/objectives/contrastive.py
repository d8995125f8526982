"""Contrastive image-text losses and LoRS's learned similarity matrix, as pure functions.

References: `CLIPModel_full.calculate_loss` in `src/networks.py` and `src/similarity_mining.py`
of silicx/LoRS_Distill (identical in zhangxin-xd/RepBlend). Facts carried over:

* Embeddings are L2-normalised as `x / ||x||` with no epsilon, and the logits are
  `exp(log(1/tau)) * u_hat @ v_hat.T` (images x texts) with a FIXED temperature, tau = 0.07 by
  default (`train_logit_scale=False`); COCO-500 distils with tau = 0.1.
* Experts: symmetric InfoNCE with identity targets, 0.5 * [CE(Z, I) + CE(Z^T, I)], so two
  captions of one image in a batch are negatives of each other.
* LoRS "InfoNCE" with a soft target S (no row normalisation):
  -0.5 * [mean_i sum_j S_ij log softmax_j(Z)_ij + mean_j sum_i S_ij log softmax_i(Z)_ij].
* WBCE (distillation and evaluation): with P = sigmoid(Z),
  l_ij = -S_ij log(P_ij + 1e-6) - (1 - S_ij) log(1 - P_ij + 1e-6); with M = {S > 0.5}
  (recomputed from the current S and carrying no gradient), the loss is
  0.5 * (sum_M l / (|M| + 1e-6) + sum_notM l / (|notM| + 1e-6)).
* Similarity: low-rank S = diag(a) + (alpha / r) L R^T (a = 1, L ~ N(0, 1), R = 0 at init, so
  S = I), or a full N x N matrix initialised to I; a mini-batch uses the sub-block S[B, B],
  which for the low-rank form is diag(a_B) + (alpha / r) L_B R_B^T.

Deliberate difference: none in the maths. The reference leaves S unconstrained (it can leave
[0, 1], weakness 18); these functions do the same so that results stay comparable, and a method
that wants a constraint applies it to S before calling `wbce_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

DEFAULT_TEMPERATURE = 0.07
WBCE_EPS = 1e-6


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """`x / ||x||` exactly as the references (a zero vector gives NaN, as in torch)."""
  return x / jnp.linalg.norm(x, axis=axis, keepdims=True)


def logit_scale(temperature: float = DEFAULT_TEMPERATURE) -> jax.Array:
  """exp(log(1/tau)) in float32, the multiplier the references apply to cosine similarities."""
  return jnp.exp(jnp.float32(math.log(1.0 / temperature)))


def contrastive_logits(image_embed: jax.Array, text_embed: jax.Array,
                       temperature: float = DEFAULT_TEMPERATURE) -> jax.Array:
  """(images, texts) logits: scaled cosine similarity of the projected embeddings."""
  u = l2_normalize(image_embed.astype(jnp.float32))
  v = l2_normalize(text_embed.astype(jnp.float32))
  return logit_scale(temperature) * (u @ v.T)


def infonce_loss(logits: jax.Array) -> jax.Array:
  """Symmetric InfoNCE with identity targets (square logits: pair i matches pair i)."""
  if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
    raise ValueError(f"identity-target InfoNCE needs square logits, got {logits.shape}")
  diag = jnp.diagonal(logits)
  image_to_text = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
  text_to_image = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
  return 0.5 * (image_to_text + text_to_image)


def soft_infonce_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """LoRS's InfoNCE against a soft target matrix (equals `infonce_loss` when targets = I)."""
  rows = jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1)
  cols = jnp.sum(targets * jax.nn.log_softmax(logits, axis=0), axis=0)
  return -0.5 * (jnp.mean(rows) + jnp.mean(cols))


def wbce_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """LoRS's weighted BCE: positives (S > 0.5) and negatives averaged separately, then halved.

  Gradients flow into both the logits and the targets (the learned S), not into the mask.
  """
  p = jax.nn.sigmoid(logits)
  loss = -targets * jnp.log(p + WBCE_EPS) - (1.0 - targets) * jnp.log(1.0 - p + WBCE_EPS)
  pos = jax.lax.stop_gradient(targets > 0.5)
  loss_pos = jnp.sum(jnp.where(pos, loss, 0.0)) / (jnp.sum(pos) + WBCE_EPS)
  loss_neg = jnp.sum(jnp.where(pos, 0.0, loss)) / (jnp.sum(~pos) + WBCE_EPS)
  return 0.5 * (loss_pos + loss_neg)


# ----------------------------------------------------------------------------- similarity
def init_lowrank_similarity(key: jax.Array, n: int, rank: int) -> dict[str, jax.Array]:
  """LoRA-style start: a = 1, left ~ N(0, 1), right = 0, so S = I exactly."""
  return {"diag": jnp.ones((n,), jnp.float32),
          "left": jax.random.normal(key, (n, rank), jnp.float32),
          "right": jnp.zeros((n, rank), jnp.float32)}


def init_full_similarity(n: int) -> dict[str, jax.Array]:
  return {"matrix": jnp.eye(n, dtype=jnp.float32)}


def lowrank_similarity(diag: jax.Array, left: jax.Array, right: jax.Array,
                       alpha: float) -> jax.Array:
  """S = diag(a) + (alpha / r) L R^T, with r the number of columns of L."""
  rank = left.shape[-1]
  return jnp.diag(diag) + (left @ right.T) * (alpha / rank)


def similarity_matrix(params: Mapping[str, jax.Array], alpha: float = 1.0,
                      indices: jax.Array | None = None) -> jax.Array:
  """S (or its sub-block S[B, B] for `indices` B) from low-rank or full parameters.

  Indexing the factors before multiplying gives exactly the sub-block of the full product, and
  differentiating through it routes gradients only to the rows in B, as the reference does.
  """
  if "matrix" in params:
    s = params["matrix"]
    return s if indices is None else s[indices[:, None], indices[None, :]]
  a, left, right = params["diag"], params["left"], params["right"]
  if indices is not None:
    a, left, right = a[indices], left[indices], right[indices]
  return lowrank_similarity(a, left, right, alpha)
