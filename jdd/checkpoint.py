"""Orbax behind a small interface: one checkpoint directory per stage, resume by default.

A checkpoint present in `workdir/checkpoints/<stage>` means "resume from it". Orbax commits a
step by renaming a finished temporary directory, so a kill during a save leaves the previous
step intact. Small JSON files (stage markers, manifests) go through `atomic_write_*`, which
write a temporary file and `os.replace` it into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class StageCheckpointer:
  """Saves and restores the full state of one stage (step, optimiser, learned tensors)."""

  def __init__(self, workdir: str, stage: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints", stage))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore_or(self, state: Any) -> tuple[Any, int]:
    """Returns (restored state, step) if a checkpoint exists, else (state, 0)."""
    step = self._manager.latest_step()
    if step is None:
      return state, 0
    abstract = jax.tree.map(_abstract, state)
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    # Put each leaf back where the template had it (sharding/device), keeping dtypes.
    restored = jax.tree.map(_like, restored, state)
    return restored, int(step)

  def save(self, step: int, state: Any) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _abstract(x):
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  if isinstance(x, np.ndarray):
    return jax.ShapeDtypeStruct(x.shape, x.dtype)
  return x


def _like(restored, template):
  if isinstance(template, jax.Array):
    return jax.device_put(restored, template.sharding)
  if isinstance(template, np.ndarray):
    return np.asarray(restored)
  return restored


def atomic_write_bytes(path: str, data: bytes) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=json_default)
                            + "\n").encode())


def atomic_save_npy(path: str, array: np.ndarray) -> None:
  import io
  buf = io.BytesIO()
  np.save(buf, np.asarray(array), allow_pickle=False)
  atomic_write_bytes(path, buf.getvalue())


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  if hasattr(o, "to_dict"):
    return o.to_dict()
  raise TypeError(f"not JSON serialisable: {type(o)}")
