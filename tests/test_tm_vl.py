"""MTT-VL / LoRS / RepBlend machinery (jdd.methods.tm_vl): blending draws, replay of dropout and
blending in TESLA's second pass, one compile of the distill step, the outer optimiser, the
configs, the missing-data message, and an end-to-end smoke run with a bit-exact resume."""

import os
import shutil

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jdd import checkpoint, run as run_lib
from jdd.config import load_config, override
from jdd.data.captions import DatasetNotFoundError
from jdd.methods import lors, mttvl, repblend, tm_vl
from jdd.models.nfnet import NFNet, NFNET_TINY
from jdd.models.retrieval import RetrievalModel
from jdd.objectives import trajectory
from jdd.loop import SimulatedInterruption

FEAT, TEXT, N, SIZE = 8, 6, 6, 8


def tiny(train_backbone=False):
  backbone = NFNet(**{**NFNET_TINY, "depths": (1, 1, 1, 1), "channels": (8, 8, 8, 8),
                      "stem_chs": 8, "group_size": 8, "num_features": FEAT})
  model = RetrievalModel(backbone, FEAT, train_backbone=train_backbone, dropout=0.1)
  from jdd import models
  variables = models.init_variables(backbone, jax.random.key(0), (SIZE, SIZE, 3))
  return model, variables


def distill_cfg(**kw):
  c = dict(pairs=N + 1, charge_similarity=True, syn_steps=2, mini_batch=4, expert_epochs=1,
           max_start_epoch=1, lr_img=10.0, lr_txt=10.0, lr_lr=1e-2, lr_sim=1.0, momentum=0.5,
           lr_init_image=0.1, lr_init_text=0.1, similarity="lowrank", sim_rank=2, sim_alpha=1.0,
           loss="wbce", merge_branches=False, grad_mode="tesla", remat=False, blend=True,
           blend_alpha=1.0, temperature=0.0, reference_logit_scale=False, init="real",
           clamp_lr=0.0)
  c.update(kw)
  return ml_collections.ConfigDict(c)


def setup(dc, spec=repblend.SPEC):
  model, variables = tiny(spec.train_backbone)
  rng = np.random.default_rng(0)
  n = tm_vl.num_synthetic(dc, spec)
  params = tm_vl.init_params(dc, spec, jax.random.key(1),
                             rng.normal(size=(n, SIZE, SIZE, 3)).astype(np.float32),
                             rng.normal(size=(n, TEXT)).astype(np.float32))
  theta0 = model.init(jax.random.key(2), variables, TEXT)
  target = jax.tree.map(lambda p: p + 0.01, theta0)
  frozen = None if spec.train_backbone else variables
  return model, frozen, params, theta0, target


def test_blend_one_lambda_one_permutation_replayed(monkeypatch):
  key = jax.random.key(5)
  lam, perm = tm_vl.blend_draw(key, 8, 1.0)
  lam2, perm2 = tm_vl.blend_draw(key, 8, 1.0)
  assert float(lam) == float(lam2) and np.array_equal(perm, perm2)    # replayed exactly
  assert sorted(np.asarray(perm).tolist()) == list(range(8)) and 0 <= float(lam) <= 1
  other = tm_vl.blend_draw(jax.random.key(6), 8, 1.0)
  assert float(other[0]) != float(lam)
  x = jnp.arange(16.0).reshape(8, 2)
  np.testing.assert_allclose(tm_vl.blend_fn(lam, perm)(x), lam * x + (1 - lam) * x[perm])
  # One draw per student step, applied to both the image features and the texts.
  draws, applied = [], []
  real_draw, real_fn = tm_vl.blend_draw, tm_vl.blend_fn

  def spy_draw(*a):
    out = real_draw(*a)
    draws.append(out)
    return out

  def spy_fn(lam, perm):
    mix = real_fn(lam, perm)
    return lambda z: applied.append((lam, perm, z.shape)) or mix(z)

  monkeypatch.setattr(tm_vl, "blend_draw", spy_draw)
  monkeypatch.setattr(tm_vl, "blend_fn", spy_fn)
  dc = distill_cfg()
  model, frozen, params, theta0, _ = setup(dc)
  loss_fn = tm_vl.make_student_loss(model, frozen, repblend.SPEC, dc)
  data = {k: params[k] for k in ("images", "texts", "sim")}
  jax.jit(loss_fn)(theta0, data, jnp.arange(4), jax.random.key(0))   # traced once
  assert len(draws) == 1
  assert [s for _, _, s in applied] == [(4, FEAT), (4, TEXT)]    # features, then text
  assert applied[0][0] is applied[1][0] and applied[0][1] is applied[1][1]


