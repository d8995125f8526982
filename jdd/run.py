"""The driver: stages in order, each skipped when its output in the workdir is complete.

    squeeze   train (or load) the teacher               -> W/teacher/{variables, card.json}
    recover   synthesise the images (method step)        -> W/export/{images,labels}.npy, grid.png
    relabel   FKD soft labels of the distilled set       -> W/export/soft_labels.npy
    evaluate  students on the distilled set, several seeds, and on a random real subset of
              the same size (the baseline every DD paper reports) -> W/results.json

A checkpoint in the workdir means resume: a run killed at any moment and restarted with the same
command continues from its last checkpoint and ends with the same distilled set, bit for bit,
because every random draw is `fold_in(key, step)` of the config's seed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

import jdd
from jdd import checkpoint, mesh as mesh_lib, models, reporting, training
from jdd.data import load_classification
from jdd.evaluation import classification as evaluation
from jdd.labels import fkd
from jdd.methods import sre2l

METHODS = {"sre2l": sre2l}


class SimulatedInterruption(RuntimeError):
  """Raised by `config.debug.interrupt_after` to test resumption in-process."""


class _Budget:
  """Counts steps in this process, for `debug.interrupt_after`."""

  def __init__(self, limit: int):
    self.limit, self.count = limit, 0

  def tick(self):
    self.count += 1
    if self.limit and self.count >= self.limit:
      raise SimulatedInterruption(f"debug.interrupt_after={self.limit} reached")


def _keys(config):
  base = jax.random.key(int(config.seed))
  names = ("squeeze", "recover_init", "recover", "relabel_order", "relabel_aug", "baseline",
           "eval")
  return {name: jax.random.fold_in(base, i) for i, name in enumerate(names)}


def _loop(stage, workdir, state, step_fn, batch_fn, num_steps, key, config, writer, budget):
  """Runs `step_fn` from the last checkpoint to `num_steps`, checkpointing as it goes."""
  ckpt = checkpoint.StageCheckpointer(workdir, stage)
  state, start = ckpt.restore_or(state)
  if start:
    print(f"[{stage}] resuming from checkpoint at step {start}/{num_steps}", flush=True)
  progress = reporting.Progress(stage, num_steps, start, every=int(config.log_every))
  every = int(config.checkpoint_every)
  try:
    for s in range(start, num_steps):
      state, metrics = step_fn(state, batch_fn(s), jax.random.fold_in(key, s))
      done = s + 1
      if done % int(config.log_every) == 0 or done == num_steps or done % every == 0:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        reporting.check_finite(stage, done, values)
        writer.write_scalars(done, {f"{stage}/{k}": v for k, v in values.items()})
        progress(done, values)
      if done % every == 0 or done == num_steps:
        ckpt.save(done, state)
      budget.tick()
  finally:
    ckpt.close()
  return state


# --------------------------------------------------------------------------------- squeeze


def _teacher_dir(workdir):
  return os.path.join(workdir, "teacher")


def _teacher_card(config, data):
  return {"arch": config.teacher.arch, "kwargs": dict(config.teacher.kwargs),
          "num_classes": data.num_classes, "image_shape": list(data.image_shape),
          "dataset": data.name, "mean": list(data.mean), "std": list(data.std)}


def load_teacher(path: str, expect: dict):
  """Loads a teacher saved by a squeeze stage; refuses one built for another setting."""
  card_path = os.path.join(path, "card.json")
  if not os.path.exists(card_path):
    raise FileNotFoundError(
        f"teacher.checkpoint={path!r} has no card.json: point it at the `teacher/` folder of a "
        "finished jdd run (W/teacher), or leave it empty to train the teacher here.")
  card = checkpoint.read_json(card_path)
  for field in ("arch", "kwargs", "num_classes", "image_shape"):
    if card.get(field) != expect[field]:
      raise ValueError(
          f"teacher at {path} has {field}={card.get(field)!r} but this config needs "
          f"{expect[field]!r}; set teacher.arch/kwargs to match it or squeeze a new teacher.")
  model = models.build_model(card["arch"], card["num_classes"], **card["kwargs"])
  template = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0),
                                                          tuple(card["image_shape"])))
  variables = ocp.StandardCheckpointer().restore(
      os.path.abspath(os.path.join(path, "variables")), template)
  return model, variables, card


def squeeze(config, workdir, data, keys, writer, budget):
  tdir = _teacher_dir(workdir)
  expect = _teacher_card(config, data)
  if config.teacher.checkpoint:
    print(f"[squeeze] using teacher {config.teacher.checkpoint}", flush=True)
    return load_teacher(config.teacher.checkpoint, expect)
  if os.path.exists(os.path.join(tdir, "card.json")):
    print("[squeeze] teacher already trained: skipped", flush=True)
    return load_teacher(tdir, expect)
  tc = config.teacher
  if not hasattr(data.train, "images"):
    raise ValueError(
        f"{data.name}: squeezing a teacher on a streamed training split is not supported; set "
        "teacher.checkpoint to a converted teacher folder (card.json + variables).")
  model = models.build_model(tc.arch, data.num_classes, **dict(tc.kwargs))
  variables = models.init_variables(model, jax.random.fold_in(keys["squeeze"], 0),
                                    data.image_shape)
  n, b = len(data.train), int(tc.batch_size)
  s = n // b
  optimizer = training.make_optimizer(tc, s)
  state = training.init_state(variables, optimizer)
  step = jax.jit(functools.partial(
      training.supervised_step, model=model, optimizer=optimizer, mean=data.mean, std=data.std,
      crop_padding=int(tc.crop_padding), flip=bool(tc.flip)))
  order_key = jax.random.fold_in(keys["squeeze"], 1)
  epoch_perm = {}

  def batch_fn(i):
    e, k = divmod(i, s)
    if e not in epoch_perm:
      epoch_perm.clear()
      epoch_perm[e] = np.asarray(jax.random.permutation(jax.random.fold_in(order_key, e), n))
    idx = epoch_perm[e][k * b:(k + 1) * b]
    return {"images": data.train.images[idx], "labels": data.train.labels[idx]}

  state = _loop("squeeze", workdir, state, step, batch_fn, int(tc.epochs) * s,
                jax.random.fold_in(keys["squeeze"], 2), config, writer, budget)
  variables = training.variables_of(state)
  predict = training.predict_fn(model)
  acc = {split: training.accuracy(predict, variables, getattr(data, split).images,
                                  getattr(data, split).labels, data.mean, data.std)
         for split in ("val", "test")}
  print(f"[squeeze] teacher top-1: val {acc['val'] * 100:.2f}%  test {acc['test'] * 100:.2f}%",
        flush=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(os.path.join(tdir, "variables")), variables, force=True)
  ckptr.wait_until_finished()
  checkpoint.atomic_write_json(os.path.join(tdir, "card.json"),
                               {**expect, "val_top1": acc["val"], "test_top1": acc["test"]})
  return model, variables, checkpoint.read_json(os.path.join(tdir, "card.json"))


# --------------------------------------------------------------------------------- recover


def _export_dir(workdir):
  return os.path.join(workdir, "export")


def recover(config, workdir, data, teacher, keys, writer, mesh, budget):
  """Runs the method's recover in rounds of `groups_per_step` class batches."""
  edir = _export_dir(workdir)
  if os.path.exists(os.path.join(edir, "images.npy")):
    print("[recover] distilled images already exported: skipped", flush=True)
    return np.load(os.path.join(edir, "images.npy")), np.load(os.path.join(edir, "labels.npy"))
  model, teacher_variables, _ = teacher
  rc = config.recover
  method = METHODS[config.method]
  hp = method.hparams_from_config(rc, data.mean, data.std)
  targets = method.group_targets(data.num_classes, int(rc.classes_per_batch), int(rc.ipc))
  num_groups = len(targets)
  per_round = min(int(rc.groups_per_step), num_groups)
  teacher_variables = mesh_lib.replicate(teacher_variables, mesh)
  step = jax.jit(functools.partial(method.step, model=model, hp=hp))
  rounds_dir = os.path.join(workdir, "recover_rounds")
  finished = []
  for r, start in enumerate(range(0, num_groups, per_round)):
    out = os.path.join(rounds_dir, f"round{r:05d}.npy")
    if os.path.exists(out):
      finished.append(np.load(out))
      continue
    group_ids = np.arange(start, min(start + per_round, num_groups), dtype=np.int32)
    batch = {"targets": mesh_lib.shard(jnp.asarray(targets[group_ids]), mesh),
             "group_ids": mesh_lib.shard(jnp.asarray(group_ids), mesh)}
    state = method.init(keys["recover_init"], jnp.asarray(group_ids), targets.shape[1],
                        data.image_shape, hp)
    state = state.replace(images=mesh_lib.shard(state.images, mesh, axes=(0, 1)))
    state = _loop(f"recover_round{r:05d}", workdir, state,
                  lambda st, b, k: step(st, b, k, teacher_variables), lambda i: batch,
                  hp.iterations, keys["recover"], config, writer, budget)
    images = method.to_uint8(jax.device_get(state.images), data.mean, data.std)
    checkpoint.atomic_save_npy(out, images)
    finished.append(images)
  # Order the set class-major: image i of class c at c * ipc + i.
  groups = np.concatenate(finished)            # (G, B, H, W, C)
  labels = np.asarray(targets).reshape(-1)
  images = groups.reshape(-1, *groups.shape[2:])
  order = np.argsort(labels, kind="stable")
  images, labels = images[order], labels[order].astype(np.int32)
  checkpoint.atomic_save_npy(os.path.join(edir, "labels.npy"), labels)
  grid = reporting.image_grid(images, nrow=int(rc.ipc))
  reporting.save_png(os.path.join(edir, "grid.png"), grid)
  writer.write_images(hp.iterations, {"synthetic_set": grid[None]})
  checkpoint.atomic_save_npy(os.path.join(edir, "images.npy"), images)  # last: marks done
  return images, labels


