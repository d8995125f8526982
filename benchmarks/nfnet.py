"""Times NFNet-L0 (random weights, eval mode): forward and input gradient, jdd vs timm.

    python benchmarks/nfnet.py [--batch 8] [--size 224] [--iters 5] [--threads 2]

The input gradient is that of sum(features * v) for a fixed v, with respect to the pixels: what
distilling images through a frozen encoder costs per step (features are the 2304-d pooled output,
num_classes=0, as the references use it). Prints seconds per call (median of --iters after one
warm-up call; jdd's first call, which compiles, is reported separately) and the ratio timm / jdd.
timm is skipped, with a note, where torch/timm are not installed.
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp


def _median_time(fn, iters):
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def bench_jdd(batch, size, iters):
  from jdd import models
  model = models.build_model("nfnet_l0", 0)
  variables = models.init_variables(model, jax.random.key(0), (size, size, 3))
  x = jax.random.normal(jax.random.key(1), (batch, size, size, 3))
  v = jax.random.normal(jax.random.key(2), (batch, 2304))
  forward = jax.jit(lambda var, a: model.apply(var, a))
  grad = jax.jit(jax.grad(lambda a, var: jnp.sum(model.apply(var, a) * v)))
  out = {}
  for name, fn in (("forward", lambda: forward(variables, x)),
                   ("input grad", lambda: grad(x, variables))):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    out[name] = (_median_time(lambda: jax.block_until_ready(fn()), iters), first)
  return out


def bench_timm(batch, size, iters, threads):
  import timm
  import torch
  torch.set_num_threads(threads)
  model = timm.create_model("nfnet_l0", pretrained=False, num_classes=0).eval()
  g = torch.Generator().manual_seed(0)
  x = torch.randn(batch, 3, size, size, generator=g)
  v = torch.randn(batch, 2304, generator=g)

  def forward():
    with torch.no_grad():
      model(x)

  def grad():
    xg = x.clone().requires_grad_(True)
    (model(xg) * v).sum().backward()
    return xg.grad

  out = {}
  for name, fn in (("forward", forward), ("input grad", grad)):
    fn()
    out[name] = _median_time(fn, iters)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  args = p.parse_args()
  print(f"NFNet-L0, batch {args.batch}, {args.size}x{args.size}, eval mode; jax {jax.__version__} "
        f"on {jax.devices()[0].platform}; load average {os.getloadavg()[0]:.1f}")
  j = bench_jdd(args.batch, args.size, args.iters)
  try:
    t = bench_timm(args.batch, args.size, args.iters, args.threads)
    import timm
    import torch
    print(f"timm {timm.__version__}, torch {torch.__version__}, {args.threads} threads")
  except ImportError as e:
    t = None
    print(f"timm not measured ({e})")
  for name in ("forward", "input grad"):
    s, first = j[name]
    line = f"{name:>10}: jdd {s:.3f} s (first call, with compile, {first:.1f} s)"
    if t is not None:
      line += f"  timm {t[name]:.3f} s  ratio timm/jdd {t[name] / s:.2f}x"
    print(line, flush=True)


if __name__ == "__main__":
  main()
