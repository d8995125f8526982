"""The streaming caption pipeline at the papers' shapes, with no dataset: speed and peak memory.

    PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/caption_pipeline.py --images 30000 --size 224

Generates `--images` JPEG images of `--size` px (smooth random scenes; quality 90) with five
captions each, in the Karpathy layout the loaders read (`flickr30k_{train,val,test}.json`,
`flickr30k-images/`), under `--dir` (reused when complete). Then, in this process:

1. **expert input**: one epoch of an expert's batches (every caption pair, batch 128,
   drop_last), each read from disk through the references' train transform (RandomResizedCrop,
   flip, RandomAugment) and normalised, prefetched and put on the device, exactly as
   `jdd.stages.expert_loops.pixel_batches` feeds an expert with `experts.augment` (the SGD
   steps themselves are not run: this measures the input side);
2. **feature encoding**: a frozen backbone (`--encoder`: jdd's small NFNet by default, `l0` for
   NFNet-L0; random weights) over every train image at `--image-size`, written into a
   memory-mapped `features/train.npy` (`jdd.data.pipeline.encode_to_file`, what
   `jdd.stages.image_text.image_inputs` runs once per split).

Each phase prints its images per second, wall and CPU seconds and the process's peak resident
memory (VmHWM); the last line is `peak_rss_gb=<float>`. Holding the train images as float32,
as jdd did before the pipeline, would need N x size^2 x 3 x 4 bytes (17.5 GB for Flickr30K).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import time

import jax
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from jdd import models
from jdd.data import pipeline
from jdd.data.captions import load_caption_dataset
from jdd.loop import RunContext
from jdd.models import nfnet
from jdd.models.retrieval import RetrievalModel, feature_encoder
from jdd.stages import expert_loops

CAPTIONS = 5


def peak_rss_gb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 2 ** 20
  raise RuntimeError("no VmHWM in /proc/self/status")


def _picture(path: str, seed: int, size: int) -> None:
  rng = np.random.default_rng(seed)
  a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
  t = np.linspace(0.0, 1.0, size)[:, None, None]
  x = (a * (1 - t) + b * t) * np.ones((1, size, 1)) + rng.normal(0, 12, (size, size, 3))
  img = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(img)
  for _ in range(3):
    x0, y0 = rng.integers(0, size - 8, 2)
    w, h = rng.integers(8, size // 2, 2)
    draw.ellipse((x0, y0, x0 + w, y0 + h), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
  img.save(path, quality=90)


def generate(root: str, images: int, size: int, eval_images: int, threads: int) -> dict:
  """The dataset under `root` (reused when its DONE marker matches)."""
  marker = os.path.join(root, "DONE")
  want = {"images": images, "size": size, "eval_images": eval_images}
  if os.path.exists(marker) and json.load(open(marker)) == want:
    return {"name": "flickr30k", "ann_dir": root, "image_root": root}
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(os.path.join(root, "flickr30k-images"))
  names = {"train": images, "val": eval_images, "test": eval_images}
  jobs = [(split, i) for split, n in names.items() for i in range(n)]
  rel = lambda split, i: f"flickr30k-images/{split}_{i:06d}.jpg"
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    list(pool.map(lambda k: _picture(os.path.join(root, rel(*jobs[k])), k, size),
                  range(len(jobs))))
  train = [{"image": rel("train", i), "caption": f"a scene number {i} caption {c}",
            "image_id": str(i)} for c in range(CAPTIONS) for i in range(images)]
  with open(os.path.join(root, "flickr30k_train.json"), "w") as f:
    json.dump(train, f)
  for split in ("val", "test"):
    with open(os.path.join(root, f"flickr30k_{split}.json"), "w") as f:
      json.dump([{"image": rel(split, i), "caption": [f"{split} {i} {c}" for c in range(CAPTIONS)]}
                 for i in range(eval_images)], f)
  with open(marker, "w") as f:
    json.dump(want, f)
  return {"name": "flickr30k", "ann_dir": root, "image_root": root}


def phase(name: str, count: int, t0: float, c0: float) -> None:
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  print(f"{name}: {count} images in {wall:.1f} s wall ({cpu:.1f} s CPU) -> {count / wall:.1f} "
        f"images/s; peak RSS {peak_rss_gb():.2f} GB", flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--images", type=int, default=30000)
  p.add_argument("--size", type=int, default=224, help="generated JPEG side (px)")
  p.add_argument("--image-size", type=int, default=224, help="pipeline image size (px)")
  p.add_argument("--eval-images", type=int, default=100)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--encode-batch", type=int, default=64)
  p.add_argument("--encoder", choices=("tiny", "l0"), default="tiny")
  p.add_argument("--threads", type=int, default=0, help="decoding threads (0: one per CPU)")
  p.add_argument("--dir", default="/tmp/jdd_caption_pipeline")
  args = p.parse_args()
  threads = args.threads or pipeline.default_threads()
  print(f"device: {jax.devices()[0].platform} x {len(jax.devices())}; {threads} decoding "
        f"threads; {args.images} images x {CAPTIONS} captions at {args.size} px -> "
        f"{args.image_size} px", flush=True)

  t0, c0 = time.perf_counter(), time.process_time()
  root = os.path.join(args.dir, "data")
  reused = os.path.exists(os.path.join(root, "DONE"))
  cfg = generate(root, args.images, args.size, args.eval_images, threads)
  if reused and time.perf_counter() - t0 < 1.0:
    print(f"JPEGs: reused the {args.images + 2 * args.eval_images} images under {root}",
          flush=True)
  else:
    phase("generate JPEGs", args.images + 2 * args.eval_images, t0, c0)

  data = load_caption_dataset({**cfg, "image_size": args.image_size, "threads": threads})
  config = ml_collections.ConfigDict(dict(
      seed=0, log_every=10 ** 9, checkpoint_every=10 ** 9,
      experts=dict(batch_size=args.batch, epochs=1, keep_epochs=1, lr_image=0.1, lr_text=0.1,
                   momentum=0.0, weight_decay=0.0),
      train_transform=dict(ops="lors", num_ops=2, magnitude=5.0, min_scale=0.5, flip=True)))
  ctx = RunContext.standalone(config, os.path.join(args.dir, "work"),
                              {"experts": jax.random.key(0)}, data)
  texts = np.zeros((len(data.train), 8), np.float32)   # the input side only: texts are tiny
  files = data.files("train")
  plan = expert_loops.Plan.create(ctx, None, {}, pipeline.pixel_rows(files), texts,
                                  data.train.image_index, features=False, augment=True)
  t0, c0 = time.perf_counter(), time.process_time()
  checksum = 0.0
  with pipeline.Prefetcher(expert_loops.pixel_batches(plan, plan.expert_key(0)),
                           plan.per_epoch) as ahead:
    for s in range(plan.per_epoch):
      checksum += float(ahead.get(s)["images"][0, 0, 0, 0])
  phase("expert input (train transform, one epoch)", plan.per_epoch * plan.batch, t0, c0)

  kwargs = dict(nfnet.NFNET_TINY) if args.encoder == "tiny" else {}
  backbone = nfnet.NFNet(**kwargs)
  dim = backbone.num_features
  variables = models.init_variables(backbone, jax.random.key(0),
                                    (args.image_size, args.image_size, 3))
  model = RetrievalModel(backbone, dim, train_backbone=False)
  path = os.path.join(args.dir, "work", "features", "train.npy")
  t0, c0 = time.perf_counter(), time.process_time()
  rows = pipeline.encode_to_file(feature_encoder(model, variables), pipeline.pixel_rows(files),
                                 path, batch_size=args.encode_batch)
  phase(f"feature encoding ({args.encoder}, {dim}-d, memory-mapped)", len(rows), t0, c0)
  files.close()
  whole = args.images * args.image_size ** 2 * 3 * 4 / 1e9
  print(f"float32 train images in memory would be {whole:.1f} GB; features on disk "
        f"{os.path.getsize(path) / 1e6:.0f} MB", flush=True)
  print(f"peak_rss_gb={peak_rss_gb():.3f}")


if __name__ == "__main__":
  main()
