"""FADRM / FADRM+ recover: data residual matching from teacher-scored real patches.

Cui, Bi, Luo, Zhao, Liu & Shen, "FADRM: Fast and Accurate Data Residual Matching for Dataset
Distillation", arXiv 2506.24125; reference code Jiacheng8/FADRM (`recover/recover.py`).
Specification: shared/research/unimodal_dd_methods.md §2.1-2.2 and §5.

What is reproduced (§5.3):
- loss = CE(f_k(x_aug), y) + r_bn * sum_l w_l (||RV_l - var_l||_2 + ||RM_l - mu_l||_2), the
  SRe2L BN-statistics loss (first BN x10), teacher in eval mode, one image per class per batch;
- images start from real patches P (normalised space) resized to the first stage's resolution;
- multi-resolution optimisation: stages s = 0..S-1 with resolutions D_s and budgets T_s (ImageNet
  200, 224, 200, 224 x 500). Each stage gets a *fresh* Adam(betas=(0.5, 0.9), eps=1e-8), so its
  moments and bias correction restart, while the learning rate follows ONE cosine over the
  global step t in [0, sum T_s): lr_t = lr0 * 0.5 (1 + cos(pi t / sum T_s));
- Adjustable Residual Connection (ARC) at every stage boundary (also between equal resolutions,
  as in the CIFAR schedule 32, 32, 32, 32), in normalised pixel space:
      x <- alpha * Resize_{D_{s+1}}(x) + (1 - alpha) * Resize_{D_{s+1}}(P),   alpha = 0.5,
  Resize = bilinear, half-pixel centres (align_corners=False), no antialias; P is kept at full
  resolution and resized from there every time, never from a resized copy;
- per step: RandomResizedCrop to the stage resolution + flip, one box and one flip for the whole
  batch, then a wrap-around roll by (randint(0, J), randint(0, J)); per-channel clip after each
  update;
- FADRM+: M teachers used round-robin, teacher (t mod M) at global step t; a teacher with no BN
  (AlexNet, or here a ConvNet with instance norm / no norm) contributes cross-entropy only;
- mixed precision: `compute_dtype='bfloat16'` runs the teacher's convolutions in bf16 (fp32
  master weights cast on the fly, as autocast does), keeps the images and their Adam state in
  fp32 and reduces the BN statistics and their loss in fp32 (jdd's BatchNorm always does).

Initialisation. The reference ships only pre-selected patches (Google Drive, "medium"
difficulty); the selection code is not public (§5.1, §8). jdd selects them itself, RDED-style,
because RDED (Sun et al., CVPR 2024) is the selection FADRM's patches most plausibly come from
and it needs nothing but the teacher: for class c, draw N real training images of c (keyed),
K RandomResizedCrop boxes per image (scale `crop_scale`, default (0.5, 1)), resize every crop
to the full resolution, score it by the teacher's cross-entropy on c (eval mode; lower = more
typical of c), keep each image's best crop (so one image cannot supply several patches), rank
the images by that crop's score, and keep the best ipc * f^2. With `factor` f > 1 the kept crops
are tiled f x f (row-major, in rank order, each downsized to D/f) into one patch, RDED's mosaic;
f = 1 gives one crop per patch. Scoring uses the first teacher of the list.

Driver stage (`recover_stage`, registered as METHODS['fadrm'] in jdd.run): patches selected once
(cached in W/recover_rounds/patches.npy, recorded in W/export/patch_init.json), then the groups
in rounds of `recover.groups_per_step`, each one checkpointed loop over the global step that
enters a new stage (ARC merge + fresh Adam) on the stage's first step. A checkpoint saved at
step L holds images at the resolution of stage_at(L - 1), so the restore template is built at
that resolution. FADRM and FADRM+ are the same stage: `config.teacher_names` lists one teacher
or M, cycled in that order.

Deliberate differences from the reference code (§5.7):
- every draw is keyed (the reference seeds nothing); group g's augmentation at step t comes
  from fold_in(fold_in(key, t), g), as in jdd's SRe2L;
- groups (IPC index x class block) run side by side with vmap; each keeps its own BN
  statistics, crop box and flip, so this equals running them one after another;
- bf16 without loss scaling replaces fp16 autocast + GradScaler (bf16 has fp32's exponent range);
- no module-global `ipc_id` file naming, no crashing Gaussian init, no unused flags; the global
  step, the stage and the patches live in the state, so a resumed run is bit-identical.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdd import checkpoint, mesh as mesh_lib
from jdd.data import augment, normalize
from jdd.methods import sre2l
from jdd.objectives import bn_statistics_loss_from_collection
from jdd.stages import teachers as teachers_lib
from jdd.stages.context import DistilledSet, StageContext
from jdd.stages.recover import export_dir, save_grid

# Shared with SRe2L: class blocks per group and the uint8 export.
group_targets = sre2l.group_targets
to_uint8 = sre2l.to_uint8
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class RecoverHParams:
  resolutions: tuple[int, ...]   # D_s per stage
  budgets: tuple[int, ...]       # T_s per stage
  lr: float
  alpha: float
  r_bn: float
  first_bn_multiplier: float
  random_resized_crop: bool
  crop_scale: tuple[float, float]
  flip: bool
  jitter: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  compute_dtype: str = "float32"
  jitter_symmetric: bool = False  # FADRM always draws randint(0, J); kept for sre2l.augment_batch

  def __post_init__(self):
    if len(self.resolutions) != len(self.budgets) or not self.budgets:
      raise ValueError(f"recover.resolutions {self.resolutions} and recover.budgets "
                       f"{self.budgets} must be non-empty and of equal length (one per stage)")
    if min(self.budgets) <= 0 or min(self.resolutions) <= 0:
      raise ValueError(f"stage budgets and resolutions must be positive, got {self.budgets}, "
                       f"{self.resolutions}")
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"recover.alpha must lie in [0, 1], got {self.alpha}")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f"recover.compute_dtype must be one of {tuple(COMPUTE_DTYPES)}, got "
                       f"{self.compute_dtype!r}")

  @property
  def iterations(self) -> int:
    return int(sum(self.budgets))


def hparams_from_config(rc, mean, std) -> RecoverHParams:
  return RecoverHParams(
      resolutions=tuple(int(r) for r in rc.resolutions),
      budgets=tuple(int(b) for b in rc.budgets), lr=float(rc.lr), alpha=float(rc.alpha),
      r_bn=float(rc.r_bn), first_bn_multiplier=float(rc.first_bn_multiplier),
      random_resized_crop=bool(rc.random_resized_crop),
      crop_scale=tuple(float(s) for s in rc.crop_scale), flip=bool(rc.flip),
      jitter=int(rc.jitter), mean=tuple(float(m) for m in mean),
      std=tuple(float(s) for s in std), compute_dtype=str(rc.compute_dtype))


# ------------------------------------------------------------------------------ schedule


@dataclasses.dataclass(frozen=True)
class Stage:
  index: int
  start: int       # first global step of the stage
  stop: int        # one past its last global step
  resolution: int


def stage_schedule(resolutions: Sequence[int], budgets: Sequence[int]) -> tuple[Stage, ...]:
  """The stages in global-step coordinates, e.g. (200, 224) x (500, 500) -> [0,500) [500,1000)."""
  stages, start = [], 0
  for i, (res, budget) in enumerate(zip(resolutions, budgets, strict=True)):
    stages.append(Stage(i, start, start + int(budget), int(res)))
    start += int(budget)
  return tuple(stages)


def stage_at(schedule: Sequence[Stage], step: int) -> Stage:
  for stage in schedule:
    if stage.start <= step < stage.stop:
      return stage
  raise ValueError(f"step {step} lies outside the schedule [0, {schedule[-1].stop})")


def learning_rate(step, lr: float, total: int):
  """lr0 * 0.5 (1 + cos(pi t / T)) on the global step: one cosine across all stages."""
  return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.asarray(step, jnp.float32) / total))


def make_adam() -> optax.GradientTransformation:
  """Adam's direction only; the global cosine scales it. Re-initialised at every stage."""
  return optax.scale_by_adam(b1=0.5, b2=0.9, eps=1e-8)


