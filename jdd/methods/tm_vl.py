"""Image-text trajectory matching, shared by MTT-VL, LoRS and RepBlend: the distilled state,
the student loss, the outer step, the expert schedule, diagnostics and the budget arithmetic
(the maths; the checkpointed distill stage and the export are `jdd.stages.distill`).

References: `distill.py` of princetonvisualai/multimodal_dataset_distillation (MTT-VL),
`distill_tesla_lors.py` of silicx/LoRS_Distill and `distill_repblend.py` of zhangxin-xd/RepBlend
(shared/research/multimodal_dd_methods.md §5). Facts carried over:

* the distilled set is N synthetic images (normalised pixels) and N text embeddings,
  initialised from N random real train pairs, plus per-modality student learning rates (init
  0.1) and, for LoRS/RepBlend, the similarity S (low-rank diag(a) + (alpha/r) L R^T with a = 1,
  L ~ N(0, 1), R = 0, or a full N x N matrix = I);
* the outer optimiser is SGD with momentum 0.5 and one learning rate per group (images, texts,
  learning rates, similarity), which is `optax.sgd(lr, momentum=0.5)` per group;
* LoRS and RepBlend distil N = pairs - 1 pairs so that S fits the pair budget (Table 1
  footnote); `distill.charge_similarity` switches this accounting, and the export manifest
  states the bytes of every stored array.

jdd differs on purpose (research §9):

* expert e and start epoch s of iteration `it` are pure functions of fold_in(key, it) (experts
  visited in a fresh permutation per cycle), read from the memory-mapped store without
  reloading a file per iteration (weakness 10); a resumed run is bit-exact;
* evaluation during distillation and at the end uses jdd's evaluator (val-selected epoch,
  several seeds, the references' best-test number beside it, weakness 9);
* dropout and blending draws are replayed exactly in TESLA's second pass (weakness 7), and the
  learning-rate gradient uses the same normalisation as the data gradient (weakness 8);
* the initial synthetic images are un-augmented real images (the reference passes them through
  the train augmentation once);
* the export is written to a staging folder and swapped in whole (`jdd.export`), so a crash
  never leaves half a set.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdd.models.retrieval import RetrievalModel
from jdd.objectives import trajectory
from jdd.objectives.contrastive import (infonce_loss, init_full_similarity,
                                        init_lowrank_similarity, l2_normalize,
                                        similarity_matrix, wbce_loss)

# §5.1: the per-channel statistics of the references' noise initialisation.
NOISE_MEAN = (-0.0626, -0.0221, 0.0680)
NOISE_STD = (1.0451, 1.0752, 1.0539)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """What distinguishes the three methods (everything else is shared), stated once: the
  method module's `SPEC`. jdd.configs.image_text.tm_config writes it into every config of the
  method (`model.train_backbone`, `distill.similarity`, `distill.charge_similarity`,
  `distill.blend`, `distill.blend_alpha`, `distill.loss`, `distill.grad_mode`,
  `evaluate.loss`); a config may still override a field, and the distill stage refuses a
  backbone, similarity or blending that the method does not have."""
  name: str
  train_backbone: bool      # MTT-VL/LoRS: the image backbone is trained and matched
  similarity_kind: str      # S as learned: 'lowrank' (LoRS/RepBlend) | 'full' | 'none' (MTT-VL)
  blend: bool               # RepBlend: representation blending inside the unroll
  loss: str                 # the student's and the evaluator's loss: 'wbce' | 'infonce'
  grad_mode: str            # the default outer gradient: 'exact' (through the unroll) | 'tesla'
  blend_alpha: float = 1.0  # lambda ~ Beta(blend_alpha, blend_alpha); read only with `blend`

  @property
  def similarity(self) -> bool:
    """LoRS/RepBlend: learn S and train with WBCE against it; the pair budget charges S one
    pair (`distill.charge_similarity`, which the configs set to this)."""
    return self.similarity_kind != "none"


# ------------------------------------------------------------------------------ state
def num_synthetic(dc, spec: MethodSpec) -> int:
  """N distilled pairs for a budget of `dc.pairs`: one fewer when S is charged (§3.5)."""
  return int(dc.pairs) - (1 if spec.similarity and dc.charge_similarity else 0)


def init_params(dc, spec: MethodSpec, key: jax.Array, images: np.ndarray,
                texts: np.ndarray) -> dict:
  """The distilled pytree from N real pairs (normalised pixels, text embeddings)."""
  n = len(texts)
  if dc.init == "noise":
    shape = images.shape
    noise = jax.random.normal(jax.random.fold_in(key, 2), shape, jnp.float32)
    images = noise * jnp.asarray(NOISE_STD[:shape[-1]]) + jnp.asarray(NOISE_MEAN[:shape[-1]])
  elif dc.init != "real":
    raise ValueError(f"distill.init must be 'real' or 'noise', got {dc.init!r}")
  params = {"images": jnp.asarray(images, jnp.float32), "texts": jnp.asarray(texts, jnp.float32),
            "lr_image": jnp.float32(dc.lr_init_image), "lr_text": jnp.float32(dc.lr_init_text)}
  if spec.similarity:
    if dc.similarity == "lowrank":
      params["sim"] = init_lowrank_similarity(jax.random.fold_in(key, 1), n, int(dc.sim_rank))
    elif dc.similarity == "full":
      params["sim"] = init_full_similarity(n)
    else:
      raise ValueError(f"distill.similarity must be 'lowrank' or 'full', got {dc.similarity!r}")
  return params


def outer_optimizer(dc) -> optax.GradientTransformation:
  """SGD(momentum) with the references' four parameter groups."""
  def group(path, _):
    top = str(getattr(path[0], "key", path[0]))
    return {"images": "images", "texts": "texts", "sim": "sim"}.get(top, "lrs")

  m = float(dc.momentum)
  return optax.multi_transform(
      {"images": optax.sgd(float(dc.lr_img), momentum=m),
       "texts": optax.sgd(float(dc.lr_txt), momentum=m),
       "lrs": optax.sgd(float(dc.lr_lr), momentum=m),
       "sim": optax.sgd(float(dc.lr_sim), momentum=m)},
      lambda params: jax.tree_util.tree_map_with_path(group, params))


