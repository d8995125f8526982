"""benchmarks/trajectory_matching.py at a tiny size: one RepBlend iteration (Flickr config with
blending, low-rank S, WBCE, 2 student steps) in jdd exact mode, jdd TESLA mode and the
PyTorch loop on the same weights, data, mini-batches and blending draws. A real parity check:
the trajectory losses must agree, and the outer updates of jdd exact and torch (both through
the whole unroll) must agree to float32 rounding amplified by the outer learning rates."""

import importlib.util
import os
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
  spec = importlib.util.spec_from_file_location(
      "tm_bench", os.path.join(ROOT, "benchmarks", "trajectory_matching.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module   # dataclasses resolve the string annotations through it
  spec.loader.exec_module(module)
  return module


# About 40 s of CPU (three jitted/unrolled variants): `slow` (scripts/test.sh --all).
@pytest.mark.slow
def test_tiny_parity_jdd_exact_tesla_torch():
  tmb = _bench()
  # A one-stage NFNet (timm NfCfg and jdd kwargs alike) keeps the two XLA compiles short.
  encoder = dict(depths=(1,), channels=(8,), stem_chs=8, group_size=8, num_features=16)
  s = tmb.Setting(which="repblend", res=8, pairs=7, syn_steps=2, mini_batch=3, sim_rank=2,
                  text_dim=8, encoder=encoder)
  out = tmb.parity(s)
  print(out)
  # TESLA's theta_N = theta_0 - eta G is the unroll's end point: the same loss value.
  assert out["loss_tesla"] == pytest.approx(out["loss_exact"], rel=1e-5)
  assert out["loss_rel_diff_exact_torch"] < 1e-4
  assert out["loss_rel_diff_exact_torch64"] < 1e-4
  assert out["loss_rel_diff_torch_torch64"] < 1e-5          # the yardstick is float32 rounding
  for name, diff in out["update_rel_diff_exact_torch"].items():
    assert diff < 5e-4, (name, diff)    # every outer gradient: images, texts, lrs, S factors
  assert out["loss_exact"] > 1.0        # a real loss, not a degenerate zero


# LoRS (the whole NFNet trained) in the default suite; RepBlend (frozen backbone, blending)
# under `slow`.
@pytest.mark.parametrize("which", [pytest.param("repblend", marks=pytest.mark.slow), "lors"])
def test_torch_exact_with_recomputed_steps_equals_exact(which):
  """The PyTorch loop's `exact_remat` (each student step re-run in the backward pass, as jdd's
  `distill.remat`) gives the outer update of the plain exact loop: the Hessian terms are kept
  and the dropout masks (active here) are replayed, so the two agree to float32 rounding."""
  import torch
  tmb = _bench()
  encoder = dict(depths=(1,), channels=(8,), stem_chs=8, group_size=8, num_features=16)
  s = tmb.Setting(which=which, res=8, pairs=7, syn_steps=3, mini_batch=3, sim_rank=2,
                  text_dim=8, encoder=encoder, iters=1)
  problem = tmb.build_problem(s)
  assert problem["meta"]["dropout"] > 0
  runs = {}
  for mode in ("exact", "exact_remat"):
    torch.manual_seed(0)
    runs[mode] = tmb.run_torch(problem["arrays"], problem["meta"], iters=1, warmup=0,
                               grad_mode=mode)
  assert runs["exact_remat"]["loss0"] == pytest.approx(runs["exact"]["loss0"], rel=1e-6)
  for name, update in runs["exact"]["update0"].items():
    if name != "sim_left":     # S = diag + left right^T starts with right = 0: no grad yet
      assert abs(update).max() > 0, name
    assert tmb.rel_diff(runs["exact_remat"]["update0"][name], update) < 1e-5, name
  # Another dropout draw changes the update, so the agreement above is not by construction.
  torch.manual_seed(1)
  other = tmb.run_torch(problem["arrays"], problem["meta"], iters=1, warmup=0,
                        grad_mode="exact_remat")
  assert tmb.rel_diff(other["update0"]["images"], runs["exact"]["update0"]["images"]) > 1e-4
