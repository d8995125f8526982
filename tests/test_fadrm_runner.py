"""FADRM / FADRM+ through the driver: smoke runs end to end, and an interrupted recover that
resumes across the stage (and resolution) change with bit-identical images.

The smoke config runs two stages, 32 px then 28 px (tiny ConvNet teachers), so a checkpoint
saved in the second stage must be restored into a 28-px template while a fresh state is 32 px.
"""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdd import models, training
from jdd import run as run_lib
from jdd.config import load_config, override
from jdd.evaluation import classification
from jdd.loop import SimulatedInterruption
from jdd.methods import fadrm
from jdd.stages import relabel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "fadrm_fashion_mnist.py")


def _small(variant: str = "smoke"):
  c = load_config(f"{CONFIG}:{variant}")
  override(c, **{"evaluate.epochs": 2, "evaluate.eval_every": 1, "evaluate.seeds": 2,
                 "evaluate.baseline": False})
  return c


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("fadrm_uninterrupted"))
  return workdir, run_lib.run(_small(), workdir)


def _check_results(workdir, results, teachers):
  edir = os.path.join(workdir, "export")
  on_disk = json.load(open(os.path.join(workdir, "results.json")))
  manifest = json.load(open(os.path.join(edir, "manifest.json")))
  images, labels = np.load(os.path.join(edir, "images.npy")), np.load(
      os.path.join(edir, "labels.npy"))
  assert images.shape == (20, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 2))
  soft = np.load(os.path.join(edir, "soft_labels.npy"))
  assert soft.shape == (2, 2, 10, 10) and soft.dtype == np.float16   # (E, S, b, C)
  assert manifest["bytes"] == on_disk["manifest"]["bytes"] == results["manifest"]["bytes"]
  assert manifest["bytes"]["images"] == images.nbytes
  assert manifest["bytes"]["soft_labels"] == soft.nbytes
  assert manifest["bytes"]["labels"] == labels.nbytes + soft.nbytes
  assert manifest["stored_files"] == ["images", "labels"]
  assert on_disk["labels"] == "bssl" and "bssl stored" in manifest["soft_labels"]
  d = on_disk["distilled"]
  assert d["num_seeds"] == 2 and 0.0 <= d["test_top1_mean"] <= 100.0 and d["test_top1_std"] >= 0
  f = manifest["fadrm"]
  assert f == on_disk["fadrm"] and f["round_robin_teachers"] == teachers
  assert [(s["resolution"], s["start"], s["stop"]) for s in f["stages"]] == [(32, 0, 8),
                                                                            (28, 8, 16)]
  init = json.load(open(os.path.join(edir, "patch_init.json")))
  assert init["scored_by"] == teachers[0] and init["seed"] == 0
  assert f["patch_init"]["candidates_per_class"] == init["candidates_per_class"] == 8
  for c, rec in enumerate(init["classes"]):
    assert len(rec["train_indices"]) == 2 and len(set(rec["train_indices"])) == 2
  assert os.path.exists(os.path.join(edir, "grid.png"))
  return images


def test_fadrm_smoke_end_to_end(reference_run):
  workdir, results = reference_run
  images = _check_results(workdir, results, ["convnet_bn"])
  # The images moved away from their real patches, and every class kept its own.
  patches = np.load(os.path.join(workdir, "recover_rounds", "patches.npy"))
  assert patches.shape == (10, 2, 28, 28, 1)
  norm = json.load(open(os.path.join(workdir, "export", "manifest.json")))["normalisation"]
  start = fadrm.to_uint8(patches.reshape(20, 28, 28, 1), norm["mean"], norm["std"])
  assert np.abs(images.astype(int) - start.astype(int)).mean() > 1.0


def test_fadrm_plus_smoke_end_to_end(reference_run, tmp_path):
  ref_dir, _ = reference_run
  c = _small("smoke,plus=True")
  # Reuse the BN teacher (same squeeze recipe and key); the instance-norm one is trained here.
  override(c, **{"teachers.convnet_bn.checkpoint": os.path.join(ref_dir, "teachers",
                                                                "convnet_bn")})
  workdir = str(tmp_path / "plus")
  results = run_lib.run(c, workdir)
  images = _check_results(workdir, results, ["convnet_bn", "convnet_in"])
  assert [t["name"] for t in results["teachers"]] == ["convnet_bn", "convnet_in"]
  # Same patches (scored by the same first teacher), different optimisation.
  np.testing.assert_array_equal(np.load(os.path.join(workdir, "recover_rounds", "patches.npy")),
                                np.load(os.path.join(ref_dir, "recover_rounds", "patches.npy")))
  assert not np.array_equal(images, np.load(os.path.join(ref_dir, "export", "images.npy")))


def test_interrupted_recover_resumes_across_the_resolution_change(reference_run, tmp_path):
  ref_dir, _ = reference_run
  workdir = str(tmp_path / "interrupted")

  def config(interrupt):
    c = _small()
    override(c, **{"teachers.convnet_bn.checkpoint": os.path.join(ref_dir, "teachers",
                                                                  "convnet_bn"),
                   "debug.interrupt_after": interrupt})
    return c

  # 16 recover steps, checkpoints every 10: 13 steps stop in the 28-px stage, last checkpoint
  # at step 10, whose images are 28 px while a fresh state starts at 32 px.
  with pytest.raises(SimulatedInterruption):
    run_lib.run(config(13), workdir)
  assert not os.path.exists(os.path.join(workdir, "export", "images.npy"))
  assert os.path.exists(os.path.join(workdir, "checkpoints", "recover_round00000", "10"))
  run_lib.run(config(0), workdir)
  for name in ("images", "soft_labels"):
    np.testing.assert_array_equal(np.load(os.path.join(workdir, "export", f"{name}.npy")),
                                  np.load(os.path.join(ref_dir, "export", f"{name}.npy")))


