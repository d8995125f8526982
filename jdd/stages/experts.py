"""Expert trajectories for image-text trajectory matching: training them and storing them once.

Reference: `buffer.py` of zhangxin-xd/RepBlend and silicx/LoRS_Distill
(shared/research/multimodal_dd_methods.md §4): N experts, each a fresh retrieval model (pretrained
encoder, random heads) trained with SGD (lr 0.1 per modality, momentum 0, no weight decay) for 10
epochs of batch 128 (drop_last, shuffled) on every train caption pair, symmetric InfoNCE with
identity targets, tau 0.07; the trainable tensors are snapshotted at the start and after every
epoch. RepBlend trains and stores the image and text projection heads, LoRS/MTT-VL the whole image
encoder and the text head.

jdd differs on purpose (research §4 "Snapshot use", §9):

* **One store, read without reloading.** The reference writes one `.pt` file per expert and
  reloads a file on every distillation iteration. jdd writes every trajectory into one
  memory-mapped array per modality, `W/experts/{image,text}.npy` of shape
  (experts, snapshots, parameters), float32, so a distillation run opens the store once and
  reads a trajectory as a slice.
* **Only the snapshots a config can use.** Distillation only reads epochs 0 .. max_start_epoch
  + expert_epochs; `experts.keep_epochs` (default: that number + 1) limits the store to them and
  the manifest says which epochs were kept and how many bytes that saved.
* **Resumable and shardable.** A finished expert is marked by `W/experts/done/expertNNN.json`,
  written after its slice is flushed; an unfinished one resumes from its last epoch checkpoint
  (each expert is one run of the shared checkpointed loop, `jdd.loop`, checkpointing at the end
  of every epoch).
  `experts.shard = 'i/n'` trains every n-th expert starting at i, so n processes (or machines
  sharing the workdir) fill one store; batches are sharded over the local device mesh. In one
  multi-process run (`jdd.distributed`) every process trains every expert (the same numbers)
  and process 0 alone writes the store.
* **Seeded.** Expert e's heads, data order and dropout come from fold_in(key, e).
* With a frozen backbone, experts train on the backbone's features of un-augmented images
  (computed once) rather than re-running the frozen encoder on augmented pixels every step; the
  reference's train augmentation is therefore off in that mode (a CPU-budget choice, stated in
  the manifest).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jdd import checkpoint, distributed
from jdd.evaluation.retrieval import compiled_train_step
from jdd.loop import RunContext
from jdd.models.retrieval import RetrievalModel
from jdd.objectives.trajectory import MODALITIES


def parse_shard(shard: str) -> tuple[int, int]:
  """'i/n' -> (i, n) with 0 <= i < n; '' -> (0, 1)."""
  if not shard:
    return 0, 1
  try:
    i, n = (int(x) for x in str(shard).split("/"))
  except ValueError as e:
    raise ValueError(f"experts.shard must look like 'i/n' (e.g. '0/4'), got {shard!r}") from e
  if not 0 <= i < n:
    raise ValueError(f"experts.shard {shard!r}: need 0 <= i < n")
  return i, n


class ExpertStore:
  """The memory-mapped store of expert trajectories under `root` (see the module docstring)."""

  def __init__(self, root: str):
    self.root = root
    meta_path = os.path.join(root, "meta.json")
    if not os.path.exists(meta_path):
      raise FileNotFoundError(
          f"no expert store at {root} (meta.json missing): run the 'experts' stage first, or "
          "point experts.store at the `experts/` folder of a finished run")
    self.meta = checkpoint.read_json(meta_path)
    self._arrays = {m: np.load(os.path.join(root, f"{m}.npy"), mmap_mode="r")
                    for m in MODALITIES}
    self._unravel = {m: _unraveler(self.meta["templates"][m]) for m in MODALITIES}

  @staticmethod
  def create(root: str, num_experts: int, keep_epochs: list[int], templates: dict,
             info: dict) -> "ExpertStore":
    """Creates (or reopens, after checking it matches) the store's arrays and meta.json."""
    os.makedirs(os.path.join(root, "done"), exist_ok=True)
    meta = {"format": 1, "num_experts": int(num_experts), "epochs": list(map(int, keep_epochs)),
            "templates": {m: _describe(templates[m]) for m in MODALITIES},
            "sizes": {m: int(ravel_pytree(templates[m])[0].size) for m in MODALITIES},
            "info": info}
    meta_path = os.path.join(root, "meta.json")
    distributed.barrier("expert store")  # all processes see the same meta.json below
    if os.path.exists(meta_path):
      old = checkpoint.read_json(meta_path)
      if json.loads(json.dumps(meta)) != old:
        raise ValueError(
            f"the expert store at {root} was made with other settings ({_diff(old, meta)}); use "
            "a new workdir or delete that folder")
    else:
      for m in MODALITIES if distributed.is_writer() else ():
        shape = (num_experts, len(keep_epochs), meta["sizes"][m])
        arr = np.lib.format.open_memmap(os.path.join(root, f"{m}.npy"), mode="w+",
                                        dtype=np.float32, shape=shape)
        arr.flush()
        del arr
      checkpoint.atomic_write_json(meta_path, meta)  # process 0 writes; all wait for it
    return ExpertStore(root)

  @property
  def num_experts(self) -> int:
    return int(self.meta["num_experts"])

  @property
  def epochs(self) -> list[int]:
    return list(self.meta["epochs"])

  def done(self) -> list[int]:
    d = os.path.join(self.root, "done")
    return sorted(int(f[6:9]) for f in os.listdir(d) if f.startswith("expert") and
                  f.endswith(".json")) if os.path.isdir(d) else []

  def write(self, expert: int, snapshots: dict[str, np.ndarray], record: dict) -> None:
    """Writes expert `expert`'s (snapshots, parameters) rows, flushes, then marks it done."""
    for m in MODALITIES if distributed.is_writer() else ():
      arr = np.load(os.path.join(self.root, f"{m}.npy"), mmap_mode="r+")
      arr[expert] = snapshots[m]
      arr.flush()
      del arr
    checkpoint.atomic_write_json(os.path.join(self.root, "done", f"expert{expert:03d}.json"),
                                 record)

  def trajectory(self, expert: int) -> dict[str, np.ndarray]:
    """{modality: (snapshots, parameters)} read-only views of one expert (no copy)."""
    if expert not in set(self.done()):
      raise ValueError(f"expert {expert} is not finished in {self.root}")
    return {m: self._arrays[m][expert] for m in MODALITIES}

  def snapshot(self, expert: int, epoch: int) -> dict[str, Any]:
    """The parameter pytrees {'image', 'text'} of `expert` after `epoch` epochs."""
    if epoch not in self.epochs:
      raise ValueError(f"epoch {epoch} is not stored (stored: {self.epochs}); raise "
                       "experts.keep_epochs and retrain")
    s = self.epochs.index(epoch)
    return {m: self._unravel[m](jnp.asarray(self._arrays[m][expert, s])) for m in MODALITIES}

  def unravel(self, modality: str, flat) -> Any:
    return self._unravel[modality](jnp.asarray(flat))

  def nbytes(self) -> int:
    return int(sum(a.nbytes for a in self._arrays.values()))


