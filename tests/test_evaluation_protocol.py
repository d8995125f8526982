"""The classification comparison: step matching, hard and soft label paths, DD-Ranking's scores
against hand computations, the teacher cache, and the protocol end to end at smoke scale."""

import json
import math
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jdd import models, run as run_lib, training
from jdd.config import load_config, override
from jdd.data.classification import ClassificationData, Split
from jdd.evaluation import classification as evaluation, curves, ddranking
from jdd.labels.source import LabelSource
from jdd.loop import make_keys
from jdd.stages import relabel, teacher_cache, teachers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "sre2l_fashion_mnist.py")


def _data(n_train=60, n_eval=20, seed=0):
  rng = np.random.default_rng(seed)
  split = lambda n: Split(rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
                          np.arange(n, dtype=np.int32) % 3)
  return ClassificationData("tiny", 3, ("a", "b", "c"), (0.5,), (0.25,), split(n_train),
                            split(n_eval), split(n_eval), "carved")


def _ecfg(**fields):
  e = ml_collections.ConfigDict(dict(
      student={"arch": "convnet", "kwargs": {"width": 4, "depth": 1}}, epochs=3, batch_size=5,
      optimizer="adamw", lr=1e-3, momentum=0.9, weight_decay=0.01, warmup_epochs=0,
      lr_per_epoch=True, temperature=4.0, t_squared=False, eval_every=1))
  e.update(fields)
  return e


def _hard(labels, cfg):
  fn = lambda operands, batch: relabel.hard_batch_fn(
      operands, batch, num_classes=3, cfg=cfg, mean=(0.5,), std=(0.25,),
      aug_key=jax.random.key(3))
  labels = np.asarray(labels, np.int32)
  return LabelSource("hard", fn, host_fields=lambda e, k, idx: {"labels": labels[idx]},
                     target="probs")


AUG = ml_collections.ConfigDict(dict(crop="pad_crop", crop_padding=1, flip=True, mix="mixup",
                                     mix_alpha=0.8))


def test_distilled_set_and_random_subset_of_other_sizes_take_the_same_steps():
  """INFER-like: 35 instances against a 10-image subset, batch 5: both 3 x 7 = 21 steps."""
  ec, data = _ecfg(), _data()
  distilled = evaluation.make_plan(ec, 35, 35)
  subset = evaluation.make_plan(ec, 35, 10)
  assert distilled.total_steps == subset.total_steps == 21
  assert (distilled.steps_per_epoch, subset.steps_per_epoch) == (7, 2)
  assert subset.epochs == 11 and distilled.eval_steps == subset.eval_steps == (7, 14, 21)
  # Counted from the optimiser state after training, not from the plan.
  for n, p in ((35, distilled), (10, subset)):
    images, labels = data.train.images[:n], data.train.labels[:n]
    r = evaluation.Trainer(source=_hard(labels, AUG), data=data, ecfg=ec, plan=p).train(
        images, order_key=jax.random.key(1), seed=0)
    assert r["optimizer_steps"] == 21
    assert [c["step"] for c in r["curve"]] == [7, 14, 21]
  # Its own epochs (the old protocol) would have given the subset 3 x 2 = 6 steps.
  assert evaluation.make_plan(ec, 10, 10).total_steps == 6
  # A set smaller than the batch trains batches of its size, still the same step count.
  assert evaluation.make_plan(ec, 35, 3).batch_size == 3
  assert evaluation.make_plan(ec, 35, 3).total_steps == 21