# ------------------------------------------------------------------------ student loss
def blend_draw(key: jax.Array, batch: int, alpha: float):
  """RepBlend's one lambda ~ Beta(alpha, alpha) and one permutation of the mini-batch (§5.7)."""
  k_lam, k_perm = jax.random.split(key)
  return jax.random.beta(k_lam, alpha, alpha), jax.random.permutation(k_perm, batch)


def blend_fn(lam: jax.Array, perm: jax.Array):
  """z -> lam z + (1 - lam) z[perm]: the same draw blends features and text embeddings."""
  return lambda z: lam * z + (1.0 - lam) * z[perm]


def student_temperature(dc, model: RetrievalModel) -> float:
  """The student's tau: the model's unless overridden; `reference_logit_scale` reproduces
  MTT-VL's unroll, which multiplies cosines by log(1/tau) = 2.66 instead of 1/tau (§3.4)."""
  tau = float(dc.temperature) or float(model.temperature)
  return 1.0 / math.log(1.0 / tau) if dc.reference_logit_scale else tau


def make_student_loss(model: RetrievalModel, frozen: dict | None, spec: MethodSpec, dc):
  """loss_fn(theta, data, idx, key): the inner loss of one student step on mini-batch idx.

  The step key is split into (blend, dropout); every pass that replays the step gets the same
  masks and the same blending draw.
  """
  temperature = student_temperature(dc, model)
  alpha, blend, sim_alpha = float(dc.blend_alpha), bool(dc.blend), float(dc.sim_alpha)
  loss_kind = str(dc.loss)
  if loss_kind not in ("wbce", "infonce"):
    raise ValueError(f"distill.loss must be 'wbce' or 'infonce', got {loss_kind!r}")

  def loss_fn(theta, data, idx, key):
    k_blend, k_drop = jax.random.split(key)
    mix = blend_fn(*blend_draw(k_blend, idx.shape[0], alpha)) if blend else None
    logits = model.logits(theta, frozen, data["images"][idx], data["texts"][idx],
                          features=False, train=True, rng=k_drop, temperature=temperature,
                          blend_image=mix, blend_text=mix)   # the target S_B is not blended
    if loss_kind == "infonce":
      return infonce_loss(logits)
    if "sim" in data:
      target = similarity_matrix(data["sim"], sim_alpha, idx)
    else:
      target = jnp.eye(idx.shape[0], dtype=logits.dtype)
    return wbce_loss(logits, target)

  return loss_fn