def _describe(tree) -> list:
  leaves = jax.tree.flatten_with_path(tree)[0]
  return [["/".join(str(getattr(k, "key", k)) for k in path), list(np.shape(x))]
          for path, x in leaves]


def _unraveler(description: list) -> Callable:
  template: dict = {}
  for path, shape in description:
    node = template
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.zeros(shape, jnp.float32)
  return ravel_pytree(template)[1]


def _diff(old: dict, new: dict) -> str:
  keys = [k for k in set(old) | set(new) if json.dumps(old.get(k), sort_keys=True) !=
          json.dumps(new.get(k), sort_keys=True)]
  return "differs in " + ", ".join(sorted(keys))


def keep_epochs(cfg) -> list[int]:
  """Epochs whose snapshots are stored: 0 .. keep (clipped to the training length)."""
  keep = int(cfg.keep_epochs) if cfg.keep_epochs else int(cfg.epochs)
  return list(range(0, min(keep, int(cfg.epochs)) + 1))


def train_experts(ctx: RunContext, model: RetrievalModel, backbone_variables: dict,
                  images: np.ndarray, texts: np.ndarray, image_index: np.ndarray, *,
                  features: bool) -> ExpertStore:
  """Trains this process's shard of `experts.num_experts` experts into `W/experts`.

  `images` holds one input per train image (pixels or frozen features), `texts` one embedding
  per train caption and `image_index` the image of each caption. Fields of `ctx.config.experts`:
  num_experts, epochs, batch_size, lr_image, lr_text, momentum, weight_decay, keep_epochs,
  shard. Expert e's key E = fold_in(keys['experts'], e) gives its heads (fold_in(E, 0)), the
  data order of epoch k (fold_in(E, 1 + k)) and step s's key (fold_in(fold_in(E, 2), s)).
  """
  cfg, key = ctx.config.experts, ctx.keys["experts"]
  root = os.path.join(ctx.workdir, "experts")
  template = model.init(jax.random.key(0), backbone_variables, texts.shape[-1])
  epochs_kept = keep_epochs(cfg)
  store = ExpertStore.create(
      root, int(cfg.num_experts), epochs_kept,
      {m: template[m] for m in MODALITIES},
      {"loss": "infonce", "epochs_trained": int(cfg.epochs), "batch_size": int(cfg.batch_size),
       "lr_image": float(cfg.lr_image), "lr_text": float(cfg.lr_text),
       "momentum": float(cfg.momentum), "weight_decay": float(cfg.weight_decay),
       "inputs": "frozen-backbone features of un-augmented images" if features else "pixels"})
  shard_i, shard_n = parse_shard(cfg.shard)
  frozen = None if model.train_backbone else backbone_variables
  opt, train_step = compiled_train_step(model, loss="infonce", features=features,
                                        weight_decay=float(cfg.weight_decay),
                                        momentum=float(cfg.momentum))
  n = len(texts)
  b = int(cfg.batch_size)
  if n < b:
    raise ValueError(f"expert batch size {b} exceeds the {n} train pairs (drop_last would leave "
                     "no batch); lower experts.batch_size")
  per_epoch = n // b  # drop_last, as the reference's DataLoader
  texts = np.asarray(texts, np.float32)
  image_index = np.asarray(image_index)
  total = int(cfg.epochs) * per_epoch
  target = jnp.eye(b, dtype=jnp.float32)
  lrs = (jnp.float32(cfg.lr_image), jnp.float32(cfg.lr_text))

  def step_fn(state, batch, rng):
    params, opt_state, value = train_step(state["params"], state["opt"], frozen,
                                          batch["images"], batch["texts"], target, rng, *lrs)
    loss_sum = value if batch["i"] == 0 else state["loss_sum"] + value
    return ({**state, "params": params, "opt": opt_state, "loss_sum": loss_sum},
            {"loss": loss_sum / (batch["i"] + 1)})   # the epoch's mean so far

  for e in range(shard_i, int(cfg.num_experts), shard_n):
    if e in store.done():
      continue
    ekey = jax.random.fold_in(key, e)
    params = model.init(jax.random.fold_in(ekey, 0), backbone_variables, texts.shape[-1])
    snaps = {m: np.zeros((len(epochs_kept), store.meta["sizes"][m]), np.float32)
             for m in MODALITIES}
    state = {"params": params, "opt": opt.init(params), "loss_sum": jnp.float32(0.0),
             "snaps": {m: _set_row(snaps[m], 0, params[m]) for m in MODALITIES}}
    orders = {}

    def batch_fn(s, ekey=ekey, orders=orders):
      epoch, i = divmod(s, per_epoch)
      if epoch not in orders:
        orders.clear()
        orders[epoch] = np.asarray(jax.random.permutation(jax.random.fold_in(ekey, 1 + epoch), n))
      idx = orders[epoch][i * b:(i + 1) * b]
      return {"images": jnp.asarray(images[image_index[idx]]), "texts": jnp.asarray(texts[idx]),
              "i": i}

    def snapshot(done, state):
      epoch = done // per_epoch
      if done % per_epoch or epoch not in epochs_kept:
        return state
      return {**state, "snaps": {m: _set_row(state["snaps"][m], epochs_kept.index(epoch),
                                              state["params"][m]) for m in MODALITIES}}

    state = ctx.loop(f"expert{e:03d}", state, step_fn, batch_fn, total,
                     jax.random.fold_in(ekey, 2), checkpoint_every=per_epoch,
                     log_every=per_epoch, after_step=snapshot)
    store.write(e, {m: np.asarray(state["snaps"][m]) for m in MODALITIES},
                {"expert": e, "final_epoch_loss": float(state["loss_sum"]) / per_epoch})
  return ExpertStore(root)