def test_scanned_stretch_equals_one_call_per_step():
  """The two paths of `Trainer.run_steps` (a `lax.scan` program, used on accelerators, and one
  jitted call per step, used on the CPU) train the same parameters from the same steps.
  Plain SGD: the conv bias before BN has a true gradient of 0 (rounding noise), which Adam
  would scale up to full steps whose sign differs between two programs."""
  ec, data = _ecfg(epochs=2, eval_every=2, optimizer="sgd", lr=0.1, momentum=0.0), _data()
  images, labels = data.train.images[:10], data.train.labels[:10]
  plan = evaluation.make_plan(ec, 10, 10)
  trainer = evaluation.Trainer(source=_hard(labels, AUG), data=data, ecfg=ec, plan=plan)
  variables = models.init_variables(trainer.model, jax.random.key(4), data.image_shape)
  state = training.init_state(variables, trainer.optimizer)
  batches = trainer._host_batches(trainer.source, jax.random.key(1), 0, 4, 10)
  trainer.scan = True
  scanned, scanned_loss = trainer.run_steps(state, jnp.asarray(images), *batches, None,
                                            jax.random.key(9))
  trainer.scan = False
  stepped, stepped_loss = trainer.run_steps(state, jnp.asarray(images), *batches, None,
                                            jax.random.key(9))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
               scanned.params, stepped.params)
  np.testing.assert_allclose(scanned_loss, stepped_loss, rtol=1e-5)
  # The choice: the config's when given, else scan everywhere but on the CPU.
  assert evaluation.use_scan(ec) is (jax.default_backend() != "cpu")
  ec.steps_program = "scan"
  assert evaluation.use_scan(ec) is True
  ec.steps_program = "loop"
  with pytest.raises(ValueError, match="steps_program"):
    evaluation.use_scan(ec)


