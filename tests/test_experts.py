"""Expert trajectories and the retrieval evaluator: store, resume, selection, baselines."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jdd.stages import experts
from jdd.evaluation import retrieval
from jdd.models.nfnet import NFNet, NFNET_TINY
from jdd.models.retrieval import RetrievalModel
from jdd.loop import RunContext, SimulatedInterruption

FEAT, TEXT = 16, 12


def tiny_model(train_backbone=False):
  backbone = NFNet(**{**NFNET_TINY, "channels": (8, 8, 8, 8), "stem_chs": 8, "group_size": 8,
                      "num_features": FEAT})
  return RetrievalModel(backbone, FEAT, train_backbone=train_backbone, dropout=0.1)


def toy_pairs(n_images=24, caps=2, seed=0):
  """Features and texts that share a latent, so retrieval can learn something."""
  rng = np.random.default_rng(seed)
  latent = rng.normal(size=(n_images, 6)).astype(np.float32)
  feats = latent @ rng.normal(size=(6, FEAT)).astype(np.float32)
  image_index = np.repeat(np.arange(n_images), caps)
  texts = (latent[image_index] @ rng.normal(size=(6, TEXT)).astype(np.float32)
           + 0.1 * rng.normal(size=(len(image_index), TEXT)).astype(np.float32))
  return feats, texts, image_index


def expert_cfg(**kw):
  c = dict(num_experts=3, epochs=3, batch_size=8, lr_image=0.1, lr_text=0.1, momentum=0.0,
           weight_decay=0.0, keep_epochs=2, shard="")
  c.update(kw)
  return ml_collections.ConfigDict(c)


def train(model, feats, texts, idx, cfg, workdir, key, interrupt_after=0):
  """`experts.train_experts` on a hand-built run context (what the driver passes)."""
  config = ml_collections.ConfigDict(dict(
      seed=0, log_every=1000, checkpoint_every=1000, experts=cfg,
      debug=ml_collections.ConfigDict({"interrupt_after": interrupt_after})))
  ctx = RunContext.standalone(config, workdir, {"experts": key})
  return experts.train_experts(ctx, model, {}, feats, texts, idx, features=True)


def test_parse_shard():
  assert experts.parse_shard("") == (0, 1)
  assert experts.parse_shard("1/4") == (1, 4)
  for bad in ("4/4", "x", "1/0/2"):
    with pytest.raises(ValueError, match="shard"):
      experts.parse_shard(bad)


def test_train_experts_store_and_snapshots(tmp_path):
  model = tiny_model()
  feats, texts, idx = toy_pairs()
  key = jax.random.key(3)
  store = train(model, feats, texts, idx, expert_cfg(), str(tmp_path), key)
  assert store.done() == [0, 1, 2]
  assert store.epochs == [0, 1, 2]          # keep_epochs=2 of 3 trained
  traj = store.trajectory(1)
  sizes = store.meta["sizes"]
  assert traj["image"].shape == (3, sizes["image"]) and traj["text"].shape == (3, sizes["text"])
  # Snapshot 0 is the expert's own fresh init, and training moves the parameters every epoch.
  init = model.init(jax.random.fold_in(jax.random.fold_in(key, 1), 0), {}, TEXT)
  snap0 = store.snapshot(1, 0)
  for m in ("image", "text"):
    for a, b in zip(jax.tree.leaves(snap0[m]), jax.tree.leaves(init[m])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.linalg.norm(traj[m][1] - traj[m][0]) > 0
    assert np.linalg.norm(traj[m][2] - traj[m][1]) > 0
  # Experts differ from one another (seeded per expert).
  assert np.abs(store.trajectory(0)["text"][0] - traj["text"][0]).max() > 0
  with pytest.raises(ValueError, match="not stored"):
    store.snapshot(0, 3)
  # Reopening with other settings is refused instead of mixing trajectories.
  with pytest.raises(ValueError, match="other settings"):
    train(model, feats, texts, idx, expert_cfg(epochs=4), str(tmp_path), key)


def test_experts_resume_bit_exact_and_sharding(tmp_path):
  model = tiny_model()
  feats, texts, idx = toy_pairs()
  key = jax.random.key(5)
  ref = train(model, feats, texts, idx, expert_cfg(num_experts=2), str(tmp_path / "ref"), key)
  # Shard 1/2 first, then an interrupted shard 0/2, then a resume: same store, bit for bit.
  work = str(tmp_path / "work")
  train(model, feats, texts, idx, expert_cfg(num_experts=2, shard="1/2"), work, key)
  with pytest.raises(SimulatedInterruption):   # 3 steps per epoch: stops inside epoch 2
    train(model, feats, texts, idx, expert_cfg(num_experts=2, shard="0/2"), work, key,
          interrupt_after=5)
  assert experts.ExpertStore(os.path.join(work, "experts")).done() == [1]
  got = train(model, feats, texts, idx, expert_cfg(num_experts=2), work, key)
  for e in (0, 1):
    for m in ("image", "text"):
      np.testing.assert_array_equal(np.asarray(got.trajectory(e)[m]),
                                    np.asarray(ref.trajectory(e)[m]))
  assert experts.read_speed(got) >= 0


def test_missing_store_message(tmp_path):
  with pytest.raises(FileNotFoundError, match="experts"):
    experts.ExpertStore(str(tmp_path))


def test_select_uses_val_and_labels_reference():
  def m(r):
    return {k: r for k in retrieval.METRICS}
  points = [{"epoch": 0, "val": m(10.0), "test": m(30.0)},
            {"epoch": 20, "val": m(20.0), "test": m(25.0)},
            {"epoch": 40, "val": m(15.0), "test": m(40.0)}]
  out = retrieval.select(points)
  assert out["selected_epoch"] == 20 and out["test"]["r_mean"] == 25.0
  assert out["reference_protocol_best_test"]["epoch"] == 40
  assert out["reference_protocol_best_test"]["r_mean"] == 40.0
  s = retrieval.summarise([out, {**out, "test": m(35.0)}])
  assert s["test"]["r_mean"]["mean"] == pytest.approx(30.0)
  assert s["test"]["r_mean"]["std"] == pytest.approx(50.0 ** 0.5)   # sample std (ddof 1)


def test_random_and_herding_pairs():
  feats, texts, idx = toy_pairs(n_images=30, caps=3)
  r = retrieval.random_pairs(10, idx, jax.random.key(0))
  assert len(set(idx[r])) == 10                                   # one caption per image
  np.testing.assert_array_equal(r, retrieval.random_pairs(10, idx, jax.random.key(0)))
  with pytest.raises(ValueError, match="images"):
    retrieval.random_pairs(31, idx, jax.random.key(0))
  h = retrieval.herding_pairs(8, feats, texts, idx)
  assert len(set(idx[h])) == 8
  # Herding's mean is closer to the full mean than a typical random subset of the same size.
  def gap(sel):
    f = np.concatenate([feats[idx] / np.linalg.norm(feats[idx], axis=1, keepdims=True),
                        texts / np.linalg.norm(texts, axis=1, keepdims=True)], 1)
    return np.linalg.norm(f[sel].mean(0) - f.mean(0))
  rand = [gap(retrieval.random_pairs(8, idx, jax.random.key(s))) for s in range(20)]
  assert gap(h) < np.median(rand)


def test_train_and_score_learns_and_is_seeded():
  model = tiny_model()
  feats, texts, idx = toy_pairs(n_images=40, caps=2)
  val_imgs = np.arange(30, 40)
  caps_of = [np.flatnonzero(idx == i) for i in val_imgs]
  split = retrieval.EvalSplitData(feats[val_imgs], texts[np.concatenate(caps_of)],
                                  np.repeat(np.arange(10), 2), [np.array([2 * i, 2 * i + 1])
                                                                for i in range(10)])
  train = np.flatnonzero(idx < 30)
  pairs = retrieval.PairSet(feats[idx[train]], texts[train])
  cfg = ml_collections.ConfigDict(dict(epochs=30, batch_size=16, lr_image=0.5, lr_text=0.5,
                                       momentum=0.9, weight_decay=5e-4, lr_step=True,
                                       eval_every=10, loss="wbce"))
  out = retrieval.train_and_score(model, {}, pairs, {"val": split, "test": split}, cfg, 0,
                                  features=True)
  first, last = out["points"][0], out["points"][-1]
  assert [p["epoch"] for p in out["points"]] == [0, 10, 20, 30]
  assert last["test"]["r_mean"] > first["test"]["r_mean"]
  assert last["test"]["r_mean"] > 30.0                  # chance r_mean here is about 27
  again = retrieval.train_and_score(model, {}, pairs, {"val": split, "test": split}, cfg, 0,
                                    features=True)
  assert again["test"] == out["test"]
  with pytest.raises(ValueError, match="similarity"):
    retrieval.PairSet(feats[:3], texts[:3], similarity=np.eye(2))


def test_trained_backbone_takes_pixels():
  model = tiny_model(train_backbone=True)
  # Jitted: run op by op, the NFNet's init and forward compile hundreds of tiny programs.
  variables = jax.jit(model.backbone.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  params = jax.jit(lambda k, v: model.init(k, v, TEXT))(jax.random.key(1), variables)
  assert set(params) == {"image", "text"}
  logits = jax.jit(lambda p, x, t: model.logits(p, None, x, t, features=False))(
      params, jnp.ones((3, 16, 16, 3)), jnp.ones((3, TEXT)))
  assert logits.shape == (3, 3)
  with pytest.raises(ValueError, match="pixels"):
    model.image_embed(params, None, jnp.ones((3, FEAT)), features=True)
  with pytest.raises(ValueError, match="embed_dim"):
    RetrievalModel(model.backbone, FEAT, train_backbone=True, embed_dim=FEAT + 1)
