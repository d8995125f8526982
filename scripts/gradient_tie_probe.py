"""Is a train-mode float32 parity gap a jdd error, or a ReLU gate within rounding of its threshold?

The parity tests compare the input gradient of the SRe2L recover loss (train-mode BN) with torch
float64. For some networks jitted jdd float32 lands 1e-3..5e-2 away while torch float32 sits
much closer, or the other way round. This script tells the two explanations apart for one case:

  1. it prints jdd float32 (jitted) and torch float32, each against torch float64;
  2. in float64, it moves the input by `eps * noise` (unit-variance input; float32 rounding of
     the input is ~6e-8, and float32 programs accumulate ~1e-6 relative error in deep layers)
     and prints how far the float64 gradient moves, and how far jdd float32 and torch float32
     are from the float64 gradient *at the moved input*.

A gradient that jumps by a fixed amount between two tiny eps (while moving ~eps elsewhere) is
discontinuous there: a ReLU/ReLU6 gate sits that close to its threshold. If jdd float32 then
matches the float64 gradient at a moved input to ~1e-6, it computed the exact gradient of an
input float32 cannot tell from the test input, and the gap is not a jdd error (docs/teachers.md,
"Parity with PyTorch"). Needs the test extra (torch, torchvision):

  python scripts/gradient_tie_probe.py cifar_mobilenet_v2
  python scripts/gradient_tie_probe.py mobilenet_v2_x0_25
  python scripts/gradient_tie_probe.py small_densenet --seed 25 --eps 1e-7,1e-6,3e-6
  python scripts/gradient_tie_probe.py densenet121_cifar      # minutes (float64 compile)
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jdd import xla_setup  # noqa: E402

xla_setup.apply()   # the XLA flags the tests run with (tests/conftest.py)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from jdd.models import build_model, torch_key_fn  # noqa: E402
from tests.test_parity_dense_eff import KLDenseNet  # noqa: E402
from tests.test_parity_mobile import TorchCifarMobileNetV2, _fit_running_stats  # noqa: E402
from tests.torch_parity import (convert, float64_model, jax_recover_grad_fn,  # noqa: E402
                                jax_recover_terms, parity_inputs, randomise,
                                torch_recover_terms)


def _case(name: str, seed: int):
  """(torch model, jdd model, arch, torch naming, image size, batch), as its parity test."""
  torch.manual_seed(seed)   # the tests' global seed (tests/conftest.py): torch's own layer init
  if name == "cifar_mobilenet_v2":
    tm = _fit_running_stats(randomise(TorchCifarMobileNetV2(10), seed=3), 32, seed=4)
    return tm, build_model("mobilenet_v2", 10, variant="cifar"), "mobilenet_v2", "kuangliu", 32, 2
  if name == "shufflenet_v2_x0_5":
    tm = _fit_running_stats(randomise(torchvision.models.shufflenet_v2_x0_5(num_classes=10),
                                      seed=3), 64, seed=4)
    return tm, build_model("shufflenet_v2_x0_5", 10), "shufflenet_v2_x0_5", "torchvision", 64, 4
  if name == "mobilenet_v2_x0_25":
    tm = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25)
    tm.classifier[0].p = 0.0
    tm = _fit_running_stats(randomise(tm, seed=3), 64, seed=4)
    return (tm, build_model("mobilenet_v2", 10, width_mult=0.25, dropout=0.0), "mobilenet_v2",
            "torchvision", 64, 4)
  if name == "small_densenet":
    cfg = dict(growth_rate=8, block_config=(2, 3, 1, 2))
    tm = randomise(KLDenseNet(cfg["block_config"], 8, 10), seed=0)
    return (tm, build_model("densenet121", 10, variant="cifar", **cfg), "densenet121", "kuangliu",
            32, 4)
  if name == "densenet121_cifar":
    tm = randomise(KLDenseNet((6, 12, 24, 16), 32, 10), seed=0)
    return tm, build_model("densenet121", 10, variant="cifar"), "densenet121", "kuangliu", 32, 4
  if name == "densenet121":
    tm = randomise(torchvision.models.densenet121(num_classes=10), seed=0)
    return tm, build_model("densenet121", 10), "densenet121", "torchvision", 64, 4
  raise SystemExit(f"unknown case {name!r}")


def _rel(a, ref) -> float:
  return float(np.abs(np.asarray(a) - ref).max() / np.abs(ref).max())


def probe(case: str, seed: int = 0, eps=(1e-9, 1e-8, 3e-8, 1e-7, 1e-6), directions: int = 3,
          report=print) -> dict:
  """Runs the probe; returns the relative errors (of the largest entry) it printed.

  Keys: `jdd32`, `torch32`, `jdd64` (each vs torch float64 at the test input) and `moves`, a
  list of dicts (direction, eps, moved = float64 gradient's move, jdd32 / torch32 = each float32
  result vs the float64 gradient at the moved input).
  """
  tm, jm, arch, naming, hw, batch = _case(case, seed)
  variables = convert(tm, jm, (hw, hw, 3), torch_key_fn(arch, naming), arch)
  x, t, xj = parity_inputs(batch, 3, hw, 10)    # check_parity's input and targets
  tj = jnp.asarray(t.numpy())
  t0 = time.time()
  t64 = torch_recover_terms(copy.deepcopy(tm).double(), x.double(), t, True)["grad"]
  t32 = torch_recover_terms(copy.deepcopy(tm), x, t, True)["grad"]
  j32 = jax_recover_terms(jm, variables, xj, tj, True)["grad"]
  out = {"jdd32": _rel(j32, t64), "torch32": _rel(t32, t64), "moves": []}
  report(f"{case} seed {seed}, train mode, vs torch float64: jdd float32 (jit) "
         f"{out['jdd32']:.2e}, torch float32 {out['torch32']:.2e}  ({time.time() - t0:.0f} s)")
  with jax.enable_x64(True):
    grad_fn = jax_recover_grad_fn(*float64_model(jm, variables), tj, train=True)
    grad64 = lambda xx: grad_fn(xx)[0]
    x64 = jnp.asarray(xj, jnp.float64)
    g0 = np.asarray(grad64(x64))
    out["jdd64"] = _rel(g0, t64)
    report(f"jdd float64 vs torch float64: {out['jdd64']:.2e}")
    for d in range(directions):
      noise = np.random.default_rng(d).normal(size=xj.shape)
      report(f"direction {d}:")
      for e in eps:
        ge = np.asarray(grad64(x64 + e * noise))
        m = {"direction": d, "eps": e, "moved": _rel(ge, g0), "jdd32": _rel(j32, ge),
             "torch32": _rel(t32, ge)}
        out["moves"].append(m)
        report(f"  eps {e:8.1e}: float64 gradient moves {m['moved']:.2e}; there jdd float32 "
               f"is {m['jdd32']:.2e} off it, torch float32 {m['torch32']:.2e}")
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("case", choices=["cifar_mobilenet_v2", "shufflenet_v2_x0_5", "mobilenet_v2_x0_25",
                                  "small_densenet",
                                  "densenet121_cifar", "densenet121"])
  p.add_argument("--seed", type=int, default=0, help="torch global seed before building the net")
  p.add_argument("--eps", default="1e-9,1e-8,3e-8,1e-7,1e-6")
  p.add_argument("--directions", type=int, default=3)
  a = p.parse_args(argv)
  probe(a.case, a.seed, [float(e) for e in a.eps.split(",")], a.directions,
        report=lambda line: print(line, flush=True))


if __name__ == "__main__":
  main()
