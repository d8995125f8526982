"""benchmarks/paper_shapes.py at its smallest setting (`--tiny --scale 0.01`: narrow networks at
small sizes, one timed step per row), so that the script, its jdd workloads and its PyTorch
loops cannot rot. The figures mean nothing; the test checks that every row ran on both sides
(a time, a peak memory and a ratio, no error) and that the last line is the worst ratio.

The default suite runs one row of each workload kind (a recover step, a trajectory-matching
iteration, an EDGE step): every row costs an XLA compilation of its own program, and the jdd
side of the ten rows alone took more than 4.5 CPU minutes on the 2-core machine. The `slow`
test (scripts/test.sh --all) runs all ten."""

import importlib.util
import math
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("timm")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "paper_shapes.py")
ROWS = ["sre2l", "infer", "fadrm", "fadrm_plus", "repblend_tesla", "repblend_exact",
        "lors_tesla", "lors_exact", "edge_256", "edge_512"]
QUICK = ["sre2l", "repblend_tesla", "edge_256"]


@pytest.mark.parametrize("rows", [QUICK, pytest.param(ROWS, marks=pytest.mark.slow)],
                         ids=["one_row_per_kind", "every_row"])
def test_rows_run_on_both_sides(tmp_path, rows):
  if importlib.util.find_spec("diffusers") is None:   # the EDGE rows' PyTorch loop
    rows = [r for r in rows if not r.startswith("edge")]
  md = tmp_path / "table.md"
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(
      [sys.executable, SCRIPT, "--tiny", "--scale", "0.01", "--steps", "1",
       "--rows", ",".join(rows), "--markdown", str(md)],
      env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  for row in rows:
    match = re.search(rf"^\[{row}\] .*\n  jdd ([0-9.]+) s .* \| PyTorch ([0-9.]+) s .*"
                      rf"time ratio ([0-9.]+)", out, re.M)
    assert match, f"row {row} missing or failed:\n{out}"
    jdd_s, torch_s, ratio = map(float, match.groups())
    assert jdd_s > 0 and torch_s > 0
    # The ratio is printed to 2 decimals from unrounded times; the times to 3 decimals.
    rounding = ratio * (0.0005 / jdd_s + 0.0005 / torch_s)
    assert abs(ratio - jdd_s / torch_s) <= 0.006 + 1.01 * rounding
  table = md.read_text().splitlines()
  body = [line for line in table if line.startswith("| ") and not line.startswith("| row")]
  assert [line.split(" | ")[0][2:] for line in body] == rows
  last = out.strip().splitlines()[-1]
  assert last.startswith("worst_time_ratio=")
  worst = float(last.split("=", 1)[1])
  assert math.isfinite(worst) and worst > 0