# --------------------------------------------------------------------------------- state


@flax.struct.dataclass
class RecoverState:
  images: jax.Array    # (G, B, D_s, D_s, C) float32, normalised pixel space, current stage
  patches: jax.Array   # (G, B, H, W, C) float32 real patches at full resolution (ARC target)
  opt_state: Any       # Adam moments of the current stage
  step: jax.Array      # int32 global step (selects lr and, in FADRM+, the teacher)
  stage: jax.Array     # int32 index of the stage `images` belong to


def resize(x: jax.Array, size: int) -> jax.Array:
  """Bilinear resize of (..., H, W, C) to size x size: torch's interpolate(bilinear,
  align_corners=False, antialias=False), via the crop-resize of the whole image."""
  lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
  if (h, w) == (size, size):
    return x
  flat = x.reshape((-1, h, w, c))
  box = jnp.asarray([0.0, 0.0, h, w], jnp.float32)
  return augment.resized_crop(flat, box, (size, size)).reshape(lead + (size, size, c))


def clip_to_valid(x: jax.Array, hp: RecoverHParams) -> jax.Array:
  return sre2l.clip_to_valid(x, hp)


def init(patches: jax.Array, hp: RecoverHParams) -> RecoverState:
  """Stage-0 state: images = Resize_{D_0}(P). `patches` is (G, B, H, W, C), normalised."""
  patches = jnp.asarray(patches, jnp.float32)
  images = clip_to_valid(resize(patches, hp.resolutions[0]), hp)
  return RecoverState(images=images, patches=patches, opt_state=make_adam().init(images),
                      step=jnp.zeros((), jnp.int32), stage=jnp.zeros((), jnp.int32))


