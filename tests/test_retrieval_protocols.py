"""The references' retrieval evaluators as `evaluate.protocol`, the random-subset rows over
draws, the learned-lr-matched baseline and the paired comparison, on a tiny model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jdd.config import load_config, override
from jdd.configs.image_text import apply_protocol, base_config
from jdd.evaluation import retrieval, retrieval_report, stats
from jdd.evaluation import retrieval_protocols as protocols
from jdd.models.retrieval import RetrievalModel

FEAT, TEXT, PIX = 8, 6, 8


class TinyBackbone(nn.Module):
  """Pixels -> pooled features: enough of a backbone for the evaluator's plumbing."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(FEAT)(x.mean(axis=(1, 2)))


def tiny(train_backbone, dropout=0.1):
  return RetrievalModel(TinyBackbone(), FEAT, train_backbone=train_backbone, dropout=dropout)


def toy(n=100, n_eval=10, seed=0):
  """n training pairs (pixels and features) and one eval split of n_eval images x 2 captions."""
  rng = np.random.default_rng(seed)
  pix = rng.normal(size=(n + n_eval, PIX, PIX, 3)).astype(np.float32)
  feats = rng.normal(size=(n + n_eval, FEAT)).astype(np.float32)
  texts = rng.normal(size=(n + 2 * n_eval, TEXT)).astype(np.float32)

  def split(images):
    return retrieval.EvalSplitData(images[n:], texts[n:], np.repeat(np.arange(n_eval), 2),
                                   [np.array([2 * i, 2 * i + 1]) for i in range(n_eval)])
  return pix, feats, texts[:n], split


def eval_cfg(name, **kw):
  c = base_config()
  apply_protocol(c, name)
  ec = ml_collections.ConfigDict(c.evaluate.to_dict())
  ec.update(kw)
  return ec


def spy(monkeypatch):
  """Records what reaches the training step: the optimiser settings it was built with, and per
  call the batch size and the two learning rates."""
  seen = {"built": [], "calls": []}
  real = retrieval.compiled_train_step

  def wrapped(model, **kw):
    seen["built"].append(kw)
    opt, step = real(model, **kw)

    def recorded(params, opt_state, frozen, images, texts, sim, rng, lr_img, lr_txt):
      seen["calls"].append((images.shape[0], float(lr_img), float(lr_txt)))
      return step(params, opt_state, frozen, images, texts, sim, rng, lr_img, lr_txt)
    return opt, recorded
  monkeypatch.setattr(retrieval, "compiled_train_step", wrapped)
  return seen


def run_protocol(monkeypatch, name, n=100, lrs=(0.03, 0.07), **kw):
  seen = spy(monkeypatch)
  pix, feats, texts, split = toy(n)
  model = tiny(train_backbone=True)
  variables = jax.jit(model.backbone.init)(jax.random.key(0), jnp.zeros((1, PIX, PIX, 3)))
  pairs = retrieval.PairSet(pix[:n], texts, lr_image=lrs[0], lr_text=lrs[1])
  ec = eval_cfg(name, **kw)
  out = retrieval.train_and_score(model, variables, pairs, {"val": split(pix), "test":
                                                            split(pix)}, ec, 0, features=False)
  return seen, out


def test_lors_protocol_reaches_the_step(monkeypatch):
  seen, out = run_protocol(monkeypatch, "lors", n=100, epochs=6, eval_every=2)
  (kw,) = seen["built"]
  assert (kw["momentum"], kw["weight_decay"], kw["augment"]) == (0.9, 5e-4, False)
  assert kw["loss"] == "wbce"
  # Epoch + 1 = 7 epochs of ceil(100 / 128) = 1 batch of min(128, 100) rows.
  assert [c[0] for c in seen["calls"]] == [100] * 7
  # The learned rates per modality, x0.1 from epoch 6 // 2 + 1 = 4.
  np.testing.assert_allclose([c[1:] for c in seen["calls"]],
                             [(0.03, 0.07)] * 4 + [(0.003, 0.007)] * 3, rtol=1e-6)
  assert [p["epoch"] for p in out["points"]] == [0, 2, 4, 6]
  best = max(out["points"], key=lambda p: (p["test"]["r_mean"], -p["epoch"]))
  assert out["reference_protocol_best_test"]["epoch"] == best["epoch"]


