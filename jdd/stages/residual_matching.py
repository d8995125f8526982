"""FADRM / FADRM+ recover on the pixel-group stage: real-patch initialisation, multi-resolution
stages with residual merges, and the teachers' round-robin (`jdd.methods.fadrm` is the maths).

Patches are selected once, scored by the first teacher (cached in
`W/recover_rounds/patches.npy`, recorded in `W/recover/patch_init.json`, exported beside the
images). Each round of class groups is one checkpointed loop over the global step; on the first
step of a stage the loop's `before_step` hook merges the images with the patches at the new
resolution and restarts Adam (`fadrm.enter_stage`), on the host between jitted steps. A
checkpoint saved at step L holds images at the resolution of stage_at(L - 1), so a resumed
round restores into `fadrm.restore_template(..., L)`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jdd import checkpoint, mesh as mesh_lib
from jdd.data import normalize
from jdd.loop import RunContext
from jdd.methods import fadrm
from jdd.stages import distilled as distilled_lib, teachers as teachers_lib


class FadrmRecover:
  """The pixel-group adapter of FADRM (see `jdd.stages.pixel_groups`)."""

  def __init__(self, ctx: RunContext, targets: np.ndarray):
    data = ctx.data
    self.ctx, self.targets = ctx, targets
    self.teachers = teachers_lib.ordered(ctx)   # FADRM+: teacher (t mod M) at global step t
    self.names = [t.name for t in self.teachers]
    self.hp = fadrm.hparams_from_config(ctx.config.recover, data.mean, data.std)
    self.iterations = self.hp.iterations
    self.schedule = fadrm.stage_schedule(self.hp.resolutions, self.hp.budgets)
    variables = tuple(mesh_lib.replicate(t.variables, ctx.mesh) for t in self.teachers)
    jitted = jax.jit(functools.partial(fadrm.step, models=tuple(t.model for t in self.teachers),
                                       hp=self.hp), donate_argnums=0)   # as pixel_groups
    self.step = lambda state, batch, rng: jitted(state, batch, rng, variables)
    self.side_files = ("grid.png", "patch_init.json")
    self._arranged, self._stage = None, 0

  @property
  def extra(self) -> dict:
    path = os.path.join(distilled_lib.recover_dir(self.ctx.workdir), "patch_init.json")
    return _manifest_extra(self.hp, self.names, checkpoint.read_json(path))

  def _patches(self) -> np.ndarray:
    """(G, B, H, W, ch) patches in group order, selected (once) or read back."""
    if self._arranged is None:
      ipc = int(self.ctx.config.recover.ipc)
      init_path = os.path.join(distilled_lib.recover_dir(self.ctx.workdir), "patch_init.json")
      patch_path = os.path.join(self.ctx.workdir, "recover_rounds", "patches.npy")
      if os.path.exists(patch_path) and os.path.exists(init_path):
        class_patches = np.load(patch_path)
      else:
        print(f"[recover] selecting {ipc} real patches per class, scored by {self.names[0]}",
              flush=True)
        class_patches, record = select_patches(self.ctx, self.teachers[0], ipc)
        checkpoint.atomic_write_json(init_path, record)
        checkpoint.atomic_save_npy(patch_path, class_patches)
      self._arranged = fadrm.arrange_patches(class_patches, self.targets)
      print(f"[recover] {'FADRM+' if len(self.names) > 1 else 'FADRM'}: stages "
            f"{[(s.resolution, s.stop - s.start) for s in self.schedule]}, teachers "
            f"{self.names}", flush=True)
    return self._arranged

  def init_round(self, name: str, group_ids: np.ndarray):
    probe = checkpoint.StageCheckpointer(self.ctx.workdir, name)
    saved = probe.latest_step()
    probe.close()
    self._stage = fadrm.stage_at(self.schedule, saved - 1).index if saved else 0
    patches = mesh_lib.shard(jnp.asarray(self._patches()[group_ids]), self.ctx.mesh)
    return fadrm.restore_template(patches, self.hp, saved)

  def before_step(self, s: int, state):
    """Enters the stage of global step s when it differs from the images' stage."""
    stage = fadrm.stage_at(self.schedule, s)
    if stage.index != self._stage:
      state, self._stage = fadrm.enter_stage(state, self.hp, stage), stage.index
    return state

  def images_uint8(self, state) -> np.ndarray:
    data = self.ctx.data
    images = state.images
    if images.shape[2:4] != tuple(data.image_shape[:2]):  # a last stage below full size
      images = fadrm.resize(images, data.image_shape[0])
    return fadrm.to_uint8(mesh_lib.fetch(images), data.mean, data.std)


