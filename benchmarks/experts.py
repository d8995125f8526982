"""Expert trajectories in the frozen-feature mode: seconds per trajectory at Flickr30K's shapes,
jdd beside a PyTorch loop; then the store's bytes and read time.

    PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/experts.py [--steps 40] [--experts 1,4]

**Seconds per trajectory.** RepBlend-shaped experts (frozen backbone; image head 2304 -> 2304,
text head 768 -> 2304, 17.7 M parameters; symmetric InfoNCE at tau 0.07, SGD lr 0.1, momentum 0,
batch 128, dropout 0.1) on random features at Flickr30K's shapes: 29,000 images with 2304-d
NFNet-L0 features, 145,000 captions with 768-d BERT embeddings, so 1,132 steps per epoch.
jdd runs its expert program (`jdd.stages.expert_loops.epoch_program`: one jitted `lax.scan`
over an epoch's steps, `vmap` over a group of experts) over `--steps` steps of the full-size
tables; the PyTorch loop, written here, runs the same steps (same heads, loss, optimiser,
batch gather from the same tables, one expert at a time; `torch.set_num_threads` = the CPU
count) in its own process (the same random tables, regenerated from the same seed). Each is
timed after a warm-up and extrapolated to whole trajectories: `--epochs`
(default 3, what the paper configs train: epochs 0..3 are all a distillation reads) and the
references' 10. The ratio is torch / jdd. For orientation: the RepBlend paper reports 40 min
per trajectory (frozen NFNet on augmented images, 10 epochs) and 70 min for LoRS's trained
NFNet, on a GPU. Those include the NFNet forward on every augmented image; this mode
precomputes features instead (`experts.augment=False`), so it is not like for like.

**Store.** Then `--store-experts` small experts are trained through `train_experts` (real
store, checkpoints) to report bytes per trajectory and the best-of-5 seconds to read one
whole trajectory from the memory-mapped store (the references reload a .pt file per
distillation iteration).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

if "--torch-worker" in sys.argv:
  # The PyTorch loop runs in its own process; there torch (and its lazily imported compiler
  # stack, which torch.optim pulls in) is loaded before jax: loaded after jax it once crashed
  # in a native module's initialisation here.
  import torch
  import torch._dynamo  # noqa: F401

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jdd.evaluation.retrieval import make_train_step
from jdd.loop import RunContext
from jdd.models.nfnet import NFNet, NFNET_TINY
from jdd.models.retrieval import RetrievalModel
from jdd.stages import expert_loops, experts

BATCH = 128


def _context(cfg, workdir: str, seed: int) -> RunContext:
  config = ml_collections.ConfigDict(dict(seed=seed, log_every=10 ** 9, checkpoint_every=10 ** 9,
                                          experts=cfg))
  return RunContext.standalone(config, workdir, {"experts": jax.random.key(seed)})


def _expert_cfg(**kw):
  c = dict(num_experts=1, epochs=1, keep_epochs=0, batch_size=BATCH, lr_image=0.1, lr_text=0.1,
           momentum=0.0, weight_decay=0.0, shard="", augment=False, parallel=0)
  c.update(kw)
  return ml_collections.ConfigDict(c)


def jdd_seconds_per_step(model, feats, texts, image_index, steps: int, group: int,
                         repeats: int) -> tuple[float, float]:
  """(wall, CPU) seconds per expert-step of the expert program, `group` experts per program."""
  with tempfile.TemporaryDirectory(prefix="jdd_bench_") as work:   # the context needs a workdir
    ctx = _context(_expert_cfg(), work, 0)
    plan = expert_loops.Plan(ctx, model, {}, feats, texts, image_index, True, None, None, BATCH,
                             steps, 1)
    program = expert_loops.epoch_program(plan)
    opt, _ = make_train_step(model, features=True, **plan.step_settings())
    keys = [plan.expert_key(e) for e in range(group)]
    params = jax.tree.map(lambda *x: jnp.stack(x), *[plan.init(k) for k in keys])
    state = {"params": params, "opt": jax.vmap(opt.init)(params),
             "loss": jnp.zeros(group, jnp.float32)}
    bases = jnp.stack([jax.random.fold_in(k, 2) for k in keys])
    data = [jnp.asarray(feats), jnp.asarray(texts), jnp.asarray(image_index, jnp.int32)]
    perms = [jnp.asarray(np.stack([plan.order(k, e) for k in keys]).astype(np.int32))
             for e in range(repeats + 1)]
    state, m = program(state, perms[0], bases, jnp.int32(0), *data)      # compile + warm-up
    jax.block_until_ready(m)
    t, c = time.perf_counter(), time.process_time()
    for e in range(1, repeats + 1):
      state, m = program(state, perms[e], bases, jnp.int32(e), *data)
    jax.block_until_ready(m)
    n = repeats * steps * group
    return (time.perf_counter() - t) / n, (time.process_time() - c) / n


def torch_seconds_per_step(feats, texts, image_index, steps: int,
                           repeats: int) -> tuple[float, float]:
  """The same expert steps as a PyTorch loop (one expert)."""
  import torch
  import torch.nn.functional as tf
  from torch import nn
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)

  class Head(nn.Module):   # the references' ProjectionHead
    def __init__(self, d_in, d_out):
      super().__init__()
      self.projection, self.fc = nn.Linear(d_in, d_out), nn.Linear(d_out, d_out)
      self.dropout, self.layer_norm = nn.Dropout(0.1), nn.LayerNorm(d_out)

    def forward(self, x):
      p = self.projection(x)
      return self.layer_norm(self.dropout(self.fc(tf.gelu(p))) + p)

  joint = feats.shape[1]
  image_head, text_head = Head(feats.shape[1], joint), Head(texts.shape[1], joint)
  opt = torch.optim.SGD([{"params": image_head.parameters(), "lr": 0.1},
                         {"params": text_head.parameters(), "lr": 0.1}], lr=0.0, momentum=0.0)
  f, t_all = torch.from_numpy(feats), torch.from_numpy(texts)
  index = torch.from_numpy(np.asarray(image_index, np.int64))
  target = torch.arange(BATCH)
  scale = 1.0 / 0.07

  def epoch(e):
    perm = torch.from_numpy(np.random.default_rng(e).permutation(len(texts)))
    for i in range(steps):
      idx = perm[i * BATCH:(i + 1) * BATCH]
      u = tf.normalize(image_head(f[index[idx]]), dim=-1)
      v = tf.normalize(text_head(t_all[idx]), dim=-1)
      logits = scale * u @ v.T
      loss = 0.5 * (tf.cross_entropy(logits, target) + tf.cross_entropy(logits.T, target))
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()

  epoch(0)                                                                # warm-up
  t, c = time.perf_counter(), time.process_time()
  for e in range(1, repeats + 1):
    epoch(e)
  n = repeats * steps
  return (time.perf_counter() - t) / n, (time.process_time() - c) / n


def store_figures(args) -> None:
  rng = np.random.default_rng(1)
  n_images = args.store_pairs // 5
  feats = rng.normal(size=(n_images, args.feature_dim)).astype(np.float32)
  image_index = np.repeat(np.arange(n_images), 5)[:args.store_pairs]
  texts = rng.normal(size=(len(image_index), args.text_dim)).astype(np.float32)
  model = RetrievalModel(NFNet(**NFNET_TINY), args.feature_dim, train_backbone=False)
  cfg = _expert_cfg(num_experts=args.store_experts, epochs=args.store_epochs)
  with tempfile.TemporaryDirectory() as work:
    t = time.perf_counter()
    store = experts.train_experts(_context(cfg, os.path.join(work, "t"), 0), model, {}, feats,
                                  texts, image_index, features=True)
    dt = time.perf_counter() - t
    per_traj = store.nbytes() // store.num_experts
    read = experts.read_speed(store, 0)
  print(f"store: {args.store_experts} experts x {args.store_epochs} epochs on "
        f"{args.store_pairs} pairs trained through train_experts in {dt:.1f} s (compile, "
        f"checkpoints and snapshot writes included); {len(store.epochs)} snapshots = "
        f"{per_traj / 2 ** 20:.1f} MiB per trajectory; reading one whole trajectory from the "
        f"store: {read * 1e3:.1f} ms (best of 5)")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--images", type=int, default=29000)
  p.add_argument("--captions", type=int, default=145000)
  p.add_argument("--feature-dim", type=int, default=2304)
  p.add_argument("--text-dim", type=int, default=768)
  p.add_argument("--steps", type=int, default=40, help="timed steps per repeat")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--epochs", type=int, default=3, help="epochs per trajectory (paper configs)")
  p.add_argument("--experts", default="1,4", help="experts per jdd program to time")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--store-pairs", type=int, default=1280)
  p.add_argument("--store-epochs", type=int, default=2)
  p.add_argument("--store-experts", type=int, default=2)
  args = p.parse_args()
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(args.images, args.feature_dim)).astype(np.float32)
  image_index = np.repeat(np.arange(args.images), -(-args.captions // args.images))
  image_index = image_index[:args.captions]
  texts = rng.normal(size=(args.captions, args.text_dim)).astype(np.float32)
  per_epoch = args.captions // BATCH
  if args.torch_worker:   # torch in its own process (imported first, above)
    print(json.dumps(torch_seconds_per_step(feats, texts, image_index, args.steps,
                                            args.repeats)))
    return
  model = RetrievalModel(NFNet(**NFNET_TINY), args.feature_dim, train_backbone=False)
  print(f"device: {jax.devices()[0].platform} x {len(jax.devices())}; {os.cpu_count()} CPUs; "
        f"{args.images} images x {args.feature_dim}-d features, {args.captions} captions x "
        f"{args.text_dim}-d; {per_epoch} steps of batch {BATCH} per epoch; timing "
        f"{args.repeats} x {args.steps} steps after a warm-up", flush=True)

  def line(name, wall, cpu):
    traj = wall * per_epoch * args.epochs
    print(f"{name}: {wall:.4f} s/step ({cpu:.4f} CPU s) -> {traj:.0f} s per {args.epochs}-epoch "
          f"trajectory, {wall * per_epoch * 10 / 60:.1f} min per 10-epoch trajectory", flush=True)

  rows = {}
  for group in (int(g) for g in args.experts.split(",")):
    rows[group] = jdd_seconds_per_step(model, feats, texts, image_index, args.steps, group,
                                       args.repeats)
    line(f"jdd ({group} expert{'s' * (group > 1)} per program)", *rows[group])
  if not args.no_torch:
    r = subprocess.run([sys.executable, *sys.argv, "--torch-worker"], capture_output=True,
                       text=True, check=True)
    wall, cpu = json.loads(r.stdout.strip().splitlines()[-1])
    line("torch loop (1 expert)", wall, cpu)
    for group, (jw, jc) in rows.items():
      print(f"ratio torch / jdd ({group} per program): {wall / jw:.2f}x wall, {cpu / jc:.2f}x "
            "CPU")
  print("paper, for orientation (GPU, frozen NFNet on augmented images, 10 epochs): RepBlend "
        "40 min, LoRS 70 min per trajectory")
  store_figures(args)


if __name__ == "__main__":
  main()
