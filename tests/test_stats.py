"""The comparison statistics on cases whose answer is known by hand."""

import math

import numpy as np
import pytest

from jdd.evaluation import stats


def test_paired_interval_by_hand():
  # d = (1, 2, 3): mean 2, sd 1, se 1/sqrt(3); t_{0.975, 2} = 4.302652729...
  diff = stats.paired_difference([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
  half = 4.302652729911275 / math.sqrt(3)
  assert diff["mean"] == pytest.approx(2.0)
  assert diff["std"] == pytest.approx(1.0)
  assert diff["ci_low"] == pytest.approx(2.0 - half, rel=1e-9)
  assert diff["ci_high"] == pytest.approx(2.0 + half, rel=1e-9)
  assert diff["n"] == 3 and diff["verdict"] == "ties"   # 2 - 2.484 < 0


def test_verdicts_and_coverage():
  assert stats.paired_difference([5, 6, 7, 8], [1, 2, 3, 4])["verdict"] == "beats"  # sd 0
  assert stats.paired_difference([1, 2, 3, 4.5], [5, 6, 7, 8])["verdict"] == "loses"
  # A 95% interval covers the true mean difference about 95% of the time.
  rng = np.random.default_rng(0)
  hits = 0
  for _ in range(2000):
    d = rng.normal(1.5, 2.0, size=5)
    iv = stats.t_interval(d)
    hits += iv["ci_low"] <= 1.5 <= iv["ci_high"]
  assert 0.93 < hits / 2000 < 0.97


def test_single_pair_has_no_interval_and_bad_input():
  one = stats.paired_difference([3.0], [1.0])
  assert one["ci_low"] == -math.inf and one["verdict"] == "ties"
  assert "single seed" in stats.describe("a", "b", one)
  with pytest.raises(ValueError, match="one length"):
    stats.paired_difference([1, 2], [1])
  with pytest.raises(ValueError, match="confidence"):
    stats.t_interval([1, 2], confidence=1.5)
  assert "beats" in stats.describe("x", "y", stats.paired_difference([5, 6, 7], [1, 1, 2]))
