"""INFER: budget arithmetic, compensator maths, labels, one compiled step, end to end, resume."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd import models
from jdd import run as run_lib
from jdd.config import load_config, override
from jdd.data import augment, normalize
from jdd.labels import infer as infer_labels
from jdd.labels.source import Ensemble
from jdd.loop import SimulatedInterruption
from jdd.methods import infer, sre2l
from jdd.models import ordered_bn_stats
from jdd.stages import teachers as teachers_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "infer_fashion_mnist.py")
HP = infer.InferHParams(iterations=10, lr=0.25, r_bn=1.0, first_bn_multiplier=10.0,
                        random_resized_crop=False, crop_scale=(0.08, 1.0), flip=False, jitter=2,
                        jitter_symmetric=False, clip_in_loss=False, mean=(0.5,), std=(0.25,))


# ------------------------------------------------------------------------------- budget

@pytest.mark.parametrize("classes,teachers,ipc,real,instances", [
    (10, 4, 10, 7, 35), (10, 4, 50, 35, 175),        # CIFAR-10, M = 4
    (100, 4, 10, 9, 45), (100, 4, 50, 48, 240),      # CIFAR-100, M = 4
    (1000, 3, 10, 9, 36), (1000, 3, 50, 49, 196),    # ImageNet-1K, M = 3
])
def test_budget_matches_the_spec_table(classes, teachers, ipc, real, instances):
  b = infer.compensator_budget(ipc, classes, teachers)
  assert (b.real_per_class, b.instances_per_class) == (real, instances)
  assert b.real_images == real * classes and b.compensators == real * teachers
  assert b.stored == real * classes + real * teachers <= ipc * classes == b.budget
  assert b.materialised_instances == instances * classes


def test_budget_with_class_groups_keeps_the_storage():
  b = infer.compensator_budget(10, 100, 4, classes_per_group=10)   # 10 groups of 10
  assert b.real_per_class == 7 and b.compensators == 7 * 4 * 10
  assert b.stored <= b.budget


@pytest.mark.parametrize("classes,teachers,smallest", [(10, 4, 2), (1000, 3, 2), (2, 4, 3)])
def test_ipc_too_small_names_the_smallest_that_works(classes, teachers, smallest):
  with pytest.raises(ValueError, match=f"smallest IPC that works is {smallest}"):
    infer.compensator_budget(smallest - 1, classes, teachers)
  assert infer.compensator_budget(smallest, classes, teachers).real_per_class == 1


# ---------------------------------------------------------------------- materialisation

def test_materialise_against_hand_computation():
  rng = np.random.default_rng(0)
  c, j, m, b = 4, 2, 2, 2                                # two groups of two classes
  mean, std = (0.4,), (0.2,)
  real = rng.integers(0, 256, (c, j, 3, 3, 1), dtype=np.uint8)
  comps = rng.normal(0, 2.0, (c // b, j, m, 3, 3, 1)).astype(np.float32)
  out = infer.materialise(real, comps, mean, std, b)
  assert out.shape == (c * (m + 1) * j, 3, 3, 1) and out.dtype == np.uint8
  for cls in range(c):
    for i in range((m + 1) * j):
      got = out[cls * (m + 1) * j + i]
      if i < j:
        np.testing.assert_array_equal(got, real[cls, i])
        continue
      t, slot = i // j - 1, i % j
      pixel = (real[cls, slot] / 255.0 - 0.4) / 0.2 + comps[cls // b, slot, t]
      expect = np.clip(np.round((pixel * 0.2 + 0.4) * 255.0), 0, 255)
      np.testing.assert_array_equal(got, expect.astype(np.uint8))


# ------------------------------------------------------------------------ the recover step

def _setup(num_units=3, classes=4):
  model = models.build_model("convnet", classes, width=8, depth=2)
  variables = models.init_variables(model, jax.random.key(0), (16, 16, 1))
  real = jax.random.normal(jax.random.key(1), (num_units, classes, 16, 16, 1))
  batch = {"real": real,
           "targets": jnp.tile(jnp.arange(classes, dtype=jnp.int32), (num_units, 1)),
           "unit_ids": jnp.arange(num_units, dtype=jnp.int32) + 7}
  return model, variables, batch


def test_step_compiles_once_and_learns_one_u_per_unit():
  model, variables, batch = _setup()
  state = infer.init(3, (16, 16, 1), HP)
  assert state.u.shape == (3, 1, 16, 16, 1) and not np.any(np.asarray(state.u))

  @chex.assert_max_traces(n=1)
  def bound(state, batch, rng, teacher):
    return infer.step(state, batch, rng, teacher, model=model, hp=HP)

  step = jax.jit(bound)
  s = state
  for t in range(3):
    s, metrics = step(s, batch, jax.random.fold_in(jax.random.key(2), t), variables)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["bn"]) > 0
  u = np.asarray(s.u)
  assert np.abs(u).max() > 0
  assert not np.allclose(u[0], u[1])  # each unit has its own real batch and key


def _plain_loss(u, real, targets, key, variables, model, hp):
  """INFER's loss written out: each class image plus the same u, then CE + r_bn * BN terms."""
  x = jnp.stack([real[c] + u[0] for c in range(real.shape[0])])
  x = sre2l.augment_batch(key, x, hp)
  logits, col = model.apply(variables, x, train=False, mutable=["bn_stats"])
  logp = jax.nn.log_softmax(logits)
  ce = -jnp.mean(logp[jnp.arange(len(targets)), targets])
  bn = 0.0
  for i, e in enumerate(ordered_bn_stats(col["bn_stats"])):
    r = (jnp.sqrt(jnp.sum((e["running_var"] - e["var"]) ** 2))
         + jnp.sqrt(jnp.sum((e["running_mean"] - e["mean"]) ** 2)))
    bn = bn + (hp.first_bn_multiplier if i == 0 else 1.0) * r
  return ce + hp.r_bn * bn


