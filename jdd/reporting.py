"""Progress lines with rate and ETA, clu metric writers, and image grids of synthetic sets.

Long stages print `[stage] step 120/500 (24%) 35.1 it/s ETA 0:00:11 loss=...` so a user can
tell a healthy run from a stuck one, and the same scalars go to TensorBoard events and a
readable log through clu's writers (no account, no wandb).
"""

from __future__ import annotations

import datetime
import math
import os
import sys
import time
from typing import Mapping

import numpy as np


def quiet_third_party() -> None:
  """Silences other libraries' start-up and probing lines where they start (the command line
  calls this first, before anything imports TensorFlow or XLA):

  * TF_CPP_MIN_LOG_LEVEL=1 (unless the user set it): TensorFlow's CPU-feature and oneDNN
    notices and C++ absl's "log messages before absl::InitializeLog()" are INFO lines of the
    C++ logging of TF and XLA; their warnings and errors still show;
  * tensorflow_datasets' Python warnings below ERROR (its probing of folders that are not a
    prepared dataset: jdd says itself, in one message, where it looked and what to do).

  jdd's own output is printed, never logged, so nothing of it is hidden.
  """
  import logging
  from absl import logging as absl_logging  # first: it makes "absl" an ABSLLogger
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  logger = absl_logging.get_absl_logger()
  if not any(isinstance(f, _QuietTfds) for f in logger.filters):
    logger.addFilter(_QuietTfds())


class _QuietTfds:
  def filter(self, record) -> bool:
    import logging
    return record.levelno >= logging.ERROR or "tensorflow_datasets" not in record.pathname


def create_writer(workdir: str):
  """TensorBoard events plus absl logging under workdir/logs."""
  from clu import metric_writers  # imports TensorFlow: keep it off the module import path.
  _hide_gpus_from_tensorflow()
  return metric_writers.create_default_writer(os.path.join(workdir, "logs"), just_logging=False)


def _hide_gpus_from_tensorflow() -> None:
  """TensorFlow serves data and event files only; it must never take GPU memory from JAX."""
  try:
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
  except (ImportError, RuntimeError):
    pass


class Progress:
  """Prints a progress line every `every` steps (and at the end) with rate and ETA."""

  def __init__(self, stage: str, total: int, start: int = 0, every: int = 50, stream=None):
    self.stage, self.total, self.every = stage, total, max(1, every)
    self.stream = stream or sys.stdout
    self._t0, self._s0 = time.perf_counter(), start

  def __call__(self, step: int, metrics: Mapping[str, float] | None = None) -> None:
    """`step` is the number of steps completed so far."""
    if step % self.every and step != self.total:
      return
    elapsed = time.perf_counter() - self._t0
    done = step - self._s0
    rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
    remaining = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
    eta = (str(datetime.timedelta(seconds=int(remaining))) if math.isfinite(remaining)
           else "?")
    parts = [f"[{self.stage}] step {step}/{self.total} ({100.0 * step / max(self.total, 1):.0f}%)",
             f"{rate:.2f} it/s" if math.isfinite(rate) else "- it/s", f"ETA {eta}"]
    if metrics:
      parts += [f"{k}={_fmt(v)}" for k, v in metrics.items()]
    print(" ".join(parts), file=self.stream, flush=True)


def _fmt(v) -> str:
  v = float(v)
  return f"{v:.4g}"


def image_grid(images_uint8: np.ndarray, nrow: int, pad: int = 2) -> np.ndarray:
  """Tiles (N,H,W,C) uint8 images row-major into one (rows*H, nrow*W, C) picture."""
  n, h, w, c = images_uint8.shape
  rows = -(-n // nrow)
  grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, nrow)
    y, x = pad + r * (h + pad), pad + q * (w + pad)
    grid[y:y + h, x:x + w] = images_uint8[i]
  return grid


def save_png(path: str, image_uint8: np.ndarray) -> None:
  import io
  from PIL import Image
  from jdd.checkpoint import atomic_write_bytes
  img = image_uint8[..., 0] if image_uint8.shape[-1] == 1 else image_uint8
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")
  atomic_write_bytes(path, buf.getvalue())


def check_finite(stage: str, step: int, metrics: Mapping[str, float]) -> None:
  """Stops a run at the first non-finite loss term, naming the step and the term."""
  bad = [k for k, v in metrics.items() if not np.all(np.isfinite(np.asarray(v)))]
  if bad:
    raise FloatingPointError(
        f"[{stage}] non-finite value in {bad} at step {step}: "
        f"{ {k: float(np.asarray(metrics[k]).ravel()[0]) for k in bad} }. "
        "Lower the learning rate or check the inputs; the last checkpoint is intact.")