# ------------------------------------------------------------------------- outer step
def make_step(loss_fn, tx: optax.GradientTransformation, unravel, n: int, dc):
  """step(state, batch, rng) -> (state, metrics); batch = {'start', 'target'}: flat expert
  parameter vectors per modality. Jit it once (every shape is fixed by the config)."""
  steps, b = int(dc.syn_steps), int(dc.mini_batch)
  mode, merge, remat = str(dc.grad_mode), bool(dc.merge_branches), bool(dc.remat)

  def step(state, batch, rng):
    p = state["params"]
    data = {k: p[k] for k in ("images", "texts", "sim") if k in p}
    lrs = {"image": p["lr_image"], "text": p["lr_text"]}
    theta0 = {m: unravel(m, batch["start"][m]) for m in trajectory.MODALITIES}
    target = {m: unravel(m, batch["target"][m]) for m in trajectory.MODALITIES}
    idx = trajectory.minibatch_indices(jax.random.fold_in(rng, 0), n, b, steps)
    keys = trajectory.step_keys(jax.random.fold_in(rng, 1), steps)
    (loss, aux), (g_data, g_lrs) = trajectory.value_and_grad(
        mode, loss_fn, theta0, target, data, lrs, idx, keys, merge=merge, remat=remat)
    grads = {**g_data, "lr_image": g_lrs["image"], "lr_text": g_lrs["text"]}
    updates, opt_state = tx.update(grads, state["opt"], p)
    new = optax.apply_updates(p, updates)
    if float(dc.clamp_lr) > 0:   # the reference's --clamp_lr: learned lrs floored
      new = {**new, "lr_image": jnp.maximum(new["lr_image"], float(dc.clamp_lr)),
             "lr_text": jnp.maximum(new["lr_text"], float(dc.clamp_lr))}
    metrics = {"loss": loss, "loss_image": aux["parts"]["image"],
               "loss_text": aux["parts"]["text"], "inner_first": aux["inner"][0],
               "inner_last": aux["inner"][-1], "lr_image": new["lr_image"],
               "lr_text": new["lr_text"],
               "grad_images": jnp.sqrt(trajectory.sq_norm(g_data["images"])),
               "grad_texts": jnp.sqrt(trajectory.sq_norm(g_data["texts"]))}
    return {"params": new, "opt": opt_state}, metrics

  return step


def expert_choice(done: list[int], it: int, key: jax.Array, max_start_epoch: int
                  ) -> tuple[int, int]:
  """(expert, start epoch) of iteration `it`: experts visited in a fresh permutation of the
  finished ones per cycle, the start epoch uniform in [0, max_start_epoch); a pure function of
  (key, it), so a resumed run draws the same."""
  cycle, pos = divmod(it, len(done))
  order = np.asarray(jax.random.permutation(jax.random.fold_in(key, cycle), len(done)))
  e = done[int(order[pos])]
  s = int(jax.random.randint(jax.random.fold_in(jax.random.fold_in(key, 1 << 20), it), (), 0,
                             int(max_start_epoch)))
  return e, s


# ------------------------------------------------------------------------ diagnostics
def make_diagnostics(model: RetrievalModel, frozen: dict | None):
  """RepBlend Fig. 2: intra-modal mean pairwise cosine of the synthetic images' and texts'
  embeddings, their paired cosine, and the modality gap ||mean u_hat - mean v_hat||
  (Liang et al. 2022), under a fixed reference model (a trained expert)."""
  @jax.jit
  def diag(params, images, texts):
    u = l2_normalize(model.image_embed(params, frozen, images, features=False))
    v = l2_normalize(model.text_embed(params, texts))
    n = u.shape[0]
    off = 1.0 - jnp.eye(n)

    def intra(z):
      return jnp.sum((z @ z.T) * off) / (n * (n - 1))
    return {"intra_image_cos": intra(u), "intra_text_cos": intra(v),
            "paired_cos": jnp.mean(jnp.sum(u * v, -1)),
            "modality_gap": jnp.linalg.norm(u.mean(0) - v.mean(0))}
  return diag


# ----------------------------------------------------------------------------- export
def budget_accounting(dc, spec: MethodSpec, params: dict, image_shape, text_dim: int) -> dict:
  """The pair budget and what the similarity costs against it, in bytes."""
  sim_params = int(sum(np.size(x) for x in jax.tree.leaves(params.get("sim", {}))))
  pair_bytes = int(np.prod(image_shape)) + 4 * int(text_dim)   # uint8 image + float32 text
  n = num_synthetic(dc, spec)
  return {"pairs_budget": int(dc.pairs), "synthetic_pairs": n,
          "pairs_given_to_similarity": int(dc.pairs) - n,
          "similarity": str(dc.similarity) if spec.similarity else "identity (not learned)",
          "similarity_parameters": sim_params, "similarity_bytes_float32": 4 * sim_params,
          "one_pair_bytes_uint8_image_float32_text": pair_bytes,
          "learned_lr_bytes": 8,
          "note": ("LoRS/RepBlend distil pairs - 1 pairs so that the similarity parameters "
                   "are paid for by one pair, as the references (num_queries 99/199/499)")
          if spec.similarity else "MTT-VL learns no similarity; all pairs are distilled"}