def test_hard_labels_are_mixed_one_hot_and_train_as_cross_entropy():
  data = _data()
  batch = {"images": jnp.asarray(data.train.images[:6]), "epoch": 2, "k": 1,
           "labels": jnp.asarray(data.train.labels[:6])}
  src = _hard(data.train.labels, AUG)
  x, target = src.batch_fn(None, batch)
  # The same key draws the same mixup: lam * y + (1 - lam) * y[perm].
  from jdd.data import augment
  _, params = augment.augment_for_relabel(
      augment.relabel_key(jax.random.key(3), 2, 1), (batch["images"] / 255.0 - 0.5) / 0.25,
      AUG, pad_value=augment.normalized_zero((0.5,), (0.25,)), return_params=True)
  onehot = np.eye(3, dtype=np.float32)[data.train.labels[:6]]
  lam, perm = float(params["lam"]), np.asarray(params["perm"])
  np.testing.assert_allclose(target, lam * onehot + (1 - lam) * onehot[perm], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(target).sum(1), 1.0, rtol=1e-6)
  # Without augmentation: the plain images and exact one-hot targets.
  plain = relabel.without_augmentation(AUG)
  x0, t0 = _hard(data.train.labels, plain).batch_fn(None, batch)
  np.testing.assert_allclose(x0, (np.asarray(batch["images"], np.float32) / 255 - 0.5) / 0.25,
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(t0, onehot)
  assert (AUG.crop, AUG.flip, AUG.mix) == ("pad_crop", True, "mixup")   # not changed in place
  # probs=True: KL to the target at T = 1, i.e. cross-entropy minus the target's entropy.
  s = jax.random.normal(jax.random.key(0), (6, 3))
  np.testing.assert_allclose(
      training.kd_loss(s, jnp.asarray(onehot), 1.0, False, probs=True),
      optax.softmax_cross_entropy(s, onehot).mean(), rtol=1e-6)
  mixed = jnp.asarray(target)
  entropy = -np.sum(np.where(mixed > 0, mixed * np.log(np.maximum(mixed, 1e-30)), 0), 1).mean()
  np.testing.assert_allclose(training.kd_loss(s, mixed, 1.0, False, probs=True),
                             optax.softmax_cross_entropy(s, mixed).mean() - entropy, rtol=1e-5)


def test_trainer_refuses_a_source_of_another_kind():
  ec, data = _ecfg(), _data()
  plan = evaluation.make_plan(ec, 10, 10)
  trainer = evaluation.Trainer(source=_hard(data.train.labels, AUG), data=data, ecfg=ec,
                               plan=plan)
  other = LabelSource("stored", lambda o, b: (b["images"], b["images"]))
  with pytest.raises(ValueError, match="'hard'"):
    trainer.train(data.train.images[:10], order_key=jax.random.key(0), seed=0, source=other)


def test_scores_against_hand_computation():
  e, inv = math.e, 1 / math.e
  # LRS: HLR = 0.9 - 0.7 = 0.2, IOR = 0.8 - 0.75 = 0.05, alpha = 0.025 - 0.1 = -0.075.
  lrs = ddranking.label_robust_score(0.9, 0.7, 0.8, 0.75)
  assert float(lrs["hlr"]) == pytest.approx(0.2) and float(lrs["ior"]) == pytest.approx(0.05)
  assert float(lrs["lrs"]) == pytest.approx((math.exp(-0.075) - inv) / (e - inv), rel=1e-12)
  assert float(lrs["lrs"]) == pytest.approx(0.2381992, abs=1e-7)
  # Weight 1: the score is the improvement over random alone.
  assert float(ddranking.label_robust_score(0.9, 0.7, 0.8, 0.75, 1.0)["alpha"]) == (
      pytest.approx(0.05))
  # ARS: 0.5 (0.80 - 0.78) + 0.5 (0.70 - 0.74) = -0.01.
  ars = ddranking.augmentation_robust_score(0.80, 0.78, 0.70, 0.74)
  assert float(ars["beta"]) == pytest.approx(-0.01)
  assert float(ars["ars"]) == pytest.approx((math.exp(-0.01) - inv) / (e - inv), rel=1e-12)
  # The bounds: alpha = -1 scores 0, alpha = +1 scores 1.
  assert float(ddranking.normalise(-1.0)) == pytest.approx(0.0, abs=1e-15)
  assert float(ddranking.normalise(1.0)) == pytest.approx(1.0)
  # Percent inputs (DD-Ranking's scale) are refused.
  with pytest.raises(ValueError, match="fractions"):
    ddranking.label_robust_score(90.0, 70.0, 80.0, 75.0)
  # From the evaluation's per-seed percentages: per seed, then mean and sample std.
  out = ddranking.scores(0.9, {"soft": {"distilled": [80, 82], "random_subset": [75, 75]},
                               "hard": {"distilled": [70, 70], "random_subset": [60, 61]},
                               "soft_noaug": {"distilled": [70, 72], "random_subset": [74, 74]}})
  per = [(math.exp(0.5 * (a - 0.75) - 0.5 * 0.2) - inv) / (e - inv) for a in (0.80, 0.82)]
  assert out["lrs"]["lrs"]["per_seed"] == pytest.approx(per, rel=1e-12)
  assert out["lrs"]["lrs"]["std"] == pytest.approx(np.std(per, ddof=1), rel=1e-9)
  beta = [0.5 * 0.05 + 0.5 * (-0.04), 0.5 * 0.07 + 0.5 * (-0.02)]
  assert out["ars"]["beta"]["per_seed"] == pytest.approx(beta)
  assert "lrs" not in ddranking.scores(None, {"soft": {"distilled": [80],
                                                       "random_subset": [75]}})


def test_teacher_digest_is_name_free_and_the_cache_round_trips(tmp_path):
  a = load_config(CONFIG)
  b = load_config(os.path.join(ROOT, "configs", "fadrm_fashion_mnist.py"))
  card = {"arch": "convnet", "kwargs": {"width": 32, "depth": 3}, "num_classes": 10}
  da = teacher_cache.digest(teacher_cache.spec(a.teacher, card, a.dataset, 0))
  assert da == teacher_cache.digest(teacher_cache.spec(b.teachers.convnet, card, b.dataset, 0))
  assert da != teacher_cache.digest(teacher_cache.spec(a.teacher, card, a.dataset, 1))
  assert da != teacher_cache.digest(teacher_cache.spec(a.teacher, card, a.dataset, 0,
                                                       "full_data_student"))
  override(a, **{"teacher.epochs": 3})
  assert da != teacher_cache.digest(teacher_cache.spec(a.teacher, card, a.dataset, 0))
  # store -> lookup, through the configured root; '' turns the cache off.
  src = tmp_path / "trained"
  (src / "variables").mkdir(parents=True)
  (src / "variables" / "x").write_text("w")
  (src / "card.json").write_text("{}")
  cfg = types.SimpleNamespace(get=lambda k, d=None: {"teacher_cache": str(tmp_path / "c")}
                              .get(k, d))
  spec = {"role": "teacher"}
  folder = teacher_cache.store(str(src), teacher_cache.cache_root(cfg), spec, "ab" * 32)
  assert folder == teacher_cache.lookup(cfg, "ab" * 32) == str(tmp_path / "c" / ("ab" * 8))
  assert teacher_cache.lookup(cfg, "cd" * 32) is None
  off = types.SimpleNamespace(get=lambda k, d=None: "")
  assert teacher_cache.cache_root(off) is None and teacher_cache.lookup(off, "ab" * 32) is None


def test_shipped_teachers_match_their_checksums_and_the_configs():
  n = teacher_cache.verify_shipped()
  shipped = [d for d in os.listdir(teacher_cache.SHIPPED_DIR)
             if os.path.isdir(os.path.join(teacher_cache.SHIPPED_DIR, d))]
  assert n > 0 and shipped, "the Fashion-MNIST demo teacher must ship with jdd"
  for d in shipped:
    spec = json.load(open(os.path.join(teacher_cache.SHIPPED_DIR, d, "spec.json")))
    assert spec["digest"].startswith(d) and teacher_cache.digest(spec["spec"]) == spec["digest"]
  # The demo config's teacher is among them (a config edit that changes its recipe would
  # silently retrain it: this test says so instead); it is also the full-data student.
  c = load_config(CONFIG)
  from jdd.data.classification import NORMALIZATION
  mean, std = NORMALIZATION["fashion_mnist"]
  card = {"arch": c.teacher.arch, "kwargs": dict(c.teacher.kwargs), "num_classes": 10,
          "image_shape": [28, 28, 1], "dataset": "fashion_mnist", "mean": list(mean),
          "std": list(std)}
  digest = teacher_cache.digest(teacher_cache.spec(c.teacher, card, c.dataset, 0))
  assert teacher_cache.entry_name(digest) in shipped
  assert (c.evaluate.student.arch, dict(c.evaluate.student.kwargs)) == (
      c.teacher.arch, dict(c.teacher.kwargs))


def test_identical_teachers_in_one_config_are_refused():
  c = load_config(os.path.join(ROOT, "configs", "infer_fashion_mnist.py"))
  override(c, **{"teachers.convnet_w32d2.kwargs.depth": 3, "teachers.convnet_w32d2.epochs": 20})
  data = _data()
  ctx = types.SimpleNamespace(config=c, data=data, keys=make_keys(0), workdir="/nonexistent")
  with pytest.raises(ValueError, match="same network"):
    teachers.squeeze(ctx)


def test_curves_png_has_a_panel_per_mode(tmp_path):
  student = lambda off: {"curve": [{"step": s, "val_top1": 0.5 + off + s / 100}
                                   for s in (10, 20)], "selected_step": 20,
                         "test_top1": 0.6 + off}
  path = str(tmp_path / "curves.png")
  curves.plot({"soft": {"distilled": [student(0)], "random_subset": [student(0.1)]},
               "hard": {"distilled": [student(0.05)]}}, {"soft": "soft labels"}, path)
  from PIL import Image
  img = np.asarray(Image.open(path))
  assert img.shape == (curves.H, 2 * curves.W, 3)
  blue = np.all(img == curves.COLOURS["distilled"], -1)
  orange = np.all(img == curves.COLOURS["random_subset"], -1)
  assert blue[:, :curves.W].sum() > 50 and orange[:, :curves.W].sum() > 50
  assert orange[:, curves.W:].sum() == 0 and blue[:, curves.W:].sum() > 50


def test_protocol_end_to_end_at_smoke_scale(tmp_path):
  """The demo config's smoke with every label mode: results.json holds each set's students,
  the per-draw numbers, the paired differences with intervals and the ARS; curves.png exists."""
  c = load_config(CONFIG + ":smoke")
  override(c, **{"evaluate.label_modes": ("soft", "hard", "soft_noaug"), "evaluate.epochs": 2,
                 "evaluate.eval_every": 1, "evaluate.subset_draws": 3})
  workdir = str(tmp_path / "w")
  results = run_lib.run(c, workdir)
  ev = json.load(open(os.path.join(workdir, "results.json")))["evaluation"]
  assert ev["plan"]["distilled"]["total_steps"] == ev["plan"]["random_subset"]["total_steps"]
  assert set(ev["modes"]) == {"soft", "hard", "soft_noaug"}
  for mode, block in ev["modes"].items():
    assert block["distilled"]["num_students"] == 2
    r = block["random_subset"]
    assert r["num_students"] == 3 and sorted(s["draw"] for s in r["per_seed"]) == [0, 1, 2]
    assert sorted(s["eval_seed"] for s in r["per_seed"]) == [0, 0, 1]
    d = block["difference"]
    assert d["n"] == 2 and d["ci_low"] <= d["mean"] <= d["ci_high"]
    assert d["verdict"] in ("beats", "ties", "loses")
    assert all(s["optimizer_steps"] == 4 for s in block["distilled"]["per_seed"] + r["per_seed"])
  assert "ars" in results["ddranking"] and 0 <= results["ddranking"]["ars"]["ars"]["mean"] <= 1
  assert results["distilled"] == ev["modes"]["soft"]["distilled"]
  assert os.path.exists(os.path.join(workdir, "eval", "curves.png"))
  assert os.path.exists(os.path.join(workdir, "eval", "random_subset", "hard", "seed0_draw2.json"))
  # A rerun reads every finished student back instead of training it again.
  again = run_lib.run(c, workdir)
  assert again["evaluation"]["modes"] == results["evaluation"]["modes"]


def test_distill_seeds_reports_the_spread_over_distilled_sets(tmp_path):
  c = load_config(CONFIG + ":smoke")
  override(c, **{"evaluate.epochs": 1, "evaluate.eval_every": 1, "evaluate.seeds": 1,
                 "evaluate.distill_seeds": 2})
  results = run_lib.run(c, str(tmp_path / "w"))
  ds = results["distill_seeds"]
  assert [r["distill_seed"] for r in ds["per_seed"]] == [0, 1]
  # A sub-run returns its results to the parent, which writes the one results.json.
  assert not (tmp_path / "w" / "distill_seeds" / "seed1" / "results.json").exists()
  a = np.load(tmp_path / "w" / "export" / "images.npy")
  b = np.load(tmp_path / "w" / "distill_seeds" / "seed1" / "export" / "images.npy")
  assert a.shape == b.shape and not np.array_equal(a, b)   # another seed, another set
  values = [r["distilled_soft"] for r in ds["per_seed"]]
  assert ds["distilled_soft"]["mean"] == pytest.approx(np.mean(values))
  assert ds["difference"]["n"] == 2
  # The teachers are the parent's: no squeeze under the sub-run's workdir.
  assert not (tmp_path / "w" / "distill_seeds" / "seed1" / "teacher").exists()


@pytest.mark.parametrize("field,value,words", [
    ("evaluate.label_modes", ("hard",), "'soft'"),
    ("evaluate.label_modes", ("soft", "noisy"), "['noisy'] are not label modes"),
    ("evaluate.subset_draws", -1, "subset_draws=-1"),
    ("evaluate.distill_seeds", 0, "distill_seeds=0"),
])
def test_comparison_fields_are_validated_before_any_work(field, value, words):
  from jdd import validation
  from jdd.errors import ConfigError
  c = load_config(CONFIG + ":smoke")
  override(c, **{field: value})
  with pytest.raises(ConfigError) as e:
    validation.check(c, "classification")
  assert field in str(e.value) and words in str(e.value)


def test_fadrm_patch_difficulty_is_validated():
  from jdd import validation
  from jdd.errors import ConfigError
  c = load_config(os.path.join(ROOT, "configs", "fadrm_fashion_mnist.py") + ":smoke")
  validation.check(c, "classification")
  override(c, **{"recover.init.difficulty": "median"})
  with pytest.raises(ConfigError, match="recover.init.difficulty"):
    validation.check(c, "classification")