def residual_merge(images: jax.Array, patches: jax.Array, resolution: int,
                   alpha: float) -> jax.Array:
  """ARC: alpha * Resize(x) + (1 - alpha) * Resize(P), both to `resolution`."""
  return alpha * resize(images, resolution) + (1.0 - alpha) * resize(patches, resolution)


def enter_stage(state: RecoverState, hp: RecoverHParams, stage: Stage) -> RecoverState:
  """Stage boundary: residual merge at the new resolution and a fresh Adam; the step runs on."""
  images = residual_merge(state.images, state.patches, stage.resolution, hp.alpha)
  return state.replace(images=images, opt_state=make_adam().init(images),
                       stage=jnp.asarray(stage.index, jnp.int32))


# ---------------------------------------------------------------------------------- step


def has_bn(variables) -> bool:
  """Static (pytree structure): only BN teachers carry running statistics."""
  return "batch_stats" in variables


def with_compute_dtype(model, compute_dtype: str):
  if compute_dtype == "float32":
    return model
  if not any(f.name == "dtype" for f in dataclasses.fields(model)):
    raise ValueError(f"{type(model).__name__} has no `dtype` field, so it cannot run in "
                     f"{compute_dtype}; use recover.compute_dtype='float32'")
  return model.clone(dtype=COMPUTE_DTYPES[compute_dtype])