def test_mttvl_protocol_reaches_the_step(monkeypatch):
  seen, out = run_protocol(monkeypatch, "mttvl", n=100, epochs=4, eval_every=2)
  (kw,) = seen["built"]
  assert (kw["momentum"], kw["weight_decay"], kw["augment"], kw["loss"]) == (
      0.9, 5e-4, False, "infonce")
  # 5 epochs of a shuffled DataLoader at batch 64: 64 then the last 36, every pair once.
  assert [c[0] for c in seen["calls"]] == [64, 36] * 5
  # The image rate for both modalities, no decay before the final evaluation.
  np.testing.assert_allclose([c[1:] for c in seen["calls"]], [(0.03, 0.03)] * 10, rtol=1e-6)
  last = out["points"][-1]
  assert last["epoch"] == 4
  assert out["reference_protocol_final_epoch_test"] == {"epoch": 4, **last["test"]}
  assert "reference_protocol_best_test" not in out


def test_mttvl_shuffle_covers_every_pair_once_per_epoch():
  ec = eval_cfg("mttvl")
  sched = protocols.schedule(ec, 100)
  batches = retrieval.epoch_batches("shuffle", 100, sched, jax.random.key(3))
  assert sorted(np.concatenate(batches).tolist()) == list(range(100))
  drop = retrieval.epoch_batches("drop_last", 100, protocols.schedule(eval_cfg("edge"), 100),
                                 jax.random.key(3))
  assert [len(b) for b in drop] == [64] and len(set(drop[0].tolist())) == 64


def test_edge_protocol_reaches_the_step(monkeypatch):
  seen, out = run_protocol(monkeypatch, "edge", n=140, lrs=(None, None), epochs=10)
  (kw,) = seen["built"]
  assert (kw["momentum"], kw["weight_decay"], kw["augment"], kw["loss"]) == (
      0.0, 0.0, True, "infonce")
  # range(10) epochs of floor(140 / 64) = 2 full batches (drop_last), lr 0.1 each, no decay.
  assert [c[0] for c in seen["calls"]] == [64] * 20
  np.testing.assert_allclose([c[1:] for c in seen["calls"]], [(0.1, 0.1)] * 20, rtol=1e-6)
  # Scored after every 5th epoch.
  assert [p["epoch"] for p in out["points"]] == [4, 9]


def test_sgd_settings_are_torch_sgd():
  """Two steps of the evaluator's optimiser equal torch SGD's recurrence (coupled weight
  decay, momentum buffer without dampening), and momentum 0 / decay 0 is p - lr g."""
  model = tiny(train_backbone=False, dropout=0.0)    # the step trains: no dropout to replay
  _, feats, texts, _ = toy(16)
  params = model.init(jax.random.key(1), {}, TEXT)
  x, t, sim = jnp.asarray(feats[:16]), jnp.asarray(texts[:16]), jnp.eye(16)

  def grad(p):
    return jax.grad(lambda q: retrieval.wbce_loss(
        model.logits(q, None, x, t, features=True, train=False), sim))(p)

  for momentum, wd in ((0.9, 0.5), (0.0, 0.0)):    # a decay large enough to be seen
    opt, step = retrieval.make_train_step(model, loss="wbce", features=True, weight_decay=wd,
                                          momentum=momentum)
    step = jax.jit(step)
    p, s = params, opt.init(params)
    ref, buf = params, None
    for _ in range(2):
      p, s, _ = step(p, s, None, x, t, sim, jax.random.key(0), 0.05, 0.02)
      g = grad(ref)
      g = jax.tree.map(lambda gi, pi: gi + wd * pi, g, ref)
      buf = g if buf is None else jax.tree.map(lambda b, gi: momentum * b + gi, buf, g)
      ref = {"image": jax.tree.map(lambda pi, b: pi - 0.05 * b, ref["image"], buf["image"]),
             "text": jax.tree.map(lambda pi, b: pi - 0.02 * b, ref["text"], buf["text"])}
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(ref)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5)


