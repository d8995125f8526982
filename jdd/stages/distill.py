"""The trajectory-matching distill stage of MTT-VL, LoRS and RepBlend, and its export.

One checkpointed loop (`jdd.loop`) of `distill.iterations` outer steps (`tm_vl.make_step`),
each matching the student unroll to the expert and start epoch that `tm_vl.expert_choice` draws
for that iteration from the memory-mapped store (`jdd.stages.experts`). At each log point the
loop adds the synthetic set's diagnostics (`tm_vl.make_diagnostics`) under a fixed reference
expert; every `distill.eval_every` iterations it scores the current set with the retrieval
evaluator (kept in `W/distill/eval_itNNNNNN.json`; with several processes its seeds are dealt
over them, `jdd.distributed.spread`); `W/distill/history.json` is written with every
checkpoint and trimmed to it on resume, so a resumed run's history equals an uninterrupted
one's. The final set goes to `W/export/` through `jdd.export`.
"""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jdd import checkpoint, distributed, export, reporting
from jdd.data.captions import CLIP_MEAN, CLIP_STD
from jdd.evaluation import retrieval
from jdd.data import pipeline
from jdd.loop import RunContext, fetch_scalars, host_rng
from jdd.methods import tm_vl
from jdd.models.retrieval import encode_features
from jdd.objectives.contrastive import similarity_matrix
from jdd.objectives.trajectory import MODALITIES
from jdd.stages.image_text import Evaluator


def expert_batch(store, it: int, key: jax.Array, dc) -> dict:
  """The (start, target) flat expert parameters of iteration `it` (`tm_vl.expert_choice`)."""
  done = store.done()
  if not done:
    raise ValueError("the expert store holds no finished expert; run the experts stage")
  e, s = tm_vl.expert_choice(done, it, key, int(dc.max_start_epoch))
  ep = store.epochs
  traj = store.trajectory(e)
  t = s + int(dc.expert_epochs)
  return {"start": {m: jnp.asarray(traj[m][ep.index(s)]) for m in MODALITIES},
          "target": {m: jnp.asarray(traj[m][ep.index(t)]) for m in MODALITIES}}


def pair_set(ev: Evaluator, params: dict, dc) -> retrieval.PairSet:
  """The distilled pairs as the evaluator takes them (frozen backbone: its features)."""
  images = np.asarray(params["images"])
  if ev.features:
    images = encode_features(ev.model, ev.backbone_vars, images)
  sim = (np.asarray(similarity_matrix(params["sim"], float(dc.sim_alpha)))
         if "sim" in params else None)
  return retrieval.PairSet(images, np.asarray(params["texts"]), sim,
                           float(params["lr_image"]), float(params["lr_text"]))


def _periodic_eval(ctx: RunContext, ev: Evaluator, params: dict, dc, it: int) -> dict:
  path = os.path.join(ctx.workdir, "distill", f"eval_it{it:06d}.json")
  if os.path.exists(path):
    return checkpoint.read_json(path)
  seeds = [int(ctx.config.seed) * 1000 + 500 + k for k in range(int(dc.eval_seeds))]
  spread = distributed.seed_spreader(f"distill_eval_{it}")   # seed k on process k mod N
  out = retrieval.evaluate_pairs(ev.model, ev.backbone_vars, pair_set(ev, params, dc), ev.splits,
                                 ctx.config.evaluate, seeds, features=ev.features, spread=spread)
  checkpoint.atomic_write_json(path, out["summary"])
  return out["summary"]


def init_images(ctx: RunContext, rows: np.ndarray, key: jax.Array) -> np.ndarray:
  """The real images the synthetic set starts from, read through the streaming pipeline: the
  references' train transform when `distill.init_augment` (their default: only `--no_aug`
  turns it off), image k's draws seeded from host_rng(key, 3); else the test transform."""
  files = ctx.data.files("train")
  if not bool(ctx.config.distill.init_augment):
    return files.normalized(rows)
  from jdd.stages.expert_loops import train_transform
  seeds = pipeline.image_seeds(host_rng(key, 3), len(rows))
  return files.augmented(rows, seeds, train_transform(ctx.config, files.image_size))


