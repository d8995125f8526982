"""Times each teacher's forward and recover-loss input gradient in jdd and in PyTorch.

    python benchmarks/teachers.py [--archs resnet18,mobilenet_v2] [--iters 3] \
        [--resolutions cifar,imagenet] [--batch-cifar 8] [--batch-imagenet 2]

For every registered arch with BatchNorm (or `--archs`) and each resolution:

  cifar     32x32, 100 classes, the arch's CIFAR layout (`stem='cifar'` / `variant='cifar'`),
            against the torch CIFAR network: torchvision's ResNet with SRe2L's 3x3 stem and no
            max-pool, otherwise the kuangliu/UFC definitions rewritten in plain torch in
            tests/test_parity_*.py (imported from there, so there is one copy of each);
  imagenet  224x224, 1000 classes, the torchvision layout, against the torchvision network.

Two quantities, both with the teacher in eval mode as recover runs it:
  fwd   logits (jdd: jitted apply; torch: `no_grad`);
  grad  d/dx [CE + 0.01 * BN-statistics loss (first BN x10)], the SRe2L recover objective
        (jdd: jitted `jax.grad`, as `jdd.methods.sre2l` computes it; torch: forward hooks on
        every BatchNorm2d, as SRe2L's BNFeatureHook, then `backward`).
Seconds are the mean of `--iters` calls after one warm-up call (jdd's warm-up is compilation,
reported apart). ratio = jdd / torch: below 1, jdd is faster. Random weights: speed only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # tests/: the torch reference networks

from jdd import models  # noqa: E402
from jdd.configs.teacher_recipes import cifar_kwargs  # noqa: E402
from jdd.models import ordered_bn_stats  # noqa: E402
from jdd.objectives import bn_statistics_loss  # noqa: E402

RESOLUTIONS = {"cifar": (32, 100), "imagenet": (224, 1000)}
TORCHVISION = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2",
               "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "densenet121", "efficientnet_b0")


# --------------------------------------------------------------------------- torch networks


def _torch_convnet(num_classes, width=128, depth=3, image_size=32):
  from torch import nn
  layers, c, s = [], 3, image_size
  for _ in range(depth):
    layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
               nn.AvgPool2d(2, 2)]
    c, s = width, s // 2
  return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * s * s, num_classes))


def torch_model(arch: str, resolution: str, num_classes: int):
  """The torch network jdd's `arch` reproduces at `resolution`, or None when there is none."""
  import torchvision
  from torch import nn
  if resolution == "imagenet":
    if arch not in TORCHVISION:
      return None
    return getattr(torchvision.models, arch)(num_classes=num_classes)
  if arch.startswith("resnet"):
    m = getattr(torchvision.models, arch)(num_classes=num_classes)
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m
  if arch == "convnet":
    return _torch_convnet(num_classes)
  try:
    if arch in ("mobilenet_v2", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_g2"):
      import test_parity_mobile as ref
      if arch == "mobilenet_v2":
        return ref.TorchCifarMobileNetV2(num_classes)
      if arch == "shufflenet_g2":
        return ref.TorchShuffleNetG2(num_classes)
      return ref.TorchCifarShuffleNetV2(0.5 if arch.endswith("0_5") else 1.0, num_classes)
    if arch in ("densenet121", "efficientnet_b0"):
      import test_parity_dense_eff as ref
      if arch == "densenet121":
        return ref.KLDenseNet((6, 12, 24, 16), 32, num_classes)
      return ref.UFCEfficientNetB0(num_classes)
  except (ImportError, AttributeError) as e:
    print(f"  [{arch}] no torch CIFAR reference: {e}", file=sys.stderr)
  return None


def jdd_kwargs(arch: str, resolution: str) -> dict:
  if resolution == "imagenet":
    return {}
  return cifar_kwargs(arch)


# --------------------------------------------------------------------------- timing


def _time(fn, iters):
  t = time.perf_counter()
  fn()
  first = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(iters):
    fn()
  return (time.perf_counter() - t) / iters, first


def bench_jdd(arch, resolution, batch, iters):
  size, k = RESOLUTIONS[resolution]
  model = models.build_model(arch, k, **jdd_kwargs(arch, resolution))
  variables = models.init_variables(model, jax.random.key(0), (size, size, 3))
  x = jax.random.normal(jax.random.key(1), (batch, size, size, 3))
  y = jnp.arange(batch, dtype=jnp.int32) % k

  fwd = jax.jit(lambda v, a: model.apply(v, a, train=False))

  def objective(a, v):
    logits, col = model.apply(v, a, train=False, mutable=["bn_stats"])
    ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
    return ce + 0.01 * bn_statistics_loss(ordered_bn_stats(col["bn_stats"]))

  grad = jax.jit(jax.grad(objective))
  t_fwd, c_fwd = _time(lambda: fwd(variables, x).block_until_ready(), iters)
  t_grad, c_grad = _time(lambda: grad(x, variables).block_until_ready(), iters)
  return {"fwd": t_fwd, "grad": t_grad, "compile": c_fwd + c_grad - t_fwd - t_grad}


def bench_torch(arch, resolution, batch, iters):
  import torch
  import torch.nn.functional as F
  size, k = RESOLUTIONS[resolution]
  model = torch_model(arch, resolution, k)
  if model is None:
    return None
  model.eval()
  x = torch.randn(batch, 3, size, size)
  y = torch.arange(batch) % k
  terms = []

  def hook(module, inputs, _):
    a = inputs[0]
    mean = a.mean([0, 2, 3])
    var = a.permute(1, 0, 2, 3).reshape(a.shape[1], -1).var(1, unbiased=False)
    terms.append(torch.norm(module.running_var - var, 2) + torch.norm(module.running_mean - mean, 2))

  def fwd():
    with torch.no_grad():
      model(x)

  def grad():
    terms.clear()
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.BatchNorm2d)]
    xg = x.clone().requires_grad_(True)
    try:
      logits = model(xg)
    finally:
      for h in handles:
        h.remove()
    bn = 10.0 * terms[0] + sum(terms[1:])
    (F.cross_entropy(logits, y) + 0.01 * bn).backward()
    return xg.grad

  t_fwd, _ = _time(fwd, iters)
  t_grad, _ = _time(grad, iters)
  return {"fwd": t_fwd, "grad": t_grad}