# --------------------------------------------------------------------------------- relabel


def relabel(name, out_path, images, config, data, teacher, keys):
  """Stored FKD logits for `images` (skipped when `out_path` exists or labels are online)."""
  if config.relabel.mode == "online":
    return None
  if os.path.exists(out_path):
    print(f"[relabel:{name}] soft labels exist: skipped", flush=True)
    return np.load(out_path)
  model, variables, _ = teacher
  epochs = int(config.evaluate.epochs)
  batch = int(min(config.evaluate.batch_size, len(images)))
  progress = reporting.Progress(f"relabel:{name}", epochs, every=max(1, epochs // 5))
  labels = fkd.compute_soft_labels(
      model, variables, images, epochs=epochs, batch_size=batch,
      order_key=keys["relabel_order"], aug_key=keys["relabel_aug"], cfg=config.relabel,
      mean=data.mean, std=data.std, progress=progress)
  checkpoint.atomic_save_npy(out_path, labels)
  return labels


# -------------------------------------------------------------------------------- evaluate


def random_subset(data, ipc: int, key) -> np.ndarray:
  """`ipc` real training images per class, drawn with a recorded key."""
  if not hasattr(data.train, "images"):  # streamed (ImageNet): first `ipc` per class
    return data.train.take_per_class(ipc, data.num_classes).images
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  idx = [rng.choice(np.flatnonzero(data.train.labels == c), ipc, replace=False)
         for c in range(data.num_classes)]
  return data.train.images[np.concatenate(idx)]


def evaluate_set(name, images, soft_labels, config, workdir, data, teacher, keys):
  """Students over `config.evaluate.seeds`; each finished seed is kept, so a kill loses one."""
  ec = config.evaluate
  results = []
  for seed in range(int(ec.seeds)):
    path = os.path.join(workdir, "eval", f"{name}_seed{seed}.json")
    if os.path.exists(path):
      results.append(checkpoint.read_json(path))
      continue
    progress = reporting.Progress(f"evaluate:{name}:seed{seed}", int(ec.epochs),
                                  every=max(1, int(ec.epochs) // 5))
    r = evaluation.train_student(
        images, soft_labels=soft_labels, teacher=teacher[:2], data=data, ecfg=ec,
        relabel_cfg=config.relabel, order_key=keys["relabel_order"],
        aug_key=keys["relabel_aug"], seed=int(config.seed) * 1000 + seed, progress=progress)
    checkpoint.atomic_write_json(path, r)
    results.append(r)
  return evaluation.summarise(results)


def _file_entry(path):
  arr = np.load(path, mmap_mode="r")
  with open(path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  return {"shape": list(arr.shape), "dtype": str(arr.dtype), "array_bytes": int(arr.nbytes),
          "file_bytes": os.path.getsize(path), "sha256": digest}


def write_manifest(config, workdir, data):
  edir = _export_dir(workdir)
  files = {name: _file_entry(os.path.join(edir, f"{name}.npy"))
           for name in ("images", "labels", "soft_labels")
           if os.path.exists(os.path.join(edir, f"{name}.npy"))}
  manifest = {
      "jdd_version": jdd.__version__, "method": config.method, "dataset": data.name,
      "num_classes": data.num_classes, "ipc": int(config.recover.ipc),
      "num_images": files["images"]["shape"][0], "files": files,
      "bytes": {"images": files["images"]["array_bytes"],
                "labels": files["labels"]["array_bytes"] + files.get(
                    "soft_labels", {"array_bytes": 0})["array_bytes"],
                "soft_labels": files.get("soft_labels", {"array_bytes": 0})["array_bytes"]},
      "soft_labels": ("stored: teacher logits per (epoch, batch), float16; crops, flips and "
                      "mixes re-derived from the seed" if "soft_labels" in files else
                      "online: the teacher runs during student training (no label bytes)"),
      "normalisation": {"mean": list(data.mean), "std": list(data.std)},
      "config": json.loads(config.to_json_best_effort()),
  }
  checkpoint.atomic_write_json(os.path.join(edir, "manifest.json"), manifest)
  return manifest


# ------------------------------------------------------------------------------------- run


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage of `config` in `workdir` (resuming) and returns the results dict."""
  if config.method not in METHODS:
    raise ValueError(f"config.method={config.method!r} is not one of {sorted(METHODS)}")
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  checkpoint.atomic_write_json(os.path.join(workdir, "config.json"),
                               json.loads(config.to_json_best_effort()))
  mesh = mesh_lib.make_mesh(config.get("num_devices") or None)
  print(f"[jdd] {config.method} on {config.dataset.name}; devices: {mesh.shape['data']} x "
        f"{jax.devices()[0].platform}; workdir {workdir}", flush=True)
  data = load_classification(config.dataset)
  keys = _keys(config)
  writer = reporting.create_writer(workdir)
  budget = _Budget(int(config.debug.interrupt_after))
  with jax.set_mesh(mesh) if hasattr(jax, "set_mesh") else contextlib.nullcontext():
    teacher = squeeze(config, workdir, data, keys, writer, budget)
    images, _ = recover(config, workdir, data, teacher, keys, writer, mesh, budget)
    edir = _export_dir(workdir)
    soft = relabel("distilled", os.path.join(edir, "soft_labels.npy"), images, config, data,
                   teacher, keys)
    manifest = write_manifest(config, workdir, data)
    results = {"jdd_version": jdd.__version__, "method": config.method,
               "dataset": data.name, "ipc": int(config.recover.ipc),
               "num_images": int(len(images)), "val_source": data.val_source,
               "teacher": {k: teacher[2].get(k) for k in ("arch", "val_top1", "test_top1")},
               "student": dict(config.evaluate.student)}
    results["distilled"] = evaluate_set("distilled", images, soft, config, workdir, data,
                                        teacher, keys)
    if config.evaluate.baseline:
      subset = random_subset(data, int(config.recover.ipc), keys["baseline"])
      soft_b = relabel("random_subset", os.path.join(workdir, "baseline", "soft_labels.npy"),
                       subset, config, data, teacher, keys)
      results["random_subset"] = evaluate_set("random_subset", subset, soft_b, config,
                                              workdir, data, teacher, keys)
  results["label_bytes"] = manifest["bytes"]["labels"]
  results["image_bytes"] = manifest["bytes"]["images"]
  results["wall_seconds_this_process"] = round(time.time() - t0, 1)
  checkpoint.atomic_write_json(os.path.join(workdir, "results.json"), results)
  writer.flush()
  _print_summary(results)
  return results


def _print_summary(results):
  def fmt(r):
    return (f"{r['test_top1_mean']:.2f} ± {r['test_top1_std']:.2f}% "
            f"(val-selected; final-epoch {r['reference_protocol_final_epoch_test_top1_mean']:.2f}%)")
  print(f"\n== {results['method']} on {results['dataset']}, {results['ipc']} images per class "
        f"({results['num_images']} images), {results['distilled']['num_seeds']} seeds ==")
  print(f"distilled set  test top-1: {fmt(results['distilled'])}")
  if "random_subset" in results:
    print(f"random subset  test top-1: {fmt(results['random_subset'])}")
  t = results["teacher"]
  if t.get("test_top1") is not None:
    print(f"teacher ({t['arch']}) test top-1: {t['test_top1'] * 100:.2f}%")
  print(f"bytes: images {results['image_bytes']}, labels {results['label_bytes']}", flush=True)