def distill_stage(ctx: RunContext, ev: Evaluator, texts: dict, store,
                  spec: tm_vl.MethodSpec) -> tuple[retrieval.PairSet, dict]:
  """Runs (or resumes) the distillation, exports the set; returns its pairs and a summary."""
  dc = ctx.config.distill
  model = ev.model
  if model.train_backbone != spec.train_backbone:
    raise ValueError(f"{spec.name} needs model.train_backbone={spec.train_backbone}")
  if bool(dc.blend) and not spec.blend or bool(dc.similarity != "none") != spec.similarity:
    raise ValueError(f"{spec.name}: distill.blend/similarity do not match the method; use the "
                     f"method's config (configs/{spec.name}_*.py)")
  last = int(dc.max_start_epoch) - 1 + int(dc.expert_epochs)
  if last not in store.epochs:
    raise ValueError(f"distill reads expert epoch {last} but the store keeps {store.epochs};"
                     " raise experts.keep_epochs")
  t0 = time.time()
  n = tm_vl.num_synthetic(dc, spec)
  train = ctx.data.train
  key_init = ctx.keys["distill_init"]
  cap = retrieval.random_pairs(n, train.image_index, key_init)
  images = init_images(ctx, train.image_index[cap], key_init)
  params = tm_vl.init_params(dc, spec, key_init, images, texts["train"][cap])
  tx = tm_vl.outer_optimizer(dc)
  frozen = None if model.train_backbone else ev.backbone_vars
  loss_fn = tm_vl.make_student_loss(model, frozen, spec, dc)
  step = jax.jit(tm_vl.make_step(loss_fn, tx, store.unravel, n, dc))
  diag = tm_vl.make_diagnostics(model, frozen)
  ref_params = store.snapshot(store.done()[0], store.epochs[-1])
  diagnostics = lambda p: fetch_scalars(diag(ref_params, p["images"], p["texts"]))

  iters, eval_every = int(dc.iterations), int(dc.eval_every)
  hist_path = os.path.join(ctx.workdir, "distill", "history.json")
  history = {"log": [], "evals": []}
  key_exp, key_step = (jax.random.fold_in(ctx.keys["distill"], 0),
                       jax.random.fold_in(ctx.keys["distill"], 1))

  def on_start(start, state):
    if start == 0:
      history.update(log=[{"iteration": 0, **diagnostics(state["params"])}], evals=[])
    elif os.path.exists(hist_path):
      # Entries past the checkpoint are recomputed (identically) by the resumed loop.
      saved = checkpoint.read_json(hist_path)
      history.update({k: [r for r in v if r["iteration"] <= start] for k, v in saved.items()})

  def on_log(done, state, values):
    e, s = tm_vl.expert_choice(store.done(), done - 1, key_exp, int(dc.max_start_epoch))
    extra = diagnostics(state["params"])
    history["log"].append({"iteration": done, "expert": e, "start_epoch": s, **values, **extra})
    return extra

  def after_step(done, state):
    if eval_every and done % eval_every == 0 and done != iters:
      summary = _periodic_eval(ctx, ev, state["params"], dc, done)
      history["evals"].append({"iteration": done, **summary})
      t = summary["test"]
      print(f"[distill:{spec.name}] eval at {done}: test r_mean {t['r_mean']['mean']:.2f} "
            f"IR@1 {t['img_r1']['mean']:.2f} TR@1 {t['txt_r1']['mean']:.2f}", flush=True)
    return state

  state = ctx.loop(
      "distill", {"params": params, "opt": tx.init(params)}, step,
      lambda it: expert_batch(store, it, key_exp, dc), iters, key_step,
      show=("loss", "lr_image", "lr_text", "intra_image_cos", "modality_gap"),
      on_start=on_start, on_log=on_log, after_step=after_step,
      on_save=lambda done, state: checkpoint.atomic_write_json(hist_path, history))
  params = state["params"]
  manifest = export_set(ctx, spec, params, dc)
  return pair_set(ev, params, dc), {
      "method": spec.name, "iterations": iters, "grad_mode": str(dc.grad_mode),
      "synthetic_pairs": n, "budget": manifest["budget"], "export_bytes": manifest["total_bytes"],
      "learned_lrs": {"image": float(params["lr_image"]), "text": float(params["lr_text"])},
      "student_temperature": tm_vl.student_temperature(dc, model),
      "diagnostics": history["log"], "periodic_evals": history["evals"],
      "wall_seconds_this_process": round(time.time() - t0, 1)}


def export_set(ctx: RunContext, spec: tm_vl.MethodSpec, params: dict, dc) -> dict:
  """W/export/: images (.npy float32 normalised, uint8 .npy and a PNG grid), texts, the
  similarity (factors and the N x N matrix), learned lrs and a byte manifest."""
  images = np.asarray(params["images"], np.float32)
  pixels = images * np.asarray(CLIP_STD, np.float32) + np.asarray(CLIP_MEAN, np.float32)
  uint8 = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
  stored = {"images": images, "images_uint8": uint8, "texts": np.asarray(params["texts"])}
  derived = {}
  if "sim" in params:
    for k, v in params["sim"].items():
      stored[f"similarity_{k}"] = np.asarray(v)
    if "matrix" not in params["sim"]:
      derived["similarity"] = np.asarray(similarity_matrix(params["sim"], float(dc.sim_alpha)))
  lrs = {"lr_image": float(params["lr_image"]), "lr_text": float(params["lr_text"])}

  def build(entries: dict) -> dict:
    files = {k: v["bytes"] for k, v in entries.items() if k != "lrs.json"}
    return {
        "method": spec.name, "files": files,
        "stored": sorted(f"{k}.npy" for k in stored) + ["lrs.json"],
        "derived": sorted(f"{k}.npy" for k in derived) + ["images_grid.png"],
        "total_bytes": int(sum(files.values())),
        "budget": tm_vl.budget_accounting(dc, spec, params, uint8.shape[1:],
                                          int(np.shape(params["texts"])[-1])),
        "lrs": lrs, "sim_alpha": float(dc.sim_alpha),
        "images": "float32 normalised with CLIP mean/std (what was learned); images_uint8 is "
                  "its de-normalised, clipped and rounded copy"}

  with export.staged(ctx.workdir) as out:
    for name, arr in {**stored, **derived}.items():
      export.save_npy(out, name, arr)
    reporting.save_png(os.path.join(out, "images_grid.png"),
                       reporting.image_grid(uint8, nrow=int(math.ceil(math.sqrt(len(uint8))))))
    export.save_json(out, "lrs.json", lrs)
    out.manifest = build
  return export.read_manifest(export.export_dir(ctx.workdir))