def group_loss(x, targets, key, teacher_variables, *, model, hp: RecoverHParams):
  """One teacher's loss on one class batch; returns (loss, (ce, bn, top1))."""
  x_aug = sre2l.augment_batch(key, x, hp)
  model = with_compute_dtype(model, hp.compute_dtype)
  if has_bn(teacher_variables):
    logits, col = model.apply(teacher_variables, x_aug, train=False, mutable=["bn_stats"])
    bn = bn_statistics_loss_from_collection(col["bn_stats"], hp.first_bn_multiplier)
  else:  # e.g. AlexNet in FADRM+ IPC 1: `sum([]) = 0` in the reference
    logits = model.apply(teacher_variables, x_aug, train=False)
    bn = jnp.zeros((), jnp.float32)
  logits = logits.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  top1 = jnp.mean(jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return ce + hp.r_bn * bn, (ce, bn, top1)


def step(state: RecoverState, batch: dict, rng: jax.Array, teachers: Sequence[Any], *,
         models: Sequence[Any], hp: RecoverHParams):
  """One Adam step on all groups through teacher (state.step mod M).

  batch: {'targets': (G, B) int, 'group_ids': (G,) int}. `teachers` is a tuple of variable
  pytrees, `models` the matching Flax modules (bound with functools.partial). The teacher is
  chosen with `lax.switch`, so the step compiles once per stage resolution for any M.
  """
  models, teachers = tuple(models), tuple(teachers)
  if len(models) != len(teachers) or not models:
    raise ValueError(f"got {len(models)} teacher models and {len(teachers)} variable sets")
  keys = jax.vmap(lambda g: jax.random.fold_in(rng, g))(batch["group_ids"])
  index = state.step % len(models)

  def loss_through(i: int) -> Callable:
    def total(images):
      losses, (ce, bn, top1) = jax.vmap(
          lambda x, y, k: group_loss(x, y, k, teachers[i], model=models[i], hp=hp))(
              images, batch["targets"], keys)
      # Groups are independent, so the gradient of the sum is each group's own gradient.
      return losses.sum(), {"loss": losses.mean(), "ce": ce.mean(), "bn": bn.mean(),
                            "teacher_top1": top1.mean()}
    return total

  # Each branch differentiates its own teacher and `lax.switch` only picks the result:
  # differentiating *through* a switch would make every branch's residuals live at once.
  branches = [jax.grad(loss_through(i), has_aux=True) for i in range(len(models))]
  grads, metrics = (branches[0](state.images) if len(branches) == 1 else
                    jax.lax.switch(index, branches, state.images))
  direction, opt_state = make_adam().update(grads, state.opt_state, state.images)
  lr = learning_rate(state.step, hp.lr, hp.iterations)
  images = clip_to_valid(state.images - lr * direction, hp)
  metrics = {**metrics, "lr": lr, "teacher": index.astype(jnp.float32)}
  return state.replace(images=images, opt_state=opt_state, step=state.step + 1), metrics


def run_stages(state: RecoverState, batch: dict, key: jax.Array, teachers, *,
               step_fn: Callable, hp: RecoverHParams, until: int | None = None,
               on_step: Callable | None = None) -> RecoverState:
  """Runs from `state.step` to `until` (default: the end), entering each stage on its first
  step. `step_fn(state, batch, rng, teachers)` is `step` with models/hp bound, jitted by the
  caller; rng at global step t is fold_in(key, t), so a state restored mid-run continues
  bit-identically. `on_step(t, metrics)` sees every step's metrics (logging, checkpoints).
  """
  schedule = stage_schedule(hp.resolutions, hp.budgets)
  until = hp.iterations if until is None else int(until)
  for t in range(int(state.step), until):
    stage = stage_at(schedule, t)
    if int(state.stage) != stage.index:
      state = enter_stage(state, hp, stage)
    state, metrics = step_fn(state, batch, jax.random.fold_in(key, t), teachers)
    if on_step is not None:
      on_step(t, metrics)
  return state


# ------------------------------------------------------------------ patch initialisation


def candidate_indices(key: jax.Array, labels: np.ndarray, num_classes: int,
                      per_class: int) -> np.ndarray:
  """(C, per_class) indices of real training images per class, without replacement, keyed."""
  labels = np.asarray(labels)
  out = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if len(members) < per_class:
      raise ValueError(f"class {c} has {len(members)} training images but patch selection asks "
                       f"for {per_class}; lower recover.init.candidates_per_class")
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, c), len(members)))
    out.append(members[perm[:per_class]])
  return np.stack(out)