def test_augmentation_is_per_image_and_seeded():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 16, 16, 3)), jnp.float32)
  a = retrieval.augment_images(jax.random.key(0), x)
  assert a.shape == x.shape
  np.testing.assert_array_equal(np.asarray(a), np.asarray(retrieval.augment_images(
      jax.random.key(0), x)))
  changed = [not np.allclose(np.asarray(a[i]), np.asarray(x[i])) for i in range(6)]
  assert sum(changed) >= 5
  with pytest.raises(ValueError, match="train_backbone"):
    retrieval.make_train_step(tiny(False), loss="infonce", features=True, weight_decay=0.0,
                              momentum=0.0, augment=True)


def test_protocol_fields_are_checked():
  ec = eval_cfg("edge")
  protocols.check(ec)
  ec.momentum = 0.9
  with pytest.raises(ValueError, match=r"evaluate.momentum=0.9 .*:protocol=edge"):
    protocols.check(ec)
  ec.protocol = "custom"
  protocols.check(ec)
  ec.protocol = "nope"
  with pytest.raises(ValueError, match="evaluate.protocol"):
    protocols.check(ec)
  c = load_config("configs/lors_shapes.py")
  with pytest.raises(ValueError, match="fixes these fields"):
    protocols.check(override(c, **{"evaluate.protocol": "mttvl"}).evaluate)
  assert load_config("configs/lors_shapes.py:protocol=mttvl").evaluate.batch_size == 64
  c = load_config("configs/repblend_shapes.py:protocol=edge")     # frozen backbone: features
  with pytest.raises(ValueError, match="model.train_backbone=True"):
    protocols.check_config(c)
  protocols.check_config(load_config("configs/lors_shapes.py:protocol=edge"))


def test_paper_configs_use_their_references_evaluators():
  for d in ("flickr", "coco"):
    for p in (100, 200, 500):
      c = load_config(f"configs/mttvl_{d}.py:pairs={p}")
      assert c.evaluate.protocol == "mttvl" and c.evaluate.epochs == 50
      # MTT-VL's own code: 50,000 iterations, no merged branches, no tau option, and its one
      # script's max_start_epoch 2.
      assert c.distill.iterations == 50000 and not c.distill.merge_branches
      assert c.distill.temperature == 0.0 and c.distill.max_start_epoch == 2
      assert load_config(f"configs/edge_{d}.py:pairs={p}").evaluate.protocol == "edge"
      assert load_config(f"configs/lors_{d}.py:pairs={p}").evaluate.protocol == "lors"
  e = load_config("configs/edge_shapes.py")
  assert e.evaluate.protocol == "edge" and e.model.train_backbone
  assert load_config("configs/mttvl_shapes.py").evaluate.protocol == "mttvl"


def _row(values, lr=None):
  per_seed = [{"test": {m: v for m in retrieval.METRICS}} for v in values]
  return {"num_pairs": 10, "per_seed": per_seed, "summary": retrieval.summarise(per_seed),
          "lr_image": lr, "lr_text": lr}


def test_draws_combine_and_compare_paired():
  """Seed k of the random row is the mean over its draws at seed k; the paired difference
  against the distilled row is stats.paired_difference of those vectors."""
  draws = [_row([10.0, 12.0, 11.0]), _row([14.0, 10.0, 13.0]), _row([12.0, 14.0, 9.0])]
  rand = retrieval_report.combine_draws(draws)
  assert rand["seed_r_mean"] == pytest.approx([12.0, 12.0, 11.0])
  assert rand["summary"]["num_runs"] == 9 and rand["summary"]["num_draws"] == 3
  flat = [10, 12, 11, 14, 10, 13, 12, 14, 9]
  assert rand["summary"]["test"]["r_mean"]["mean"] == pytest.approx(np.mean(flat))
  assert rand["summary"]["test"]["r_mean"]["std"] == pytest.approx(np.std(flat, ddof=1))
  results = {"method": "m", "dataset": "d", "distilled_m": _row([20.0, 21.0, 19.5]),
             "random_10": rand}
  (c,) = retrieval_report.compare(results, retrieval_report.default_pairs(results,
                                                                          ["distilled_m"]))
  ref = stats.paired_difference([20.0, 21.0, 19.5], [12.0, 12.0, 11.0])
  assert c["mean"] == pytest.approx(ref["mean"]) and c["ci_low"] == pytest.approx(ref["ci_low"])
  assert c["verdict"] == "beats" and "distilled_m beats random_10" in c["sentence"]
  results["comparisons"] = [c]
  text = "\n".join(retrieval_report.summary_lines(results))
  assert "3x3" in text and "beats" in text
