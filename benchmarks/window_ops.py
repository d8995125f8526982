"""XLA's grouped (depthwise) convolution and max-pool gradient vs `jdd.models.shifted`.

    PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/window_ops.py [--batch 25] [--reps 3]

Why `jdd.models.shifted` exists: on a CPU, the depthwise 3x3 convolutions of MobileNetV2 /
ShuffleNetV2 / EfficientNet-B0 (FADRM+ and INFER teachers) and the gradient of ResNet's stem
max-pool dominate a recover step at ImageNet shapes. For three depthwise layers of MobileNetV2
at 224 px and for ResNet's stem pool this prints CPU seconds (process time, so other jobs on a
shared machine disturb it less than wall time) of the forward, the input gradient and the input
+ kernel gradient, each for XLA's own operation and the shifted form, and the compiled
program's temporary memory (`memory_analysis`), with the largest absolute difference of the two
forwards.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from jax import lax

from jdd.models import shifted


def timed(fn, args, reps):
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  t = time.process_time()
  for _ in range(reps):
    jax.block_until_ready(compiled(*args))
  temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
  return (time.process_time() - t) / reps, temp


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=25)
  p.add_argument("--reps", type=int, default=3)
  args = p.parse_args()
  b = args.batch
  print(f"jax {jax.__version__} on {jax.default_backend()}; batch {b}; CPU s per call "
        f"(temp MiB)")
  for shape, stride in (((b, 112, 112, 96), 2), ((b, 56, 56, 144), 1), ((b, 14, 14, 576), 1)):
    x = jax.random.normal(jax.random.key(0), shape)
    k = jax.random.normal(jax.random.key(1), (3, 3, 1, shape[-1]))
    pad = ((1, 1), (1, 1))
    impls = {"xla": lambda x, k: lax.conv_general_dilated(
                 x, k, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                 feature_group_count=x.shape[-1]),
             "shifted": lambda x, k: shifted.depthwise_conv(x, k, stride, pad)}
    v = jax.random.normal(jax.random.key(2), impls["xla"](x, k).shape)
    for name, f in impls.items():
      loss = lambda x, k, f=f: jnp.sum(jnp.tanh(f(x, k)) * v)
      cells = []
      for label, fn in (("fwd", f), ("dx", jax.grad(loss)), ("dx+dk", jax.grad(loss, (0, 1)))):
        s, temp = timed(fn, (x, k), args.reps)
        cells.append(f"{label} {s:.3f} ({temp:.0f})")
      print(f"depthwise 3x3 {shape} stride {stride} {name:8s}", "  ".join(cells))
    diff = jnp.max(jnp.abs(impls["xla"](x, k) - impls["shifted"](x, k)))
    print(f"  max |xla - shifted| forward {float(diff):.2e}")
  x = jax.random.normal(jax.random.key(3), (b, 112, 112, 64))
  for impl in ("xla", "shifted"):
    pool = lambda x, impl=impl: shifted.max_pool(x, 3, 2, 1, impl=impl)
    v = jax.random.normal(jax.random.key(4), pool(x).shape)
    s_f, t_f = timed(pool, (x,), args.reps)
    s_g, t_g = timed(jax.grad(lambda x: jnp.sum(pool(x) * v)), (x,), args.reps)
    print(f"max-pool 3x3/2 {x.shape} {impl:8s} fwd {s_f:.3f} ({t_f:.0f})  dx {s_g:.3f} "
          f"({t_g:.0f})")


if __name__ == "__main__":
  main()