def test_grad_wrt_u_equals_jax_grad_of_the_plain_formulation():
  model, variables, batch = _setup(num_units=2)
  u = 0.1 * jax.random.normal(jax.random.key(3), (2, 1, 16, 16, 1))
  rng = jax.random.key(4)
  grads, _ = infer.compensator_grads(u, batch, rng, variables, model=model, hp=HP)
  for i in range(2):
    key = jax.random.fold_in(rng, batch["unit_ids"][i])
    g = jax.grad(_plain_loss)(u[i], batch["real"][i], batch["targets"][i], key, variables,
                              model, HP)
    np.testing.assert_allclose(np.asarray(grads[i]), np.asarray(g), rtol=1e-4, atol=1e-6)
  # And a central finite difference of the plain loss along a random direction.
  key = jax.random.fold_in(rng, batch["unit_ids"][0])
  d = jax.random.normal(jax.random.key(9), (1, 16, 16, 1))
  f = lambda t: float(_plain_loss(u[0] + t * d, batch["real"][0], batch["targets"][0], key,
                                  variables, model, HP))
  eps = 1e-2
  assert (f(eps) - f(-eps)) / (2 * eps) == pytest.approx(float(jnp.vdot(grads[0], d)), rel=2e-2)


def test_bn_free_teacher_contributes_cross_entropy_only():
  model = models.build_model("convnet", 4, width=8, depth=2, norm="none")
  variables = models.init_variables(model, jax.random.key(0), (16, 16, 1))
  _, _, batch = _setup(1)
  loss, (ce, bn, _) = infer.unit_loss(jnp.zeros((1, 16, 16, 1)), batch["real"][0],
                                      batch["targets"][0], jax.random.key(0), variables,
                                      model=model, hp=HP)
  assert float(bn) == 0.0 and float(loss) == pytest.approx(float(ce))


# ------------------------------------------------------------------------------- labels

def _teachers(classes=5):
  specs = [("convnet", {"width": 4, "depth": 2}), ("resnet18", {"stem": "cifar", "width": 2})]
  out = []
  for i, (arch, kw) in enumerate(specs):
    m = models.build_model(arch, classes, **kw)
    out.append((m, models.init_variables(m, jax.random.key(10 + i), (8, 8, 1))))
  return out


