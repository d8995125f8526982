"""colabs/quickstart.ipynb (SRe2L and INFER on Fashion-MNIST) runs top to bottom at small scale.

A file of its own so that the suite's workers, which take whole files, can run it beside the
other notebooks (tests/test_colabs.py holds the harness and the format checks).
"""

import math

from tests.test_colabs import run_at_small_scale


def test_quickstart_notebook_runs_at_small_scale(tmp_path, monkeypatch):
  ns = run_at_small_scale("quickstart", tmp_path, monkeypatch)
  assert [row[0] for row in ns["rows"]] == ["sre2l", "infer"]
  for results in (ns["sre2l_results"], ns["infer_results"]):
    for key in ("distilled", "random_subset"):
      assert 0.0 <= results[key]["test_top1_mean"] <= 100.0
      assert math.isfinite(results[key]["test_top1_std"])
