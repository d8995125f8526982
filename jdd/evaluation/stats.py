"""The statistics behind every comparison jdd prints: mean and spread, the paired difference with
its confidence interval, and the verdict in words.

A distilled set is compared with a random real subset of the same budget, trained the same way.
The evaluation seed is shared (seed k trains both students from the same initialisation and
batch-order key), so the comparison is paired: d_k = acc_distilled(k) - acc_random(k), where
acc_random(k) may itself be the mean over several random-subset draws at seed k. The interval
is Student's t on the d_k:

    mean(d) +- t_{(1 + c) / 2, n - 1} * sd(d) / sqrt(n),   sd with ddof = 1,

which is exact for normally distributed differences and what a reader of a paper table expects.
With one pair there is no spread to estimate and the interval is unbounded. The verdict reads
the interval: above zero "beats", below zero "loses", containing zero "ties".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

VERDICTS = ("beats", "ties", "loses")


def mean_std(values: Sequence[float]) -> dict:
  """Mean and sample standard deviation (ddof = 1; 0 for a single value) of `values`."""
  x = np.asarray(values, np.float64)
  if x.size == 0:
    raise ValueError("mean_std of no values")
  return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
          "n": int(x.size)}


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict:
  """Mean of `values` with its Student-t confidence interval (module docstring)."""
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
  s = mean_std(values)
  n = s["n"]
  if n < 2:
    half = math.inf
  else:
    half = float(scipy_stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * s["std"] / math.sqrt(n)
  return {**s, "ci_low": s["mean"] - half, "ci_high": s["mean"] + half,
          "confidence": confidence}


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
  """a - b pairwise (same seeds), its mean, spread, t interval and the verdict for a vs b."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"paired samples must be two 1-D arrays of one length, got {a.shape} and "
                     f"{b.shape}")
  out = t_interval(a - b, confidence)
  return {**out, "method": "paired t interval over evaluation seeds", "verdict": verdict(out)}


def verdict(interval: dict) -> str:
  """'beats' when the interval lies above zero, 'loses' below zero, else 'ties'."""
  if interval["ci_low"] > 0.0:
    return "beats"
  if interval["ci_high"] < 0.0:
    return "loses"
  return "ties"


def describe(name_a: str, name_b: str, diff: dict, unit: str = " points") -> str:
  """One sentence for the printed summary, e.g. 'the distilled set beats the random subset by
  2.10 points (95% interval 0.80 to 3.40, 3 paired seeds)'."""
  pct = int(round(diff["confidence"] * 100))
  lo, hi = diff["ci_low"], diff["ci_high"]
  interval = (f"{pct}% interval {lo:.2f} to {hi:.2f}" if math.isfinite(lo) else
              "no interval from a single seed")
  word = {"beats": "beats", "ties": "ties with", "loses": "loses to"}[diff["verdict"]]
  return (f"{name_a} {word} {name_b}: difference {diff['mean']:+.2f}{unit} ({interval}, "
          f"{diff['n']} paired seeds)")