def _jit_eval(model):
  """model.apply in eval mode, jitted (op by op, a teacher compiles dozens of tiny programs)."""
  return jax.jit(lambda variables, x: model.apply(variables, x, train=False))


def test_static_labels_and_logit_mixup_against_numpy():
  teachers = _teachers()
  mean, std = (0.3,), (0.4,)
  images = np.random.default_rng(1).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
  y = infer_labels.static_logits([m for m, _ in teachers], [v for _, v in teachers], images,
                                 mean, std, batch_size=4)
  x = (images.astype(np.float32) / 255.0 - 0.3) / 0.4
  direct = np.mean([np.asarray(_jit_eval(m)(v, x)) for m, v in teachers], axis=0)
  np.testing.assert_allclose(y, direct, rtol=1e-5, atol=1e-6)
  # A student batch: the images go through crop + flip + mixup; the target mixes the logits.
  cfg = {"crop": "pad_crop", "crop_padding": 2, "flip": True, "mix": "mixup", "mix_alpha": 0.8}
  aug_key = jax.random.key(5)
  batch = {"images": jnp.asarray(images), "epoch": 3, "k": 1, "image_logits": jnp.asarray(y)}
  cfg_obj = type("Cfg", (), cfg)()
  xs, target = infer_labels.static_batch_fn(None, batch, cfg=cfg_obj, mean=mean, std=std,
                                            aug_key=aug_key)
  x_ref, params = jax.jit(lambda k, im: augment.augment_for_relabel(
      k, normalize(im, mean, std), cfg, pad_value=augment.normalized_zero(mean, std),
      return_params=True))(augment.relabel_key(aug_key, 3, 1), jnp.asarray(images))
  lam, perm = float(params["lam"]), np.asarray(params["perm"])
  np.testing.assert_allclose(np.asarray(target), lam * y + (1 - lam) * y[perm], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(xs), np.asarray(x_ref), atol=1e-6)
  assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(6))


def test_dynamic_labels_average_the_teachers_on_the_augmented_batch():
  teachers = _teachers()
  mean, std = (0.3,), (0.4,)
  images = jnp.asarray(np.random.default_rng(2).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8))
  cfg = type("Cfg", (), {"crop": "pad_crop", "crop_padding": 2, "flip": True, "mix": "mixup",
                         "mix_alpha": 0.8})()
  ens = Ensemble(tuple(m for m, _ in teachers))
  x, logits = infer_labels.online_batch_fn(
      tuple(v for _, v in teachers), {"images": images, "epoch": 0, "k": 2}, ensemble=ens,
      cfg=cfg, mean=mean, std=std, aug_key=jax.random.key(6))
  direct = np.mean([np.asarray(_jit_eval(m)(v, x)) for m, v in teachers], axis=0)
  np.testing.assert_allclose(np.asarray(logits), direct, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------- configs, schema

def test_paper_configs_load_with_their_epoch_rule():
  for name in ("cifar10", "cifar100", "tiny", "imagenet"):
    path = os.path.join(ROOT, "configs", f"infer_{name}.py")
    static, dyn = load_config(path), load_config(path + ":dynamic=True")
    m = len(static.teacher_names)
    assert static.relabel.mode == "static" and dyn.relabel.mode == "dynamic"
    assert dyn.evaluate.epochs == static.evaluate.epochs // (m + 1)
    assert set(static.teacher_names) == set(static.teachers.keys())
    assert load_config(path + ":smoke").recover.iterations <= 10
  with pytest.raises(ValueError, match="unknown variant"):
    load_config(os.path.join(ROOT, "configs", "infer_cifar10.py:dynamc=True"))


def test_teacher_list_must_match_the_names():
  c = load_config(CONFIG + ":smoke")
  specs = teachers_lib.teacher_specs(c)
  assert [s[0] for s in specs] == list(c.teacher_names)
  assert specs[0][2] == os.path.join("teachers", c.teacher_names[0])
  override(c, **{"teacher_names": ("resnet18",)})   # the other one is loaded after it
  assert [s[0] for s in teachers_lib.teacher_specs(c)] == ["resnet18", "convnet"]
  for bad in (("convnet", "convnet"), ("convnet", "vgg")):
    override(c, **{"teacher_names": bad})
    with pytest.raises(ValueError, match="at most once"):
      teachers_lib.teacher_specs(c)


# ------------------------------------------------------------------- end to end, resume

def _small():
  c = load_config(CONFIG + ":smoke")
  override(c, **{"evaluate.epochs": 2, "evaluate.eval_every": 1, "evaluate.seeds": 1,
                 "evaluate.baseline": False})
  return c


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("infer_uninterrupted"))
  return workdir, run_lib.run(_small(), workdir)


