"""Convolution gradients alone vs inside `lax.scan`: JAX's default rules vs `jdd.models.conv`.

    nice -n 10 python benchmarks/loop_conv.py [--steps 20] [--only a,b,c]

XLA:CPU runs the convolutions of JAX's default conv transposes on a slow generic emitter when
they sit inside a while loop (module docstring of `jdd/models/conv.py`). For each workload this
prints ms per step (wall, and CPU ms per step of this process) for

  alone  one jitted call per step, `--steps` calls;
  scan   one jitted `lax.scan` of `--steps` steps (each step feeds the next),

with the default `lax.conv_general_dilated` gradients and with `jdd.models.conv`, plus the
convolution dimension labels of the scan's optimised HLO. Workloads:

  a  3x3 conv, x (50, 28, 28, 32), w (3, 3, 32, 32): gradient of sum(y^2) w.r.t. x and w;
  b  ConvNet-3 width-32 (BatchNorm, 28x28x1 inputs, batch 50) SGD step on cross-entropy;
  c  NFNet-style grouped 3x3 conv, 128 channels in groups of 64, x (4, 14, 14, 128).

Compilation is excluded (programs are compiled before timing); each figure is one timed run.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jdd import xla_setup  # noqa: E402

xla_setup.apply()   # jdd's XLA flags, before JAX starts a backend
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from jdd.models import conv as loop_conv  # noqa: E402
from jdd.models.bn import BatchNorm  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")
CONVS = {"default": lax.conv_general_dilated, "jdd": loop_conv.conv_general_dilated}


def conv_workload(conv, x_shape, w_shape, groups):
  """(step, carry): one gradient step of sum(conv(x, w)^2) on both operands."""
  def loss(x, w):
    y = conv(x, w, (1, 1), "SAME", dimension_numbers=DN, feature_group_count=groups)
    return jnp.sum(y * y)

  def step(carry):
    x, w = carry
    gx, gw = jax.grad(loss, (0, 1))(x, w)
    return x - 1e-6 * gx, w - 1e-6 * gw

  kx, kw = jax.random.split(jax.random.key(0))
  return step, (jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape) * 0.1)


class Student(nn.Module):
  """ConvNet-3 as `jdd.models.convnet.ConvNet` builds it (BatchNorm), with a chosen conv."""

  conv: object
  width: int = 32

  @nn.compact
  def __call__(self, x, train: bool):
    for d in range(3):
      pad = 3 if d == 0 else 1
      x = nn.Conv(self.width, (3, 3), padding=((pad, pad), (pad, pad)),
                  conv_general_dilated=self.conv, name=f"conv{d}")(x)
      x = nn.relu(BatchNorm(name=f"norm{d}")(x, train))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    return nn.Dense(10, name="fc")(x.reshape(x.shape[0], -1))


def student_workload(conv):
  model = Student(conv)
  images = jax.random.normal(jax.random.key(1), (50, 28, 28, 1))
  labels = jax.random.randint(jax.random.key(2), (50,), 0, 10)
  variables = model.init(jax.random.key(0), images, train=False)

  def step(carry):
    params, stats = carry

    def loss(params):
      logits, new = model.apply({"params": params, "batch_stats": stats}, images, train=True,
                                mutable=["batch_stats"])
      logp = jax.nn.log_softmax(logits)
      return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1)), new["batch_stats"]

    grads, stats = jax.grad(loss, has_aux=True)(params)
    return jax.tree.map(lambda p, g: p - 0.01 * g, params, grads), stats

  return step, (variables["params"], variables["batch_stats"])


WORKLOADS = {
    "a": ("3x3 conv 50x28x28x32 -> 32", lambda c: conv_workload(c, (50, 28, 28, 32),
                                                                 (3, 3, 32, 32), 1)),
    "b": ("ConvNet-3 w32 step, 28px, batch 50", student_workload),
    "c": ("grouped 3x3 conv 4x14x14x128, group 64",
          lambda c: conv_workload(c, (4, 14, 14, 128), (3, 3, 64, 128), 2)),
}


def conv_labels(hlo: str) -> list[str]:
  return sorted(set(re.findall(r"convolution\(.*?dim_labels=(\S+?),", hlo)))


def _timed(fn) -> tuple[float, float]:
  t, c = time.perf_counter(), time.process_time()
  jax.block_until_ready(fn())
  return time.perf_counter() - t, time.process_time() - c


def measure(step, carry, steps: int) -> dict:
  one = jax.jit(step)
  scan = jax.jit(lambda c: lax.scan(lambda c, _: (step(c), None), c, None, length=steps)[0])
  jax.block_until_ready(one(carry))
  compiled = scan.lower(carry).compile()

  def alone():
    c = carry
    for _ in range(steps):
      c = one(c)
    return c

  wall_a, cpu_a = _timed(alone)
  wall_s, cpu_s = _timed(lambda: compiled(carry))
  ms = 1e3 / steps
  return dict(alone=(wall_a * ms, cpu_a * ms), scan=(wall_s * ms, cpu_s * ms),
              labels=conv_labels(compiled.as_text()))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--only", default="a,b,c", help="comma-separated workloads (a, b, c)")
  args = ap.parse_args(argv)
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {args.steps} steps; "
        "ms per step, wall (CPU)")
  for key in args.only.split(","):
    title, build = WORKLOADS[key]
    print(f"({key}) {title}")
    for name, conv in CONVS.items():
      r = measure(*build(conv), args.steps)
      print(f"  {name:8s} alone {r['alone'][0]:9.1f} ({r['alone'][1]:9.1f})   "
            f"scan {r['scan'][0]:9.1f} ({r['scan'][1]:9.1f})   "
            f"scan/alone {r['scan'][0] / r['alone'][0]:6.2f}   convs in scan: "
            f"{' '.join(r['labels'])}", flush=True)


if __name__ == "__main__":
  main()