def score_crops(key: jax.Array, images: jax.Array, target, teacher_variables, *, model,
                crops_per_image: int, crop_scale=(0.5, 1.0)):
  """Every image's K crops, resized to full size, with the teacher's CE on `target`.

  images: (N, H, W, C) normalised. Returns crops (N, K, H, W, C), boxes (N, K, 4) and
  ce (N, K). Crop (n, k) uses box key split(fold_in(key, n), K)[k].
  """
  n, h, w, _ = images.shape

  def per_image(i, x):
    ks = jax.random.split(jax.random.fold_in(key, i), crops_per_image)
    boxes = jax.vmap(lambda k: augment.random_resized_crop_box(k, h, w, crop_scale))(ks)
    crops = jax.vmap(lambda b: augment.resized_crop(x[None], b, (h, w))[0])(boxes)
    return crops, boxes

  crops, boxes = jax.vmap(per_image)(jnp.arange(n), images)
  logits = model.apply(teacher_variables, crops.reshape((n * crops_per_image, h, w, -1)),
                       train=False).astype(jnp.float32)
  labels = jnp.full((n * crops_per_image,), target, jnp.int32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return crops, boxes, ce.reshape(n, crops_per_image)


def select_class_patches(key: jax.Array, images: jax.Array, target, teacher_variables, *,
                         model, ipc: int, crops_per_image: int, factor: int = 1,
                         crop_scale=(0.5, 1.0)) -> dict:
  """RDED-style patches of one class (module docstring): best crop per image, best images.

  Returns {'patches': (ipc, H, W, C), 'image_index': (ipc * f^2,) chosen images in rank order,
  'crop_index': their chosen crop, 'ce': its cross-entropy}.
  """
  n, h, w, c = images.shape
  need = ipc * factor * factor
  if n < need:
    raise ValueError(f"{n} candidate images cannot give {ipc} patches of {factor}x{factor} "
                     f"crops ({need} needed); raise recover.init.candidates_per_class")
  if factor > 1 and (h != w or h % factor):
    raise ValueError(f"a {factor}x{factor} mosaic needs square images whose side {factor} "
                     f"divides, got {h}x{w}")
  crops, _, ce = score_crops(key, images, target, teacher_variables, model=model,
                             crops_per_image=crops_per_image, crop_scale=crop_scale)
  crop_index = jnp.argmin(ce, axis=1)                       # each image's most typical crop
  best_ce = jnp.take_along_axis(ce, crop_index[:, None], 1)[:, 0]
  image_index = jnp.argsort(best_ce, stable=True)[:need]    # the most typical images
  chosen = crops[image_index, crop_index[image_index]]      # (need, H, W, C)
  if factor > 1:
    cells = resize(chosen, h // factor).reshape(ipc, factor, factor, h // factor, w // factor, c)
    chosen = cells.transpose(0, 1, 3, 2, 4, 5).reshape(ipc, h, w, c)
  return {"patches": chosen, "image_index": image_index,
          "crop_index": crop_index[image_index], "ce": best_ce[image_index]}


def arrange_patches(class_patches: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """(C, ipc, H, W, ch) per-class patches -> (G, B, H, W, ch) in `group_targets` order.

  Row g of `targets` is IPC index g // blocks, so patch (class y, slot g // blocks) goes there.
  """
  targets = np.asarray(targets)
  num_classes = class_patches.shape[0]
  blocks = num_classes // targets.shape[1]
  slot = (np.arange(len(targets)) // blocks)[:, None]
  return np.asarray(class_patches)[targets, np.broadcast_to(slot, targets.shape)]


# ------------------------------------------------------------------------ driver stage


def select_patches(ctx: StageContext, teacher, ipc: int) -> tuple[np.ndarray, dict]:
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
    cand = candidate_indices(jax.random.fold_in(base, 0), data.train.labels, data.num_classes,
                             per_class)
    pool = data.train.images[cand.reshape(-1)].reshape(cand.shape + tuple(data.image_shape))
    source = "train split, keyed draw without replacement per class (fold_in(recover_init, 0))"
  else:
    pool = data.train.take_per_class(per_class, data.num_classes).images.reshape(
        (data.num_classes, per_class) + tuple(data.image_shape))
    cand = None
    source = "train split, first N images of each class in record order (streamed)"
  select = jax.jit(functools.partial(
      select_class_patches, model=teacher.model, ipc=ipc, crops_per_image=crops, factor=factor,
      crop_scale=tuple(float(x) for x in ic.crop_scale)))
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
            "crop_scale": list(ic.crop_scale), "classes": classes}
  return np.stack(patches), record


def _patch_summary(record: dict) -> dict:
  out = {k: v for k, v in record.items() if k != "classes"}
  out["per_class"] = "export/patch_init.json (chosen images, crops and their teacher CE)"
  return out


def restore_template(patches: jax.Array, hp: RecoverHParams, saved_step: int | None):
  """A state shaped like the checkpoint at `saved_step`: its images have the resolution of the
  stage the last executed step (saved_step - 1) ran in, not the first stage's."""
  state = init(patches, hp)
  if saved_step:
    stage = stage_at(stage_schedule(hp.resolutions, hp.budgets), int(saved_step) - 1)
    if stage.index:
      state = enter_stage(state, hp, stage).replace(step=jnp.asarray(saved_step, jnp.int32))
  return state


def _manifest_extra(hp: RecoverHParams, names: Sequence[str], record: dict) -> dict:
  schedule = stage_schedule(hp.resolutions, hp.budgets)
  return {"fadrm": {
      "variant": "FADRM+" if len(names) > 1 else "FADRM",
      "round_robin_teachers": list(names),
      "stages": [{"index": s.index, "start": s.start, "stop": s.stop,
                  "resolution": s.resolution} for s in schedule],
      "alpha": hp.alpha, "lr": hp.lr, "compute_dtype": hp.compute_dtype,
      "optimizer": "Adam(0.5, 0.9) re-initialised per stage, one global cosine",
      "patch_init": _patch_summary(record)}}


def recover_stage(ctx: StageContext) -> DistilledSet:
  """Real patches -> multi-stage data residual matching -> W/export (images.npy last)."""
  config, data, mesh, workdir = ctx.config, ctx.data, ctx.mesh, ctx.workdir
  rc = config.recover
  edir = export_dir(workdir)
  teachers = teachers_lib.ordered(ctx)   # FADRM+: teacher (t mod M) at global step t
  names = [t.name for t in teachers]
  hp = hparams_from_config(rc, data.mean, data.std)
  init_path = os.path.join(edir, "patch_init.json")
  if os.path.exists(os.path.join(edir, "images.npy")):
    print("[recover] distilled images already exported: skipped", flush=True)
    return DistilledSet(np.load(os.path.join(edir, "images.npy")),
                        np.load(os.path.join(edir, "labels.npy")),
                        extra=_manifest_extra(hp, names, checkpoint.read_json(init_path)))
  ipc = int(rc.ipc)
  targets = group_targets(data.num_classes, int(rc.classes_per_batch), ipc)
  rounds_dir = os.path.join(workdir, "recover_rounds")
  patch_path = os.path.join(rounds_dir, "patches.npy")
  if os.path.exists(patch_path) and os.path.exists(init_path):
    class_patches, record = np.load(patch_path), checkpoint.read_json(init_path)
  else:
    print(f"[recover] selecting {ipc} real patches per class, scored by {names[0]}", flush=True)
    class_patches, record = select_patches(ctx, teachers[0], ipc)
    checkpoint.atomic_write_json(init_path, record)
    checkpoint.atomic_save_npy(patch_path, class_patches)
  arranged = arrange_patches(class_patches, targets)          # (G, B, H, W, ch)
  schedule = stage_schedule(hp.resolutions, hp.budgets)
  print(f"[recover] {'FADRM+' if len(names) > 1 else 'FADRM'}: stages "
        f"{[(s.resolution, s.stop - s.start) for s in schedule]}, teachers {names}", flush=True)
  variables = tuple(mesh_lib.replicate(t.variables, mesh) for t in teachers)
  jitted = jax.jit(functools.partial(step, models=tuple(t.model for t in teachers), hp=hp))

  def step_fn(state, batch, rng):
    stage = stage_at(schedule, int(state.step))
    if int(state.stage) != stage.index:
      state = enter_stage(state, hp, stage)
    return jitted(state, batch, rng, variables)

  num_groups = len(targets)
  per_round = min(int(rc.groups_per_step), num_groups)
  finished = []
  for r, start in enumerate(range(0, num_groups, per_round)):
    out = os.path.join(rounds_dir, f"round{r:05d}.npy")
    if not os.path.exists(out):
      group_ids = np.arange(start, min(start + per_round, num_groups), dtype=np.int32)
      batch = {"targets": mesh_lib.shard(jnp.asarray(targets[group_ids]), mesh),
               "group_ids": mesh_lib.shard(jnp.asarray(group_ids), mesh)}
      name = f"recover_round{r:05d}"
      probe = checkpoint.StageCheckpointer(workdir, name)
      saved = probe.latest_step()
      probe.close()
      state = restore_template(mesh_lib.shard(jnp.asarray(arranged[group_ids]), mesh), hp, saved)
      state = ctx.loop(name, state, step_fn, lambda i, b=batch: b, hp.iterations,
                       ctx.keys["recover"])
      images = state.images
      if images.shape[2:4] != tuple(data.image_shape[:2]):  # a last stage below full size
        images = resize(images, data.image_shape[0])
      checkpoint.atomic_save_npy(out, to_uint8(jax.device_get(images), data.mean, data.std))
    finished.append(np.load(out))
  # Class-major: image i of class c at c * ipc + i.
  groups = np.concatenate(finished)
  labels = np.asarray(targets).reshape(-1)
  images = groups.reshape(-1, *groups.shape[2:])
  order = np.argsort(labels, kind="stable")
  images, labels = images[order], labels[order].astype(np.int32)
  checkpoint.atomic_save_npy(os.path.join(edir, "labels.npy"), labels)
  save_grid(ctx, images, ipc, hp.iterations)
  checkpoint.atomic_save_npy(os.path.join(edir, "images.npy"), images)  # last: marks done
  return DistilledSet(images, labels, extra=_manifest_extra(hp, names, record))