def test_smoke_end_to_end_results_and_manifest(reference_run):
  workdir, results = reference_run
  edir = os.path.join(workdir, "export")
  on_disk = json.load(open(os.path.join(workdir, "results.json")))
  manifest = json.load(open(os.path.join(edir, "manifest.json")))
  b = on_disk["infer_budget"]
  assert (b["real_per_class"], b["instances_per_class"], b["compensators"]) == (2, 6, 4)
  assert manifest["infer_budget"] == b and on_disk["manifest"]["bytes"] == manifest["bytes"]
  assert sorted(manifest["stored_files"]) == ["compensators", "real_images", "real_labels"]
  assert sorted(manifest["derived_files"]) == ["images", "labels"]
  real, comps = np.load(os.path.join(edir, "real_images.npy")), np.load(
      os.path.join(edir, "compensators.npy"))
  images = np.load(os.path.join(edir, "images.npy"))
  assert real.shape == (20, 28, 28, 1) and comps.shape == (1, 2, 2, 28, 28, 1)
  assert images.shape == (60, 28, 28, 1) and np.abs(comps).max() > 0
  assert manifest["bytes"]["images"] == real.nbytes + comps.nbytes   # the stored budget
  assert manifest["bytes"]["derived"] == images.nbytes + 240
  soft = np.load(os.path.join(edir, "soft_labels.npy"))
  assert soft.shape == (60, 10) and manifest["bytes"]["soft_labels"] == soft.nbytes
  assert manifest["bytes"]["labels"] == 80 + soft.nbytes            # real_labels + static
  # The stored files rebuild the training instances exactly.
  data_mean, data_std = manifest["normalisation"]["mean"], manifest["normalisation"]["std"]
  np.testing.assert_array_equal(
      infer.materialise(real.reshape(10, 2, 28, 28, 1), comps, data_mean, data_std, 10), images)
  init = json.load(open(os.path.join(edir, "real_init.json")))
  assert len(init["train_indices"]) == 20 and init["seed"] == 0
  assert 0.0 <= on_disk["distilled"]["test_top1_mean"] <= 100.0
  assert [t["name"] for t in on_disk["teachers"]] == ["convnet", "resnet18"]


def test_interrupted_recover_resumes_bit_identically(reference_run, tmp_path):
  ref_dir, _ = reference_run
  workdir = str(tmp_path / "interrupted")

  def config(interrupt):
    c = _small()
    for name in c.teacher_names:  # reuse the reference teachers: only recover runs here
      override(c, **{f"teachers.{name}.checkpoint": os.path.join(ref_dir, "teachers", name)})
    override(c, **{"debug.interrupt_after": interrupt})
    return c

  # 10 iterations per teacher: 17 steps end the convnet round and stop the resnet18 one at 7
  # (last checkpoint at 5).
  with pytest.raises(SimulatedInterruption):
    run_lib.run(config(17), workdir)
  assert not os.path.exists(os.path.join(workdir, "export", "images.npy"))
  assert os.path.exists(os.path.join(workdir, "recover_rounds", "convnet_round00000.npy"))
  assert os.path.exists(os.path.join(workdir, "checkpoints", "recover_resnet18_round00000", "5"))
  run_lib.run(config(0), workdir)
  for name in ("compensators", "real_images", "images", "soft_labels"):
    np.testing.assert_array_equal(np.load(os.path.join(workdir, "export", f"{name}.npy")),
                                  np.load(os.path.join(ref_dir, "export", f"{name}.npy")))
