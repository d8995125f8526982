"""Expert trajectories for image-text trajectory matching: training them and storing them once.

Reference: `buffer.py` of zhangxin-xd/RepBlend and silicx/LoRS_Distill
(shared/research/multimodal_dd_methods.md §4): N experts, each a fresh retrieval model (pretrained
encoder, random heads) trained with SGD (lr 0.1 per modality, momentum 0, no weight decay) for 10
epochs of batch 128 (drop_last, shuffled) on every train caption pair, symmetric InfoNCE with
identity targets, tau 0.07; the trainable tensors are snapshotted at the start and after every
epoch. RepBlend trains and stores the image and text projection heads, LoRS/MTT-VL the whole image
encoder and the text head.

Every expert trains on the references' train transform (RandomResizedCrop, flip, RandomAugment;
`jdd.data.randaugment`) when `experts.augment` is on, as the paper configs of all three methods
set it: the reference buffers of RepBlend were made on augmented images too (the frozen NFNet
runs on every augmented batch; research §4, "Expert cost").

jdd differs on purpose (research §4 "Snapshot use", §9):

* **One store, read without reloading.** The reference writes one `.pt` file per expert and
  reloads a file on every distillation iteration. jdd writes every trajectory into one
  memory-mapped array per modality, `W/experts/{image,text}.npy` of shape
  (experts, snapshots, parameters), float32, so a distillation run opens the store once and
  reads a trajectory as a slice.
* **Only the epochs a config can use, stored and trained.** Distillation only reads epochs
  0 .. max_start_epoch + expert_epochs; `experts.keep_epochs` (the paper configs: that number)
  limits the store to them, and since SGD at a constant rate never looks ahead, the experts
  stop training there too (3 of the references' 10 epochs; `keep_epochs=0` trains and stores
  all `epochs`). The manifest says which epochs were kept and what the rest would have cost.
* **Cheap frozen-feature experts.** With a frozen backbone and `experts.augment=False`, the
  backbone's features of un-augmented images are computed once (memory-mapped), and groups of
  experts train in one program per epoch (`vmap` over experts, `lax.scan` over steps, the
  expert axis sharded over the devices; `jdd.stages.expert_loops`). This is exact only for
  un-augmented references (`--no_aug`); it is the switch, not the default of a paper config.
* **Streaming pixels.** Pixel experts read each batch from disk in threads, prefetched while
  the previous step runs (`jdd.data.pipeline`); host memory holds a few batches, not a split.
  Batches are sharded over the mesh's `data` axis.
* **Resumable and shardable.** A finished expert is marked by `W/experts/done/expertNNN.json`,
  written after its rows are flushed (each row is written and flushed after its epoch, before
  that epoch's checkpoint of the shared loop, `jdd.loop`); an unfinished expert or group
  resumes from its last epoch checkpoint, bit for bit. `experts.shard = 'i/n'` trains every
  n-th expert starting at i, so n processes (or machines sharing the workdir) fill one store.
  In one multi-process run (`jdd.distributed`) process 0 alone writes the store.
* **Seeded.** Expert e's heads, data order, augmentation and dropout come from fold_in(key, e)
  (`train_experts`), never from a global random state, so the thread count, prefetching and a
  resume never change a draw.
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

  def write_row(self, expert: int, row: int, flat: dict[str, np.ndarray]) -> None:
    """Writes one snapshot row of an unfinished expert and flushes it (before the loop's
    checkpoint of that epoch, so a resumed run finds every row up to its checkpoint)."""
    for m in MODALITIES if distributed.is_writer() else ():
      arr = np.load(os.path.join(self.root, f"{m}.npy"), mmap_mode="r+")
      arr[expert, row] = np.asarray(flat[m], np.float32)
      arr.flush()
      del arr

  def finish(self, expert: int, record: dict) -> None:
    """Marks an expert whose rows are all written (`write_row`) as done."""
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
  """The experts' entry of results.json: what was stored and trained, and what storing and
  training every one of `experts.epochs` would have cost."""
  per_snapshot = sum(store.meta["sizes"].values()) * 4
  full = store.num_experts * (int(cfg.epochs) + 1) * per_snapshot
  records = [checkpoint.read_json(os.path.join(store.root, "done", f"expert{e:03d}.json"))
             for e in store.done()]
  return {"num_experts": store.num_experts, "finished": len(store.done()),
          "epochs_stored": store.epochs, "epochs_trained": store.meta["info"]["epochs_trained"],
          "epochs_configured": int(cfg.epochs),
          "parameters_per_snapshot": store.meta["sizes"], "store_bytes": store.nbytes(),
          "bytes_if_every_epoch_were_stored": full, "inputs": store.meta["info"]["inputs"],
          "experts_per_program": sorted({r.get("experts_per_program", 1) for r in records})}


# ------------------------------------------------------------------------------ training
def keep_epochs(cfg) -> list[int]:
  """Epochs whose snapshots are stored: 0 .. keep_epochs (clipped to `epochs`); keep_epochs 0
  stores every epoch. Experts train only up to the last stored epoch (`trained_epochs`)."""
  keep = int(cfg.keep_epochs) if cfg.keep_epochs else int(cfg.epochs)
  return list(range(0, min(keep, int(cfg.epochs)) + 1))


def trained_epochs(cfg) -> int:
  """SGD at a constant learning rate never looks ahead, so epochs past the last stored snapshot
  change no stored row: they are not run. `keep_epochs=0` trains (and stores) all `epochs`,
  the references' full 10."""
  return keep_epochs(cfg)[-1]