# LoRS (no blending) compiles for most of a minute on 2 cores: slow; RepBlend runs by default.
@pytest.mark.parametrize("spec", [repblend.SPEC, pytest.param(lors.SPEC, marks=pytest.mark.slow)])
def test_tesla_second_pass_replays_dropout_and_blend(spec):
  """With one student step TESLA has no dropped cross terms, so it equals the exact gradient
  only if pass 2 recomputes the very step pass 1 took (same dropout masks and blend)."""
  dc = distill_cfg(blend=spec.blend)
  model, frozen, params, theta0, target = setup(dc, spec)
  loss_fn = tm_vl.make_student_loss(model, frozen, spec, dc)
  data = {k: params[k] for k in ("images", "texts", "sim")}
  lrs = {"image": params["lr_image"], "text": params["lr_text"]}
  idx = trajectory.minibatch_indices(jax.random.key(0), len(params["texts"]), 4, 1)
  keys = trajectory.step_keys(jax.random.key(1), 1)
  run = jax.jit(lambda d, l, mode: trajectory.value_and_grad(
      mode, loss_fn, theta0, target, d, l, idx, keys, merge=False), static_argnums=2)
  (le, _), (ge, gle) = run(data, lrs, "exact")
  (lt, _), (gt, glt) = run(data, lrs, "tesla")
  np.testing.assert_allclose(le, lt, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(ge), jax.tree.leaves(gt)):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6 * float(jnp.abs(a).max()))
  for m in ("image", "text"):
    np.testing.assert_allclose(gle[m], glt[m], rtol=2e-3)


def test_distill_step_compiles_once_and_updates_every_group():
  dc = distill_cfg()
  model, frozen, params, theta0, target = setup(dc)
  tx = tm_vl.outer_optimizer(dc)
  loss_fn = tm_vl.make_student_loss(model, frozen, repblend.SPEC, dc)
  flat = {m: ravel_pytree(theta0[m]) for m in ("image", "text")}
  unravel = lambda m, v: flat[m][1](v)
  step = jax.jit(chex.assert_max_traces(
      tm_vl.make_step(loss_fn, tx, unravel, len(params["texts"]), dc), n=1))
  state = {"params": params, "opt": tx.init(params)}
  tflat = {m: ravel_pytree(target[m])[0] for m in ("image", "text")}
  for it in range(2):
    batch = {"start": {m: flat[m][0] * (1 + 0.01 * it) for m in flat}, "target": tflat}
    new, metrics = step(state, batch, jax.random.key(it))
    assert np.isfinite(float(metrics["loss"]))
    state = new
  for k in ("images", "texts", "lr_image", "lr_text"):
    assert not np.array_equal(np.asarray(state["params"][k]), np.asarray(params[k])), k
  assert not np.array_equal(state["params"]["sim"]["right"], params["sim"]["right"])


def test_outer_optimizer_groups_and_budget():
  dc = distill_cfg(lr_img=3.0, lr_txt=5.0, lr_lr=0.1, lr_sim=7.0)
  params = {"images": jnp.zeros(2), "texts": jnp.zeros(2), "lr_image": jnp.float32(0),
            "lr_text": jnp.float32(0), "sim": {"diag": jnp.zeros(2)}}
  tx = tm_vl.outer_optimizer(dc)
  ones = jax.tree.map(jnp.ones_like, params)
  u1, s = tx.update(ones, tx.init(params), params)
  u2, _ = tx.update(ones, s, params)
  for k, lr in (("images", 3.0), ("texts", 5.0), ("lr_image", 0.1), ("lr_text", 0.1)):
    np.testing.assert_allclose(np.ravel(u1[k])[0], -lr, rtol=1e-6)
    np.testing.assert_allclose(np.ravel(u2[k])[0], -lr * 1.5, rtol=1e-6)   # momentum 0.5
  np.testing.assert_allclose(u2["sim"]["diag"][0], -7.0 * 1.5, rtol=1e-6)
  big = distill_cfg(pairs=100)
  assert tm_vl.num_synthetic(big, repblend.SPEC) == 99
  assert tm_vl.num_synthetic(big, lors.SPEC) == 99
  assert tm_vl.num_synthetic(big, mttvl.SPEC) == 100
  p = tm_vl.init_params(big, repblend.SPEC, jax.random.key(0), np.zeros((99, 4, 4, 3)),
                        np.zeros((99, TEXT)))
  np.testing.assert_array_equal(
      np.asarray(tm_vl.similarity_matrix(p["sim"], 1.0)), np.eye(99))   # S = I at init
  acct = tm_vl.budget_accounting(big, repblend.SPEC, p, (64, 64, 3), 384)
  assert acct["pairs_given_to_similarity"] == 1
  assert acct["similarity_parameters"] == 99 * (1 + 2 * 2)