def select_patches(ctx: RunContext, teacher, ipc: int) -> tuple[np.ndarray, dict]:
  """(C, ipc, H, W, ch) normalised real patches scored by `teacher`, and their record.

  Candidates are `recover.init.candidates_per_class` training images per class (0: the minimum,
  ipc * factor^2, so nothing is ranked away) drawn with fold_in(recover_init, 0); the crops of
  class c use fold_in(fold_in(recover_init, 1), c). A streamed training split (ImageNet) gives
  its first N images per class instead of a keyed draw.
  """
  config, data = ctx.config, ctx.data
  ic = config.recover.init
  if ic.method != "patches":
    raise ValueError(f"recover.init.method={ic.method!r}: FADRM starts from real patches "
                     "('patches')")
  factor, crops = int(ic.factor), int(ic.crops_per_image)
  per_class = int(ic.candidates_per_class) or ipc * factor * factor
  base = ctx.keys["recover_init"]
  if hasattr(data.train, "images"):
    cand = fadrm.candidate_indices(jax.random.fold_in(base, 0), data.train.labels, data.num_classes,
                             per_class)
    pool = data.train.images[cand.reshape(-1)].reshape(cand.shape + tuple(data.image_shape))
    source = "train split, keyed draw without replacement per class (fold_in(recover_init, 0))"
  else:
    pool = data.train.take_per_class(per_class, data.num_classes).images.reshape(
        (data.num_classes, per_class) + tuple(data.image_shape))
    cand = None
    source = "train split, first N images of each class in record order (streamed)"
  select = jax.jit(functools.partial(
      fadrm.select_class_patches, model=teacher.model, ipc=ipc, crops_per_image=crops, factor=factor,
      crop_scale=tuple(float(x) for x in ic.crop_scale), difficulty=str(ic.difficulty)))
  crop_key = jax.random.fold_in(base, 1)
  patches, classes = [], []
  for c in range(data.num_classes):
    x = normalize(jnp.asarray(pool[c]), data.mean, data.std)
    out = jax.device_get(select(jax.random.fold_in(crop_key, c), x, c, teacher.variables))
    patches.append(np.asarray(out["patches"], np.float32))
    chosen = np.asarray(out["image_index"])
    classes.append({
        "class": c, "candidate_index": chosen.tolist(),
        "train_indices": cand[c][chosen].tolist() if cand is not None else None,
        "crop_index": np.asarray(out["crop_index"]).tolist(),
        "ce": [round(float(v), 6) for v in np.asarray(out["ce"])]})
  record = {"method": "teacher-scored real crops (RDED-style; see jdd.methods.fadrm)",
            "scored_by": teacher.name, "seed": int(config.seed),
            "key": "fold_in(key(seed), 1) (recover_init)", "source": source,
            "candidates_per_class": per_class, "crops_per_image": crops, "factor": factor,
            "difficulty": str(ic.difficulty),
            "crop_scale": list(ic.crop_scale), "classes": classes}
  return np.stack(patches), record


def _patch_summary(record: dict) -> dict:
  out = {k: v for k, v in record.items() if k != "classes"}
  out["per_class"] = "export/patch_init.json (chosen images, crops and their teacher CE)"
  return out



def _manifest_extra(hp: fadrm.FadrmHParams, names: Sequence[str], record: dict) -> dict:
  schedule = fadrm.stage_schedule(hp.resolutions, hp.budgets)
  return {"fadrm": {
      "variant": "FADRM+" if len(names) > 1 else "FADRM",
      "round_robin_teachers": list(names),
      "stages": [{"index": s.index, "start": s.start, "stop": s.stop,
                  "resolution": s.resolution} for s in schedule],
      "alpha": hp.alpha, "lr": hp.lr, "compute_dtype": hp.compute_dtype,
      "optimizer": "Adam(0.5, 0.9) re-initialised per stage, one global cosine",
      "patch_init": _patch_summary(record)}}