def has_batchnorm(arch: str) -> bool:
  model = models.build_model(arch, 10)
  shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), (32, 32, 3)))
  return bool(shapes.get("batch_stats"))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--archs", default="", help="comma-separated; default: every arch with BN")
  p.add_argument("--resolutions", default="cifar,imagenet")
  p.add_argument("--batch-cifar", type=int, default=8)
  p.add_argument("--batch-imagenet", type=int, default=2)
  p.add_argument("--iters", type=int, default=3)
  p.add_argument("--no-torch", action="store_true")
  args = p.parse_args(argv)
  archs = [a for a in args.archs.split(",") if a] or [a for a in models.REGISTRY
                                                      if has_batchnorm(a)]
  unknown = [a for a in archs if a not in models.REGISTRY]
  if unknown:
    p.error(f"unknown archs {unknown}; registered: {', '.join(models.REGISTRY)}")
  if not args.no_torch:
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs), "
        f"iters {args.iters}", flush=True)
  header = (f"{'arch':<20}{'res':>5}{'batch':>6} | {'fwd jdd s':>10}{'torch s':>10}"
            f"{'ratio':>7} | {'grad jdd s':>11}{'torch s':>10}{'ratio':>7} | {'compile s':>9}")
  rows = []
  for resolution in args.resolutions.split(","):
    size, _ = RESOLUTIONS[resolution]
    batch = args.batch_cifar if resolution == "cifar" else args.batch_imagenet
    for arch in archs:
      if resolution == "imagenet" and arch not in TORCHVISION:
        continue  # CIFAR-only nets (ConvNet, ShuffleNet G2) have no ImageNet layout
      j = bench_jdd(arch, resolution, batch, args.iters)
      t = None if args.no_torch else bench_torch(arch, resolution, batch, args.iters)
      fmt = lambda v: f"{v:.4f}" if v is not None else "n/a"
      ratio = lambda a, b: f"{a / b:.2f}" if b else "n/a"
      row = (f"{arch:<20}{size:>5}{batch:>6} | {fmt(j['fwd']):>10}"
             f"{fmt(t and t['fwd']):>10}{ratio(j['fwd'], t and t['fwd']):>7} | "
             f"{fmt(j['grad']):>11}{fmt(t and t['grad']):>10}"
             f"{ratio(j['grad'], t and t['grad']):>7} | {j['compile']:>9.1f}")
      rows.append(row)
      print(row, flush=True)
  print("\n" + header + "\n" + "-" * len(header) + "\n" + "\n".join(rows))


if __name__ == "__main__":
  main()