def test_configs_and_missing_data_message(tmp_path):
  for m in ("mttvl", "lors", "repblend"):
    for d in ("flickr", "coco"):
      for p in (100, 200, 500):
        c = load_config(f"configs/{m}_{d}.py:pairs={p}")
        assert c.method == m and c.distill.pairs == p
      with pytest.raises(ValueError, match="pairs must be"):
        load_config(f"configs/{m}_{d}.py:pairs=300")
  c = load_config("configs/lors_flickr.py:pairs=500")
  assert c.distill.mini_batch == 40 and c.distill.max_start_epoch == 3
  assert c.experts.keep_epochs == 4
  c = load_config("configs/repblend_coco.py:pairs=500")
  assert c.distill.merge_branches and c.distill.temperature == 0.1 and c.distill.lr_img == 5000
  c = load_config("configs/repblend_flickr.py")
  c = override(c, **{"dataset.ann_dir": str(tmp_path / "ann"),
                     "dataset.image_root": str(tmp_path / "img")})
  with pytest.raises(DatasetNotFoundError, match="configs/repblend_shapes.py"):
    run_lib.run(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")       # stopped before touching the workdir


def _smoke(root, **kw):
  c = load_config("configs/repblend_shapes.py:smoke")
  return override(c, **{"dataset.root": root, **kw})


@pytest.mark.slow  # about 6 CPU-minutes on 2 cores: scripts/test.sh --all
def test_end_to_end_smoke_and_bit_exact_resume(tmp_path):
  data_root, w1, w2 = str(tmp_path / "data"), str(tmp_path / "w1"), str(tmp_path / "w2")
  results = run_lib.run(_smoke(data_root), w1)
  assert os.path.exists(os.path.join(w1, "results.json"))
  r = results["distilled_repblend"]
  assert r["num_pairs"] == 9 and r["pairs_budget"] == 10
  assert set(r["summary"]["test"]) >= {"img_r1", "img_r5", "img_r10", "txt_r1", "r_mean"}
  assert "random_10" in results
  # Like with like: the random subset again at the distilled set's learned learning rates.
  lrs = results["distill"]["learned_lrs"]
  matched, default = results["random_10_learned_lr"], results["random_10"]
  assert (matched["lr_image"], matched["lr_text"]) == pytest.approx((lrs["image"], lrs["text"]))
  assert default["lr_image"] is None and matched["draws"] == default["draws"] == 2
  assert [(c["a"], c["b"]) for c in results["comparisons"]] == [
      ("distilled_repblend", "random_10"), ("distilled_repblend", "random_10_learned_lr")]
  d = results["distill"]
  assert d["budget"]["synthetic_pairs"] == 9
  # logged every 2 iterations and at each checkpoint (every 3)
  assert [x["iteration"] for x in d["diagnostics"]] == [0, 2, 3, 4, 6]
  assert {"intra_image_cos", "intra_text_cos", "modality_gap"} <= set(d["diagnostics"][-1])
  assert [e["iteration"] for e in d["periodic_evals"]] == [4]
  manifest = checkpoint.read_json(os.path.join(w1, "export", "manifest.json"))
  for f, size in manifest["files"].items():
    assert os.path.getsize(os.path.join(w1, "export", f)) == size
  # Resume: the same run from the same experts, interrupted mid-distillation, then resumed.
  shutil.copytree(w1, w2)
  for sub in ("checkpoints/distill", "distill", "export", "results.json"):
    p = os.path.join(w2, sub)
    shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
  for f in os.listdir(os.path.join(w2, "eval")):
    if f.startswith("distilled"):
      os.remove(os.path.join(w2, "eval", f))
  with pytest.raises(SimulatedInterruption):
    run_lib.run(_smoke(data_root, **{"debug.interrupt_after": 4}), w2)
  assert not os.path.exists(os.path.join(w2, "export"))
  run_lib.run(_smoke(data_root), w2)
  for f in ("images.npy", "texts.npy", "similarity_left.npy", "similarity_right.npy",
            "similarity_diag.npy"):
    np.testing.assert_array_equal(np.load(os.path.join(w1, "export", f)),
                                  np.load(os.path.join(w2, "export", f)))
  assert (checkpoint.read_json(os.path.join(w1, "export", "lrs.json")) ==
          checkpoint.read_json(os.path.join(w2, "export", "lrs.json")))