def _set_row(table: np.ndarray, row: int, tree) -> np.ndarray:
  table = np.array(table, copy=True)
  table[row] = np.asarray(ravel_pytree(tree)[0], np.float32)
  return table


def read_speed(store: ExpertStore, expert: int = 0, repeats: int = 5) -> float:
  """Seconds to read one expert's whole stored trajectory into memory (the benchmark figure)."""
  import time
  best = math.inf
  for _ in range(repeats):
    t = time.perf_counter()
    traj = store.trajectory(expert)
    _ = [np.array(v) for v in traj.values()]
    best = min(best, time.perf_counter() - t)
  return best


def manifest(store: ExpertStore, cfg) -> dict:
  """The experts' entry of results.json: what was stored, and what storing every epoch would
  have cost."""
  per_snapshot = sum(store.meta["sizes"].values()) * 4
  full = store.num_experts * (int(cfg.epochs) + 1) * per_snapshot
  return {"num_experts": store.num_experts, "finished": len(store.done()),
          "epochs_stored": store.epochs, "epochs_trained": int(cfg.epochs),
          "parameters_per_snapshot": store.meta["sizes"], "store_bytes": store.nbytes(),
          "bytes_if_every_epoch_were_stored": full, "inputs": store.meta["info"]["inputs"]}
