"""benchmarks/caption_pipeline.py and benchmarks/experts.py at a tiny size, end to end in their
own processes: every phase runs and prints the lines docs/benchmarks.md quotes (images per
second and peak memory per phase, `peak_rss_gb=`; seconds per step for jdd and the torch loop,
their ratio, the store's bytes). The figures themselves are measured at full size by hand."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
  r = subprocess.run([sys.executable, *args], cwd=str(tmp_path), env=env, capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout


# Two processes compiling small programs (about a CPU-minute in all): `slow`.
@pytest.mark.slow
def test_caption_pipeline_benchmark_tiny(tmp_path):
  out = _run([os.path.join(ROOT, "benchmarks", "caption_pipeline.py"), "--images", "10",
              "--size", "40", "--image-size", "32", "--eval-images", "2", "--batch", "8",
              "--encode-batch", "4", "--threads", "2", "--dir", str(tmp_path / "cp")], tmp_path)
  assert "generate JPEGs: 14 images" in out
  # 10 images x 5 captions, batch 8, drop_last: 6 batches of augmented pixels.
  assert "expert input (train transform, one epoch): 48 images" in out
  assert re.search(r"feature encoding \(tiny, \d+-d, memory-mapped\): 10 images", out)
  peak = float(re.search(r"^peak_rss_gb=([0-9.]+)$", out, re.M).group(1))
  assert 0.05 < peak < 4.0
  feats = np.load(tmp_path / "cp" / "work" / "features" / "train.npy")
  assert feats.shape[0] == 10 and np.isfinite(feats).all() and feats.std() > 0
  # A second run reuses the generated JPEGs.
  again = _run([os.path.join(ROOT, "benchmarks", "caption_pipeline.py"), "--images", "10",
                "--size", "40", "--image-size", "32", "--eval-images", "2", "--batch", "8",
                "--encode-batch", "4", "--threads", "1", "--dir", str(tmp_path / "cp")],
               tmp_path)
  assert "JPEGs: reused the 14 images" in again


@pytest.mark.slow
def test_experts_benchmark_tiny(tmp_path):
  pytest.importorskip("torch")
  out = _run([os.path.join(ROOT, "benchmarks", "experts.py"), "--images", "64", "--captions",
              "640", "--feature-dim", "16", "--text-dim", "8", "--steps", "2", "--repeats", "1",
              "--experts", "1,2", "--store-pairs", "640", "--store-epochs", "1",
              "--store-experts", "1"], tmp_path)
  for name in ("jdd \\(1 expert per program\\)", "jdd \\(2 experts per program\\)",
               "torch loop \\(1 expert\\)"):
    assert re.search(name + r": [0-9.]+ s/step \([0-9.]+ CPU s\) -> \d+ s per 3-epoch", out), out
  assert re.search(r"ratio torch / jdd \(2 per program\): [0-9.]+x wall", out)
  assert "RepBlend 40 min, LoRS 70 min per trajectory" in out
  assert re.search(r"store: 1 experts x 1 epochs on 640 pairs .* 2 snapshots", out)
