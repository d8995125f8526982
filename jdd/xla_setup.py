"""XLA flags jdd's commands set before JAX starts its backends (CPU only; nothing else changes).

XLA:CPU in jaxlib 0.10 hands convolutions to YNNPACK fusions. On the papers' networks at their
shapes those keep about 1.5 of 2 cores busy, where XLA's own (Eigen) convolutions keep both, so
jdd's commands turn the YNNPACK fusions off with `--xla_cpu_experimental_ynn_fusion_type=` (an
empty list). Measured on 2 idle cores, the input gradient of a 1000-class network in eval mode
at batch 25 and 224 px (`benchmarks/paper_shapes.py`'s recover work), wall seconds, YNNPACK on ->
off (PyTorch 2.14 for scale): ResNet-18 1.98 -> 1.58 (1.68), DenseNet-121 5.70 -> 3.27 (5.48),
MobileNetV2 1.24 -> 0.69 (1.34), ShuffleNetV2 x1.0 0.45 -> 0.31 (0.28); the ConvNet-3 student
step at 28 px is the same either way (`benchmarks/evaluate.py`).

`apply()` adds the flag to `XLA_FLAGS` unless it is there already (yours wins), `JDD_XLA_DEFAULTS=0`
is set, or the installed jaxlib is not the 0.10 series the flag was measured on (XLA refuses
flags it does not know, so an unknown one would stop every command). It must run before the
first JAX computation: `jdd.main`, `jdd.cli`, the tests' conftest and the benchmarks call it at
start-up. A program that imports jdd as a library keeps XLA's defaults unless it calls it.
"""

from __future__ import annotations

import os

YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type="
MEASURED_JAXLIB = "0.10."


def _jaxlib_version() -> str:
  from importlib import metadata
  try:
    return metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return ""


def apply(env: dict | None = None) -> bool:
  """Add jdd's CPU defaults to `env['XLA_FLAGS']` (default `os.environ`); True if it did."""
  env = os.environ if env is None else env
  if env.get("JDD_XLA_DEFAULTS", "1") == "0":
    return False
  flags = env.get("XLA_FLAGS", "")
  if YNN_OFF.rstrip("=") in flags or not _jaxlib_version().startswith(MEASURED_JAXLIB):
    return False
  env["XLA_FLAGS"] = f"{flags} {YNN_OFF}".strip()
  return True
