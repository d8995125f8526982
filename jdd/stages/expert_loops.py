"""The two ways an expert trains (`jdd.stages.experts.train_experts` picks one).

* **Pixels** (a trained backbone, MTT-VL / LoRS; or a frozen one on augmented images, the
  reference RepBlend buffers): one expert at a time, one jitted SGD step per batch through the
  shared checkpointed loop, batches streamed from disk (`jdd.data.pipeline`) and prefetched
  while the step runs, sharded over the mesh's `data` axis (parameters replicated).
* **Cached frozen features** (RepBlend with `experts.augment=False`): the features, texts and
  the image of every caption live on the device; one program trains a group of experts for a
  whole epoch (`lax.scan` over its steps, `vmap` over the experts, the expert axis sharded over
  the devices). The loop's step is an epoch; a kill loses at most the epoch in progress.

Both compute the same steps from the same keys (`jdd.stages.experts`), and write each snapshot
row into the store before the epoch's checkpoint. A group's vmapped matrix products may round
differently from one expert's, so an expert's bits depend on the group size it was trained
in (recorded in its done record); resuming with the same settings is bit-exact.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jdd import mesh as mesh_lib
from jdd.data import pipeline, randaugment
from jdd.evaluation.retrieval import compiled_train_step, make_train_step
from jdd.loop import RunContext, host_rng
from jdd.models.retrieval import RetrievalModel
from jdd.objectives.trajectory import MODALITIES

# Host budget for a group of feature experts when the device reports no memory limit (CPU).
_HOST_GROUP_BYTES = 2 << 30


def train_transform(config, image_size: int) -> randaugment.TrainTransform:
  """The references' train transform from `config.train_transform` (jdd.configs.image_text)."""
  tc = config.train_transform
  ops = str(tc.ops)
  if ops not in randaugment.OPS_BY_REFERENCE:
    raise ValueError(f"train_transform.ops must be one of {tuple(randaugment.OPS_BY_REFERENCE)}"
                     f" (the reference whose op list to use), got {ops!r}")
  return randaugment.TrainTransform(
      size=int(image_size), scale=(float(tc.min_scale), 1.0), flip=bool(tc.flip),
      ops=randaugment.OPS_BY_REFERENCE[ops], num_ops=int(tc.num_ops),
      magnitude=float(tc.magnitude))


