"""benchmarks/grouped_conv.py runs at its tiny setting and prints every figure."""

import importlib.util
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_grouped_conv_benchmark_tiny(capsys):
  spec = importlib.util.spec_from_file_location(
      "grouped_conv", os.path.join(ROOT, "benchmarks", "grouped_conv.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  mod.main(["--tiny"])
  out = capsys.readouterr().out
  for name in ("jdd", "torch"):
    rows = re.findall(rf"^  {name} +fwd +[\d.]+ \( *[\d.]+\)  grad .*  second .*$", out, re.M)
    assert len(rows) == len(mod.TINY), out
  assert len(re.findall(r"CPU jdd / torch: fwd [\d.]+  grad [\d.]+  second [\d.]+", out)) == 2
