"""colabs/image_text.ipynb (RepBlend on shapes_captions) runs top to bottom at small scale.

A file of its own so that the suite's workers, which take whole files, can run it beside the
other notebooks (tests/test_colabs.py holds the harness and the format checks).
"""

import math

import pytest

from jdd.evaluation.retrieval import METRICS
from tests.test_colabs import run_at_small_scale


# Minutes on 2 cores; the drivers it calls run end to end in test_image_text_runner.py.
@pytest.mark.slow
def test_image_text_notebook_runs_at_small_scale(tmp_path, monkeypatch):
  ns = run_at_small_scale("image_text", tmp_path, monkeypatch)
  assert set(ns["sets"]) == {"distilled_repblend", "random_10", "random_10_learned_lr"}
  assert [(c["a"], c["b"]) for c in ns["results"]["comparisons"]] == [
      ("distilled_repblend", "random_10"), ("distilled_repblend", "random_10_learned_lr")]
  for r in ns["sets"].values():
    for m in METRICS:
      assert 0.0 <= r["summary"]["test"][m]["mean"] <= 100.0
      assert math.isfinite(r["summary"]["test"][m]["std"])
  assert all(lr > 0 for lr in ns["results"]["distill"]["learned_lrs"].values())