@dataclasses.dataclass
class Plan:
  """What every expert of a run shares: data, model, optimiser settings and the keys' root."""
  ctx: RunContext
  model: RetrievalModel
  backbone_variables: dict
  images: Any
  texts: np.ndarray
  image_index: np.ndarray
  features: bool
  transform: randaugment.TrainTransform | None
  files: pipeline.ImageFiles | None
  batch: int
  per_epoch: int
  epochs: int

  @staticmethod
  def create(ctx, model, backbone_variables, images, texts, image_index, *, features,
             augment) -> "Plan":
    from jdd.stages.experts import trained_epochs
    cfg = ctx.config.experts
    texts = np.asarray(texts, np.float32)
    n, b = len(texts), int(cfg.batch_size)
    if n < b:
      raise ValueError(f"expert batch size {b} exceeds the {n} train pairs (drop_last would "
                       "leave no batch); lower experts.batch_size")
    files = transform = None
    if augment:
      files = getattr(images, "source", None)
      if not isinstance(files, pipeline.ImageFiles):
        raise ValueError("experts.augment reads the train images from disk: pass "
                         "jdd.data.pipeline.pixel_rows(data.files('train'))")
      transform = train_transform(ctx.config, files.image_size)
    return Plan(ctx, model, backbone_variables, images, texts, np.asarray(image_index),
                features, transform, files, b, n // b, trained_epochs(cfg))

  def describe(self) -> str:
    if self.features:
      return "frozen-backbone features of un-augmented images (cached)"
    if self.transform is None:
      return "pixels, un-augmented (test transform)"
    t = self.transform
    return (f"pixels through the references' train transform: RandomResizedCrop(scale "
            f"{t.scale}, bicubic), flip={t.flip}, RandomAugment(N={t.num_ops}, M={t.magnitude:g}"
            f", ops={list(t.ops)})")

  def expert_key(self, e: int) -> jax.Array:
    return jax.random.fold_in(self.ctx.keys["experts"], e)

  def order(self, ekey: jax.Array, epoch: int) -> np.ndarray:
    return np.asarray(jax.random.permutation(jax.random.fold_in(ekey, 1 + epoch),
                                             len(self.texts)))

  def init(self, ekey: jax.Array) -> dict:
    return self.model.init(jax.random.fold_in(ekey, 0), self.backbone_variables,
                           self.texts.shape[-1])

  @property
  def lrs(self):
    cfg = self.ctx.config.experts
    return jnp.float32(cfg.lr_image), jnp.float32(cfg.lr_text)

  def step_settings(self) -> dict:
    cfg = self.ctx.config.experts
    return dict(loss="infonce", weight_decay=float(cfg.weight_decay),
                momentum=float(cfg.momentum))


def _flat(params: dict) -> dict[str, np.ndarray]:
  return {m: np.asarray(ravel_pytree(params[m])[0], np.float32) for m in MODALITIES}


# ----------------------------------------------------------------------------- pixels
def pixel_batches(plan: Plan, ekey: jax.Array):
  """Step s -> expert batch s (images on the device, sharded over the mesh when it has several
  devices; texts; the step's index in its epoch), a pure function of (ekey, s). Over several
  devices each process reads and augments only the rows its devices hold
  (`jdd.mesh.shard_rows`): row k's augmentation seed is drawn for the whole batch, so it is
  the same whichever process reads row k."""
  b, per_epoch, mesh = plan.batch, plan.per_epoch, plan.ctx.mesh
  orders: dict[int, np.ndarray] = {}

  def make_batch(s):
    epoch, i = divmod(s, per_epoch)
    if epoch not in orders:
      orders.clear()
      orders[epoch] = plan.order(ekey, epoch)
    idx = orders[epoch][i * b:(i + 1) * b]
    rows = plan.image_index[idx]
    seeds = (None if plan.transform is None else
             pipeline.image_seeds(host_rng(jax.random.fold_in(ekey, 1 + epoch), i), b))

    def load(held):
      if seeds is None:
        x = plan.images[rows[held]]
      else:
        x = plan.files.augmented(rows[held], seeds[held], plan.transform)
      return {"images": x, "texts": plan.texts[idx[held]]}

    if mesh.shape["data"] > 1:
      return {**mesh_lib.shard_rows(b, load, mesh), "i": i}
    batch = load(np.arange(b))
    return {"images": jnp.asarray(batch["images"]), "texts": jnp.asarray(batch["texts"]), "i": i}
  return make_batch


def train_pixel_expert(plan: Plan, store, e: int) -> None:
  """Expert `e`, one SGD step per streamed batch (module docstring)."""
  ctx, b, per_epoch = plan.ctx, plan.batch, plan.per_epoch
  mesh = ctx.mesh
  multi = mesh.shape["data"] > 1
  ekey = plan.expert_key(e)
  frozen = None if plan.model.train_backbone else plan.backbone_variables
  opt, train_step = compiled_train_step(plan.model, features=plan.features,
                                        **plan.step_settings())
  if frozen is not None and multi:
    frozen = mesh_lib.replicate(frozen, mesh)
  params = plan.init(ekey)
  state = {"params": params, "opt": opt.init(params), "loss_sum": jnp.float32(0.0)}
  target = jnp.eye(b, dtype=jnp.float32)
  make_batch = pixel_batches(plan, ekey)

  def step_fn(state, batch, rng):
    params, opt_state, value = train_step(state["params"], state["opt"], frozen,
                                          batch["images"], batch["texts"], target, rng,
                                          *plan.lrs)
    loss_sum = value if batch["i"] == 0 else state["loss_sum"] + value
    return ({**state, "params": params, "opt": opt_state, "loss_sum": loss_sum},
            {"loss": loss_sum / (batch["i"] + 1)})   # the epoch's mean so far

  first = {}

  def on_start(start, state):
    first["step"] = start
    if start == 0:
      store.write_row(e, 0, _flat(state["params"]))

  def before_step(s, state):
    if multi and s == first["step"]:
      state = mesh_lib.replicate(state, mesh)
    return state

  def after_step(done, state):
    if done % per_epoch == 0:
      store.write_row(e, done // per_epoch, _flat(state["params"]))
    return state

  total = plan.epochs * per_epoch
  with pipeline.Prefetcher(make_batch, total, depth=2) as ahead:
    state = ctx.loop(f"expert{e:03d}", state, step_fn, ahead.get, total,
                     jax.random.fold_in(ekey, 2), checkpoint_every=per_epoch,
                     log_every=per_epoch, on_start=on_start, before_step=before_step,
                     after_step=after_step)
  store.finish(e, {"expert": e, "final_epoch_loss": float(state["loss_sum"]) / per_epoch,
                   "experts_per_program": 1, "devices": mesh.shape["data"]})


# --------------------------------------------------------------------------- features
def group_size(cfg, sizes: dict, plan: Plan, todo: int) -> int:
  """Experts per program in the feature mode: `experts.parallel`, or as many as a memory budget
  holds (half the device's memory less the resident data; 2 GiB on a host without a limit),
  rounded down to a multiple of the device count so the expert axis shards evenly."""
  devices = plan.ctx.mesh.shape["data"]
  size = int(cfg.get("parallel", 0) or 0)
  if not size:
    params = sum(sizes.values())
    joint = plan.model.joint_dim
    feat = int(np.prod(np.shape(plan.images)[1:]))
    # parameters, gradients, optimiser trace and updates, plus the step's activations
    per_expert = 4 * (4 * params + 8 * plan.batch * (feat + plan.texts.shape[-1] + 4 * joint))
    data = 4 * (np.prod(np.shape(plan.images)) + plan.texts.size) + 8 * len(plan.texts)
    stats = jax.local_devices()[0].memory_stats() or {}
    budget = (stats["bytes_limit"] // 2 - data) if "bytes_limit" in stats else _HOST_GROUP_BYTES
    size = max(1, int(budget // per_expert))
  size = max(1, min(size, todo))
  if size >= devices:
    size -= size % devices
  return size


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def epoch_program(plan: Plan):
  """One jitted program: `vmap` over a group's experts of a `lax.scan` over one epoch."""
  _, step = make_train_step(plan.model, features=True, **plan.step_settings())
  b, per_epoch = plan.batch, plan.per_epoch
  target = jnp.eye(b, dtype=jnp.float32)
  lr_image, lr_text = plan.lrs

  def one(params, opt_state, perm, base, epoch, feats, texts, index):
    def body(carry, i):
      p, o, total = carry
      idx = jax.lax.dynamic_slice_in_dim(perm, i * b, b)
      x = jnp.take(feats, jnp.take(index, idx), axis=0)
      rng = jax.random.fold_in(base, epoch * per_epoch + i)
      p, o, value = step(p, o, None, x, jnp.take(texts, idx, axis=0), target, rng, lr_image,
                         lr_text)
      return (p, o, total + value), None
    (params, opt_state, total), _ = jax.lax.scan(body, (params, opt_state, jnp.float32(0.0)),
                                                 jnp.arange(per_epoch))
    return params, opt_state, total / per_epoch

  def run(state, perm, bases, epoch, feats, texts, index):
    params, opt_state, loss = jax.vmap(one, in_axes=(0, 0, 0, 0, None, None, None, None))(
        state["params"], state["opt"], perm, bases, epoch, feats, texts, index)
    return {"params": params, "opt": opt_state, "loss": loss}, {"loss": jnp.mean(loss)}

  return jax.jit(run, donate_argnums=(0,))


_PROGRAMS: dict = {}


def train_feature_group(plan: Plan, store, group: list[int]) -> None:
  """The experts in `group` trained together, one program per epoch (module docstring)."""
  ctx, mesh = plan.ctx, plan.ctx.mesh
  spread = mesh.shape["data"] > 1 and len(group) % mesh.shape["data"] == 0
  put = (lambda x: mesh_lib.shard(x, mesh)) if spread else jnp.asarray
  keep = (lambda x: mesh_lib.replicate(x, mesh)) if spread else jnp.asarray
  opt, _ = make_train_step(plan.model, features=True, **plan.step_settings())
  ekeys = [plan.expert_key(e) for e in group]
  params = _stack([plan.init(k) for k in ekeys])
  state = jax.tree.map(put, {"params": params, "opt": jax.vmap(opt.init)(params),
                             "loss": jnp.zeros(len(group), jnp.float32)})
  bases = put(jnp.stack([jax.random.fold_in(k, 2) for k in ekeys]))
  data = [keep(np.asarray(plan.images, np.float32)), keep(plan.texts),
          keep(plan.image_index.astype(np.int32))]
  key = (id(plan.model), plan.batch, plan.per_epoch, tuple(sorted(plan.step_settings().items())),
         float(ctx.config.experts.lr_image), float(ctx.config.experts.lr_text))
  hit = _PROGRAMS.get(key)
  if hit is None or hit[0] is not plan.model:
    hit = _PROGRAMS[key] = (plan.model, epoch_program(plan))
  program = hit[1]

  def batch_fn(epoch):
    return {"perm": put(np.stack([plan.order(k, epoch) for k in ekeys]).astype(np.int32)),
            "epoch": jnp.int32(epoch)}

  def step_fn(state, batch, _):
    return program(state, batch["perm"], bases, batch["epoch"], *data)

  def write(row, state):
    flat = {m: np.asarray(mesh_lib.fetch(jax.vmap(lambda p: ravel_pytree(p)[0])(
        state["params"][m]))) for m in MODALITIES}
    for g, e in enumerate(group):
      store.write_row(e, row, {m: flat[m][g] for m in MODALITIES})

  def on_start(start, state):
    if start == 0:
      write(0, state)

  def after_step(done, state):
    write(done, state)
    return state

  name = f"expert{group[0]:03d}" if len(group) == 1 else (
      "experts" + "_".join(f"{e:03d}" for e in group))
  state = ctx.loop(name, state, step_fn, batch_fn, plan.epochs, ctx.keys["experts"],
                   checkpoint_every=1, log_every=1, on_start=on_start, after_step=after_step)
  loss = np.asarray(mesh_lib.fetch(state["loss"]))
  for g, e in enumerate(group):
    store.finish(e, {"expert": e, "final_epoch_loss": float(loss[g]),
                     "experts_per_program": len(group),
                     "devices": mesh.shape["data"] if spread else 1})
