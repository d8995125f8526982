"""Orbax behind a small interface: one checkpoint directory per stage, resume by default.

A checkpoint present in `workdir/checkpoints/<stage>` means "resume from it". Orbax commits a
step by renaming a finished temporary directory, so a kill during a save leaves the previous
step intact. Small JSON files (stage markers, manifests) go through `atomic_write_*`, which
write a temporary file and `os.replace` it into place.

Faults lose nothing:

* Each committed step gets `jdd_sha256.json` (every file's size and sha256) beside Orbax's
  files. Orbax itself does not notice flipped bytes in its compressed chunks (they restore as
  garbage), so `restore_or` checks the table first. A damaged or unreadable newest step is
  moved to `checkpoints/.damaged/<stage>/` and the run resumes from the one before it (two
  are kept), saying so; when none can be restored, `CheckpointError` names every step and
  what is wrong with it. A step saved before the table was written (a kill in between) is
  trusted to Orbax's own reading.
* A full disk during a save (ENOSPC, which Orbax reports inside a ValueError after logging
  its own tracebacks) removes the half-written step and raises `jdd.errors.DiskFull`, which
  says that the previous step is intact; Orbax's log lines of that failure are dropped.

jax and Orbax are imported when a checkpoint is first touched, so that `jdd.export` (which
uses the atomic writes) stays light enough to start in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from jdd.errors import CheckpointError, DiskFull, is_disk_full

DIGEST = "jdd_sha256.json"


def _ocp():
  import orbax.checkpoint as ocp
  return ocp


class StageCheckpointer:
  """Saves and restores the full state of one stage (step, optimiser, learned tensors)."""

  def __init__(self, workdir: str, stage: str, max_to_keep: int = 2):
    self.stage = stage
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints", stage))
    self._max_to_keep = max_to_keep
    self._manager = self._open()

  def _open(self):
    ocp = _ocp()
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True))

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def latest_step(self) -> int | None:
    """The newest step whose files match their table (or that has none)."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      if verify_files(self._step_dir(step)) is None:
        return int(step)
    return None

  def restore_or(self, state: Any) -> tuple[Any, int]:
    """Returns (restored state, step) from the newest usable checkpoint, else (state, 0)."""
    import jax
    ocp = _ocp()
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return state, 0
    abstract = jax.tree.map(_abstract, state)
    failures = []
    for step in steps:
      problem = verify_files(self._step_dir(step))
      if problem is None:
        try:
          with _orbax_log_held(keep=lambda: False):
            restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # Orbax/TensorStore raise many kinds for unreadable files
          problem = f"Orbax cannot read it ({_first_line(e)})"
      if problem is not None:
        failures.append((step, problem))
        continue
      if failures:
        self._set_aside(failures, step)
      # Put each leaf back where the template had it (sharding/device), keeping dtypes.
      return jax.tree.map(_like, restored, state), int(step)
    listing = "\n".join(f"  - {self._step_dir(s)}: {p}" for s, p in failures)
    raise CheckpointError(
        f"no checkpoint of stage {self.stage!r} can be restored:\n{listing}\n"
        "If the config changed since they were written (another ipc, architecture, image "
        "size...), rerun with the config that wrote them or use a new --workdir; if they are "
        f"damaged, delete {self.directory} and this stage starts over.")

  def _set_aside(self, failures: list, good: int) -> None:
    """Moves the damaged steps out of Orbax's sight (kept for inspection) and says so."""
    self._manager.close()
    aside = os.path.join(os.path.dirname(self.directory), ".damaged", self.stage)
    os.makedirs(aside, exist_ok=True)
    for step, problem in failures:
      target = os.path.join(aside, str(step))
      n = 1
      while os.path.exists(target):
        target, n = os.path.join(aside, f"{step}.{n}"), n + 1
      os.rename(self._step_dir(step), target)
      print(f"[{self.stage}] checkpoint step {step} is unusable ({problem}); moved to "
            f"{target}", flush=True)
    print(f"[{self.stage}] falling back to the previous complete checkpoint, step {good}",
          flush=True)
    self._manager = self._open()

  def save(self, step: int, state: Any) -> None:
    ocp = _ocp()
    previous = self._manager.latest_step()
    disk_full = []
    try:
      with _orbax_log_held(keep=lambda: not disk_full):
        try:
          self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
          self._manager.wait_until_finished()
        except Exception as e:
          if is_disk_full(e):
            disk_full.append(e)
          raise
    except Exception as e:
      if not disk_full:
        raise
      for tmp in glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")):
        shutil.rmtree(tmp, ignore_errors=True)
      kept = (f"the previous checkpoint (step {previous}) is intact and the run resumes from it"
              if previous is not None else "no earlier checkpoint of this stage exists, so the "
              "stage starts over")
      raise DiskFull(f"disk full while saving checkpoint step {step} of stage {self.stage!r} "
                     f"in {self.directory}; the half-written step was removed and {kept}. "
                     "Free space on that disk and rerun the same command.",
                     self._step_dir(step)) from e
    write_digest(self._step_dir(step))

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


@contextlib.contextmanager
def _orbax_log_held(keep):
  """Holds back the log records of Orbax (absl's logger) during the block and replays them
  afterwards unless `keep()` says no: a failure jdd explains in one message does not need
  Orbax's tracebacks above it."""
  logger = logging.getLogger("absl")
  held = []

  class _Hold(logging.Filter):
    def filter(self, record):
      held.append(record)
      return False

  hold = _Hold()
  logger.addFilter(hold)
  try:
    yield
  finally:
    logger.removeFilter(hold)
    if keep():
      for record in held:
        logger.handle(record)


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _file_table(root: str) -> dict[str, dict]:
  table = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      rel = os.path.relpath(path, root)
      if rel != DIGEST:
        table[rel] = {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
  return dict(sorted(table.items()))


def write_digest(step_dir: str) -> None:
  """Records every file of a committed step (size, sha256) in `step_dir/jdd_sha256.json`."""
  atomic_write_json(os.path.join(step_dir, DIGEST), _file_table(step_dir))


def verify_files(step_dir: str) -> str | None:
  """None when the step's files match its table (or it has none); else what is wrong."""
  path = os.path.join(step_dir, DIGEST)
  if not os.path.exists(path):
    return None
  try:
    expected = read_json(path)
  except (OSError, ValueError) as e:
    return f"its file table {path} is unreadable ({e})"
  for rel, entry in expected.items():
    full = os.path.join(step_dir, rel)
    if not os.path.isfile(full):
      return f"{full} is missing"
    if os.path.getsize(full) != entry["bytes"]:
      return f"{full} has {os.path.getsize(full)} bytes, {entry['bytes']} were written"
    if sha256_file(full) != entry["sha256"]:
      return f"{full} does not match its sha256 (damaged)"
  return None


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      h.update(block)
  return h.hexdigest()


def _abstract(x):
  import jax
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  if isinstance(x, np.ndarray):
    return jax.ShapeDtypeStruct(x.shape, x.dtype)
  return x


def _like(restored, template):
  import jax
  if isinstance(template, jax.Array):
    return jax.device_put(restored, template.sharding)
  if isinstance(template, np.ndarray):
    return np.asarray(restored)
  return restored


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `path` whole or not at all; on ENOSPC raises `DiskFull` (the old file stays)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.unlink(tmp)
    if isinstance(e, OSError) and not isinstance(e, DiskFull) and is_disk_full(e):
      raise DiskFull(f"disk full while writing {path}; its previous version (if any) is "
                     "intact. Free space on that disk and rerun the same command.", path) from e
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
