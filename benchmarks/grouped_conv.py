"""One NFNet-L0 convolution in jdd and in torch: forward, gradient, and TESLA's second order.

    PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/grouped_conv.py [--lax] [--steps 3]

For each shape (NFNet-L0's grouped 3x3 convs, 64 channels per group, at the 224-px input's
56 x 56 and 28 x 28 maps, batch 10 as `benchmarks/paper_shapes.py`'s LoRS rows at `--scale
0.25`, and a dense conv beside them) it prints wall and CPU milliseconds per call of

  fwd     y = conv(x, w);
  grad    d/d(x, w) of sum(tanh(y));
  second  d/d(x, w) of <c, d/dw sum(tanh(y))>: the shape of TESLA's second pass (LoRS), where
          the student's weight gradient is differentiated with respect to its input;

for `jdd.models.conv` (what jdd's NFNet uses), optionally plain `lax.conv_general_dilated`
(`--lax`: autodiff's own rules; its second order takes minutes per call on the grouped
shapes), and torch (the test extra; 2 threads, `F.conv2d`, `create_graph=True`), with the CPU
ratio jdd / torch. The figures and why they changed: docs/benchmarks.md ("What changed between
runs C and D"). `--tiny` runs small shapes once (the test suite's check that this runs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jdd import xla_setup  # noqa: E402

xla_setup.apply()   # jdd's XLA flags, before JAX starts a backend
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from jdd.models.conv import conv_general_dilated  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")
# (batch, size, c_in, c_out, stride, groups)
SHAPES = [(10, 56, 128, 128, 1, 2), (10, 56, 128, 128, 2, 2), (10, 28, 256, 256, 1, 4),
          (10, 56, 128, 128, 1, 1)]
TINY = [(2, 12, 16, 16, 1, 2), (2, 12, 16, 16, 1, 1)]


def jax_fns(conv, s: int, g: int) -> dict:
  def y(x, w):
    return conv(x, w, (s, s), "SAME", dimension_numbers=DN, feature_group_count=g)

  def inner(w, x):
    return jnp.sum(jnp.tanh(y(x, w)))

  def second(w, x, c):
    return jnp.sum(jax.grad(inner)(w, x) * c)

  return {"fwd": jax.jit(y),
          "grad": jax.jit(jax.grad(inner, argnums=(0, 1))),
          "second": jax.jit(jax.grad(second, argnums=(0, 1)))}


def timed(call, steps: int) -> tuple[float, float]:
  call()                                   # compile / warm up
  t, c = time.perf_counter(), time.process_time()
  for _ in range(steps):
    call()
  return ((time.perf_counter() - t) / steps * 1e3, (time.process_time() - c) / steps * 1e3)


def run_jax(conv, x, w, c, s, g, steps) -> dict:
  f = jax_fns(conv, s, g)
  args = {"fwd": (x, w), "grad": (w, x), "second": (w, x, c)}
  return {k: timed(lambda k=k: jax.block_until_ready(f[k](*args[k])), steps) for k in f}


def run_torch(x, w, c, s, g, steps) -> dict:
  import torch
  import torch.nn.functional as F
  torch.set_num_threads(2)
  xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
  wt = torch.tensor(np.asarray(w)).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
  ct = torch.tensor(np.asarray(c)).permute(3, 2, 0, 1).contiguous()
  pad = w.shape[0] // 2

  def y():
    return F.conv2d(xt, wt, stride=s, padding=pad, groups=g)

  def fwd():
    with torch.no_grad():
      y()

  def grad():
    torch.autograd.grad(torch.tanh(y()).sum(), [wt, xt])

  def second():
    gw, = torch.autograd.grad(torch.tanh(y()).sum(), wt, create_graph=True)
    torch.autograd.grad((gw * ct).sum(), [wt, xt])

  return {k: timed(f, steps) for k, f in (("fwd", fwd), ("grad", grad), ("second", second))}


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--steps", type=int, default=3, help="timed calls per figure")
  ap.add_argument("--lax", action="store_true", help="also plain lax.conv_general_dilated")
  ap.add_argument("--tiny", action="store_true", help="small shapes, one call (for the test)")
  args = ap.parse_args(argv)
  shapes, steps = (TINY, 1) if args.tiny else (SHAPES, args.steps)
  print(f"{jax.devices()[0].platform}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f}; ms per call, wall (CPU)", flush=True)
  for n, h, cin, cout, s, g in shapes:
    kx, kw, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, h, h, cin))
    w = 0.05 * jax.random.normal(kw, (3, 3, cin // g, cout))
    c = jax.random.normal(kc, w.shape)
    rows = {"jdd": run_jax(conv_general_dilated, x, w, c, s, g, steps)}
    if args.lax:
      rows["lax"] = run_jax(lax.conv_general_dilated, x, w, c, s, g, steps)
    try:
      rows["torch"] = run_torch(x, w, c, s, g, steps)
    except ImportError:
      print("  (torch not installed: pip install -e .[test])")
    print(f"x {tuple(x.shape)}, w {tuple(w.shape)}, stride {s}, {g} group(s)")
    for name, r in rows.items():
      cells = "  ".join(f"{k} {v[0]:9.1f} ({v[1]:9.1f})" for k, v in r.items())
      print(f"  {name:5s} {cells}")
    if "torch" in rows:
      ratios = "  ".join(f"{k} {rows['jdd'][k][1] / max(rows['torch'][k][1], 1e-9):.2f}"
                         for k in rows["jdd"])
      print(f"  CPU jdd / torch: {ratios}", flush=True)


if __name__ == "__main__":
  main()