def train_experts(ctx: RunContext, model: RetrievalModel, backbone_variables: dict,
                  images, texts: np.ndarray, image_index: np.ndarray, *,
                  features: bool) -> ExpertStore:
  """Trains this process's shard of `experts.num_experts` experts into `W/experts`.

  `images` holds one input per train image: frozen-backbone features (an array, or the
  memory-mapped `Rows` of `W/features/train.npy`; `features=True`) or test-transform pixels
  (`jdd.data.pipeline.pixel_rows`). With `experts.augment`, pixel batches are drawn through the
  references' train transform from the `ImageFiles` behind those rows instead. `texts` holds
  one embedding per train caption and `image_index` the image of each caption.

  Fields of `ctx.config.experts`: num_experts, epochs, keep_epochs, batch_size, lr_image,
  lr_text, momentum, weight_decay, shard, augment, parallel (frozen features: experts per
  program, 0 = as many as fit). Expert e's key E = fold_in(keys['experts'], e) gives its heads
  (fold_in(E, 0)), the data order of epoch k (permutation of K_k = fold_in(E, 1 + k)), the
  augmentation of batch i of epoch k (host_rng(K_k, i)) and step s's key
  (fold_in(fold_in(E, 2), s)).
  """
  from jdd.stages import expert_loops
  cfg = ctx.config.experts
  augment = bool(cfg.get("augment", False))
  if augment and features:
    raise ValueError("experts.augment trains on augmented pixels, not cached features: pass "
                     "pixel rows with features=False")
  plan = expert_loops.Plan.create(ctx, model, backbone_variables, images, texts, image_index,
                                  features=features, augment=augment)
  root = os.path.join(ctx.workdir, "experts")
  template = model.init(jax.random.key(0), backbone_variables, texts.shape[-1])
  store = ExpertStore.create(
      root, int(cfg.num_experts), keep_epochs(cfg), {m: template[m] for m in MODALITIES},
      {"loss": "infonce", "epochs_trained": trained_epochs(cfg),
       "batch_size": int(cfg.batch_size), "lr_image": float(cfg.lr_image),
       "lr_text": float(cfg.lr_text), "momentum": float(cfg.momentum),
       "weight_decay": float(cfg.weight_decay), "inputs": plan.describe()})
  shard_i, shard_n = parse_shard(cfg.shard)
  todo = [e for e in range(shard_i, int(cfg.num_experts), shard_n) if e not in store.done()]
  if features:
    size = expert_loops.group_size(cfg, store.meta["sizes"], plan, len(todo))
    for k in range(0, len(todo), size):
      expert_loops.train_feature_group(plan, store, todo[k:k + size])
  else:
    for e in todo:
      expert_loops.train_pixel_expert(plan, store, e)
  return ExpertStore(root)
