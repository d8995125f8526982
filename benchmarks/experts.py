"""Expert-training throughput and the time to read one expert trajectory from the store.

    PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/experts.py [--pairs 2560] [--epochs 2]

Trains `--experts` RepBlend-shaped experts (frozen backbone features -> image head, text head;
symmetric InfoNCE, SGD 0.1, batch 128) on random features of the references' sizes (2304-d
NFNet-L0 features, 768-d BERT [CLS]) and prints steps/s and pairs/s of expert training, then the
bytes per trajectory and the best-of-5 seconds to read one whole trajectory from the
memory-mapped store (what a distillation iteration needs; the references reload a .pt file).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import ml_collections
import numpy as np

from jdd.loop import RunContext
from jdd.stages import experts
from jdd.models.nfnet import NFNet, NFNET_TINY
from jdd.models.retrieval import RetrievalModel


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--pairs", type=int, default=2560)
  p.add_argument("--feature-dim", type=int, default=2304)
  p.add_argument("--text-dim", type=int, default=768)
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--experts", type=int, default=2)
  args = p.parse_args()
  rng = np.random.default_rng(0)
  n_images = args.pairs // 5
  feats = rng.normal(size=(n_images, args.feature_dim)).astype(np.float32)
  image_index = np.repeat(np.arange(n_images), 5)[:args.pairs]
  texts = rng.normal(size=(len(image_index), args.text_dim)).astype(np.float32)
  # The backbone is never run in feature mode; it only names the feature size.
  model = RetrievalModel(NFNet(**NFNET_TINY), args.feature_dim, train_backbone=False)
  cfg = ml_collections.ConfigDict(dict(
      num_experts=args.experts, epochs=args.epochs, batch_size=128, lr_image=0.1, lr_text=0.1,
      momentum=0.0, weight_decay=0.0, keep_epochs=0, shard=""))
  steps = args.experts * args.epochs * (len(texts) // 128)
  with tempfile.TemporaryDirectory() as work:
    # Compile outside the timing: one expert of one epoch in a throwaway store.
    warm = ml_collections.ConfigDict({**cfg.to_dict(), "num_experts": 1, "epochs": 1})
    experts.train_experts(_context(warm, os.path.join(work, "w"), 1), model, {}, feats, texts,
                          image_index, features=True)
    t = time.perf_counter()
    store = experts.train_experts(_context(cfg, os.path.join(work, "t"), 0), model, {}, feats,
                                  texts, image_index, features=True)
    dt = time.perf_counter() - t
    per_traj = store.nbytes() // store.num_experts
    read = experts.read_speed(store, 0)
  sizes = store.meta["sizes"]
  print(f"device: {jax.devices()[0].platform} x {len(jax.devices())}")
  print(f"heads: image {sizes['image']:,} + text {sizes['text']:,} parameters per snapshot")
  print(f"expert training: {steps} steps of batch 128 in {dt:.1f} s -> {steps / dt:.2f} steps/s, "
        f"{steps * 128 / dt:.0f} pairs/s (includes snapshotting and per-epoch checkpoints)")
  print(f"trajectory: {len(store.epochs)} snapshots, {per_traj / 2**20:.1f} MiB; read one "
        f"whole trajectory from the store: {read * 1e3:.1f} ms (best of 5)")


def _context(cfg, workdir: str, seed: int) -> RunContext:
  config = ml_collections.ConfigDict(dict(seed=seed, log_every=10**9, checkpoint_every=10**9,
                                          experts=cfg))
  return RunContext.standalone(config, workdir, {"experts": jax.random.key(seed)})


if __name__ == "__main__":
  main()
