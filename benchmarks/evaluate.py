"""Student-training throughput of jdd's classification evaluation beside an equivalent PyTorch loop.

    python benchmarks/evaluate.py [--steps 200] [--repeats 3]

The setting of the Fashion-MNIST configs: a ConvNet-3 (width 32, BatchNorm, average pooling)
student on 100 real Fashion-MNIST images (IPC 10), batch 50, FKD labels stored per (epoch,
batch) (random logits here: their values do not change the cost), RandomCrop(pad 4) + flip +
Mixup 0.8 re-derived per batch, KL at T = 30, AdamW with cosine. Prints images per second
(wall and per CPU second) for

  jdd        `jdd.evaluation.classification.Trainer.run_steps` as the evaluation runs it on
             this backend (`evaluate.steps_program` 'auto': one jitted call per step on the
             CPU, one `lax.scan` program per stretch elsewhere), batches gathered on the device;
  jdd/scan   the `lax.scan` program, when 'auto' does not already choose it (on the CPU: to
             show why it does not: XLA:CPU runs convolution gradients inside a while loop
             30-100x slower);
  jdd/step   one call per step, when 'auto' does not already choose it;
  jdd/vmap3  three seeds side by side under `vmap`, one call per step, per image;
  torch      the same student, augmentation, loss and optimiser written in plain PyTorch
             (a per-step Python loop, as the references' validate scripts are),

and the ratio jdd / torch. Each figure is the best of `--repeats` timed runs after a warm-up
(compilation excluded). CPU seconds are this process's user + system time.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jdd import xla_setup  # noqa: E402

xla_setup.apply()   # jdd's XLA flags, before JAX starts a backend
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

BATCH, N, CLASSES, T = 50, 100, 10, 30.0
AUG = dict(crop="pad_crop", crop_padding=4, flip=True, mix="mixup", mix_alpha=0.8)


def _images():
  from jdd.configs.classification import dataset_config
  from jdd.data import load_classification
  data = load_classification(dataset_config(name="fashion_mnist", val_size=5000))
  idx = np.concatenate([np.flatnonzero(data.train.labels == c)[:N // CLASSES]
                        for c in range(CLASSES)])
  return data, data.train.images[idx], data.train.labels[idx]


def _timed(fn, repeats: int) -> tuple[float, float]:
  best_wall, best_cpu = float("inf"), float("inf")
  for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    fn()
    best_wall = min(best_wall, time.perf_counter() - t)
    best_cpu = min(best_cpu, time.process_time() - c)
  return best_wall, best_cpu


def _jdd_trainer(data, steps):
  from jdd.evaluation import classification as evaluation
  from jdd.labels import fkd
  from jdd.labels.source import LabelSource
  ecfg = ml_collections.ConfigDict(dict(
      student={"arch": "convnet", "kwargs": {"width": 32, "depth": 3}}, epochs=steps // 2,
      batch_size=BATCH, optimizer="adamw", lr=1e-3, momentum=0.9, weight_decay=0.01,
      warmup_epochs=0, lr_per_epoch=True, temperature=T, t_squared=False,
      eval_every=steps // 2))
  plan = evaluation.make_plan(ecfg, N, N)
  soft = np.random.default_rng(0).normal(size=(plan.epochs, 2, BATCH, CLASSES)).astype(np.float16)
  aug = functools.partial(fkd.augmented_batch, cfg=ml_collections.ConfigDict(AUG),
                          mean=data.mean, std=data.std)
  aug_key = jax.random.key(7)
  source = LabelSource(
      "stored", lambda o, b: (aug(aug_key, b["epoch"], b["k"], b["images"]),
                              b["teacher_logits"]),
      host_fields=lambda e, k, idx: {"teacher_logits": soft[e, k]})
  return evaluation.Trainer(source=source, data=data, ecfg=ecfg, plan=plan)


def bench_jdd(data, images, steps, repeats):
  from jdd import models, training
  from jdd.evaluation import classification as evaluation
  trainer = _jdd_trainer(data, steps)
  variables = models.init_variables(trainer.model, jax.random.key(0), data.image_shape)
  state0 = training.init_state(variables, trainer.optimizer)
  host = trainer._host_batches(trainer.source, jax.random.key(1), 0, steps, N)
  x = jnp.asarray(images)
  out, auto = {}, trainer.scan
  for name, scan in (("jdd", auto), ("jdd/scan", True), ("jdd/step", False)):
    if name != "jdd" and scan == auto:
      continue                       # the same path as the "jdd" row

    def run(scan=scan):
      trainer.scan = scan
      state, loss = trainer.run_steps(state0, x, *host, None, jax.random.key(2))
      jax.block_until_ready((state, loss))

    run()
    out[name] = _timed(run, repeats)
  trainer.scan = auto

  seeds = jax.vmap(lambda k: training.init_state(
      models.init_variables(trainer.model, k, data.image_shape), trainer.optimizer))(
          jax.random.split(jax.random.key(0), 3))
  one3 = jax.jit(jax.vmap(functools.partial(evaluation._one_step, step=trainer.step),
                          in_axes=(0, None, None, None, None, None, None, None, 0)))
  keys = jax.random.split(jax.random.key(2), 3)
  idx, epochs, ks, gs, fields = host

  def three():
    s = seeds
    for j in range(steps):
      s, _ = one3(s, x, idx[j], epochs[j], ks[j], gs[j], {n: v[j] for n, v in fields.items()},
                  None, keys)
    jax.block_until_ready(s)

  three()
  v = _timed(three, repeats)
  out["jdd/vmap3"] = (v[0] / 3, v[1] / 3)
  return out


def bench_torch(images, steps, repeats):
  import torch
  from torch import nn
  import torch.nn.functional as F

  torch.manual_seed(0)

  def block(cin, pad):
    return [nn.Conv2d(cin, 32, 3, padding=pad), nn.BatchNorm2d(32), nn.ReLU(), nn.AvgPool2d(2)]

  net = nn.Sequential(*block(1, 3), *block(32, 1), *block(32, 1), nn.Flatten(),
                      nn.Linear(32 * 4 * 4, CLASSES))
  decay = [p for p in net.parameters() if p.ndim > 1]
  other = [p for p in net.parameters() if p.ndim <= 1]
  x_all = (torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2) / 255 - 0.286) / 0.353
  soft = torch.randn(steps, BATCH, CLASSES)
  gen = torch.Generator().manual_seed(0)

  def run():
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": other, "weight_decay": 0.0}], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    net.train()
    for i in range(steps):
      idx = torch.randperm(N, generator=gen)[:BATCH]
      x = F.pad(x_all[idx], (4, 4, 4, 4))
      off = torch.randint(0, 9, (BATCH, 2), generator=gen)
      x = torch.stack([x[j, :, a:a + 28, b:b + 28] for j, (a, b) in enumerate(off.tolist())])
      flip = torch.rand(BATCH, generator=gen) < 0.5
      x = torch.where(flip[:, None, None, None], x.flip(3), x)
      lam = float(np.random.default_rng(i).beta(0.8, 0.8))
      perm = torch.randperm(BATCH, generator=gen)
      x = lam * x + (1 - lam) * x[perm]
      log_s = F.log_softmax(net(x) / T, 1)
      loss = F.kl_div(log_s, F.softmax(soft[i] / T, 1), reduction="batchmean")
      opt.zero_grad()
      loss.backward()
      opt.step()
      sched.step()

  run()
  return {"torch": _timed(run, repeats), "torch_threads": torch.get_num_threads()}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)
  data, images, _ = _images()
  out = bench_jdd(data, images, args.steps, args.repeats)
  try:
    out.update(bench_torch(images, args.steps, args.repeats))
  except ImportError:
    print("torch is not installed: jdd's figures only")
  imgs = args.steps * BATCH
  print(f"student training, ConvNet-3 w32, Fashion-MNIST IPC 10, batch {BATCH}, FKD labels, "
        f"{args.steps} steps, best of {args.repeats}; jax {jax.__version__}, "
        f"{jax.devices()[0].platform}")
  for name in ("jdd", "jdd/scan", "jdd/step", "jdd/vmap3", "torch"):
    if name in out:
      wall, cpu = out[name]
      print(f"{name:10s} {imgs / wall:9.0f} images/s  {imgs / max(cpu, 1e-9):9.0f} images per "
            f"CPU second")
  if "torch" in out:
    print(f"ratio jdd / torch: {out['torch'][0] / out['jdd'][0]:.2f}x (wall), "
          f"{out['torch'][1] / out['jdd'][1]:.2f}x (CPU); torch threads "
          f"{out['torch_threads']}")
  return out


if __name__ == "__main__":
  main()