def test_restore_template_has_the_saved_stage_resolution():
  hp = fadrm.FadrmHParams(resolutions=(32, 28), budgets=(8, 8), lr=0.1, alpha=0.5, r_bn=0.01,
                         first_bn_multiplier=10.0, random_resized_crop=False,
                         crop_scale=(0.5, 1.0), flip=False, jitter=0, mean=(0.5,), std=(0.5,))
  patches = jnp.zeros((1, 2, 28, 28, 1))
  assert fadrm.restore_template(patches, hp, None).images.shape[2] == 32
  assert fadrm.restore_template(patches, hp, 8).images.shape[2] == 32   # steps 0..7: stage 0
  t = fadrm.restore_template(patches, hp, 9)
  assert t.images.shape[2] == 28 and int(t.stage) == 1 and int(t.step) == 9


def test_grad_accumulation_feeds_micro_batches_and_defaults_unchanged():
  """k = 2 equals two half-batch gradients averaged (BN statistics per half, running stats
  updated twice); k = 1 is `training.kd_step` exactly."""
  model = models.build_model("convnet", 10, width=4, depth=1)
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 1))
  # Plain SGD: the conv bias before BN has a true gradient of 0, i.e. rounding noise, which an
  # adaptive optimiser scales up to a full step whose sign differs between two programs.
  opt = optax.sgd(0.5)
  state = training.init_state(variables, opt)
  x = jax.random.normal(jax.random.key(1), (6, 8, 8, 1))
  t = jax.random.normal(jax.random.key(2), (6, 10))
  batch = {"images": x, "teacher_logits": t}
  # Everything jitted: op by op, each step compiles dozens of tiny programs (a minute of CPU).
  acc, m = jax.jit(lambda s, b: classification._accumulated_kd_step(
      s, b, None, model=model, optimizer=opt, temperature=4.0, t_squared=False,
      num_splits=2))(state, batch)

  @jax.jit
  def expected(state):
    s, grads, losses = state, [], []
    for lo, hi in ((0, 3), (3, 6)):
      def loss_fn(p, s=s, lo=lo, hi=hi):
        logits, st = training._apply_train(model, s, p, x[lo:hi])
        return training.kd_loss(logits, t[lo:hi], 4.0, False), st
      (loss, st), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      s = s.replace(batch_stats=st)
      grads.append(g)
      losses.append(loss)
    g = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    updates, _ = opt.update(g, state.opt_state, state.params)
    return jax.tree.map(lambda p, u: p + u, state.params, updates), s, jnp.mean(jnp.stack(losses))

  expect, s, mean_loss = expected(state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               acc.params, expect)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               acc.batch_stats, s.batch_stats)
  np.testing.assert_allclose(m["kd_loss"], mean_loss, rtol=1e-6)
  full = jax.jit(lambda s: classification._student_step(
      s, {"x": x}, None, None, model=model, optimizer=opt,
      batch_fn=lambda o, b: (b["x"], t), temperature=4.0, t_squared=False))(state)
  direct = jax.jit(lambda s: training.kd_step(s, batch, None, model=model, optimizer=opt,
                                              temperature=4.0, t_squared=False))(state)
  jax.tree.map(np.testing.assert_array_equal, full[0].params, direct[0].params)
  assert not np.allclose(full[0].params["fc"]["kernel"], acc.params["fc"]["kernel"])


def test_bssl_refuses_a_student_with_other_micro_batches():
  c = load_config(CONFIG + ":smoke")
  override(c, **{"evaluate.grad_accum_steps": 1})
  ctx = types.SimpleNamespace(config=c, teachers=[])
  with pytest.raises(ValueError, match="grad_accum_steps"):
    relabel.label_source(ctx, "distilled", np.zeros((20, 28, 28, 1), np.uint8), "/nonexistent",
                         classification.make_plan(c.evaluate, 20, 20))


def test_cosine_eta_cuts_a_longer_cosine():
  """eta = 2: lr_e = lr0 * 0.5 (1 + cos(pi e / (E eta))), read back from plain SGD updates."""
  ecfg = load_config(CONFIG + ":smoke").evaluate
  assert ecfg.cosine_eta == 2.0   # the Fashion-MNIST config's IPC-10 value, kept by smoke
  override(ecfg, cosine_eta=1.0)
  assert classification._eta_config(ecfg) is ecfg   # eta 1: the config itself, unchanged
  override(ecfg, **{"cosine_eta": 2.0, "epochs": 4, "lr_per_epoch": True, "optimizer": "sgd",
                    "momentum": 0.0, "weight_decay": 0.0, "lr": 0.1})
  stretched = classification._eta_config(ecfg)
  assert stretched.epochs == 8 and ecfg.epochs == 4
  opt = training.make_optimizer(stretched, 3)
  params = {"w": jnp.ones((2, 2))}
  state, lrs = opt.init(params), []
  for _ in range(12):   # 4 epochs x 3 steps
    updates, state = opt.update({"w": jnp.ones((2, 2))}, state, params)
    lrs.append(-float(updates["w"][0, 0]))
  want = [0.1 * 0.5 * (1 + np.cos(np.pi * (t // 3) / 8)) for t in range(12)]
  np.testing.assert_allclose(lrs, want, rtol=1e-5)
  override(ecfg, **{"cosine_eta": 1.5, "epochs": 3})
  with pytest.raises(ValueError, match="whole number"):
    classification._eta_config(ecfg)
