"""Faults lose nothing: the workdir lock, damaged checkpoints, a full disk, kills during export."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jdd import checkpoint, errors, export, lock
from jdd.config import load_config, override
from jdd.loop import RunContext, SimulatedInterruption, make_keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
CONFIG = os.path.join(ROOT, "configs", "sre2l_fashion_mnist.py")


# --------------------------------------------------------------------------- the lock
HOLDER = """
import sys, time
from jdd import lock
with lock.hold(sys.argv[1]):
  print("held", flush=True)
  time.sleep(120)
"""


def _holder(workdir):
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, workdir], env=ENV, cwd=ROOT,
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_live_lock_refuses_a_second_run_naming_the_holder(tmp_path):
  workdir = str(tmp_path / "w")
  holder = _holder(workdir)
  try:
    with pytest.raises(errors.WorkdirBusy, match=f"pid {holder.pid} on host"):
      with lock.hold(workdir):
        pass
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "jdd.main", "--config", CONFIG + ":smoke",
                        "--workdir", workdir], env=ENV, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"pid {holder.pid}" in r.stderr and "in use by another jdd run" in r.stderr
    assert "Traceback" not in r.stderr and time.time() - t0 < 60
    assert os.listdir(workdir) == [".lock"]        # the refused run wrote nothing
  finally:
    holder.kill()
    holder.wait()


def test_stale_lock_of_a_dead_process_does_not_block(tmp_path):
  workdir = str(tmp_path / "w")
  holder = _holder(workdir)
  holder.send_signal(signal.SIGKILL)              # dies holding the lock: the file stays
  holder.wait()
  note = json.load(open(lock.lock_path(workdir)))
  assert note["pid"] == holder.pid
  with lock.hold(workdir) as path:                # the kernel released the flock
    assert json.load(open(path))["pid"] == os.getpid()
  # The command line gets past the lock too: here it stops at the missing dataset instead.
  r = subprocess.run([sys.executable, "-m", "jdd.main", "--config", CONFIG + ":smoke",
                      "--config.dataset.name=cifar10",
                      f"--config.dataset.data_dir={tmp_path / 'nowhere'}",
                      "--workdir", workdir], env=ENV, cwd=ROOT, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 2 and "dataset 'cifar10' not found" in r.stderr, r.stderr
  assert "in use" not in r.stderr


def test_a_run_that_wrote_nothing_leaves_no_workdir(tmp_path):
  workdir = str(tmp_path / "fresh")
  with pytest.raises(RuntimeError):
    with lock.hold(workdir):
      raise RuntimeError("stopped before writing")
  assert not os.path.exists(workdir)
  os.makedirs(workdir)                             # a folder the user made stays
  with lock.hold(workdir):
    pass
  assert os.path.isdir(workdir)


# --------------------------------------------------------------------------- one config per workdir
def test_config_differences_names_result_fields_and_ignores_logging_and_paths():
  from jdd.run import config_differences
  before = {"seed": 0, "log_every": 10, "debug": {"interrupt_after": 0},
            "dataset": {"name": "fashion_mnist", "data_dir": "/a"},
            "recover": {"iterations": 1000, "lr": 0.25},
            "distill": {"remat": False, "syn_steps": 8}}
  now = {"seed": 0, "log_every": 50, "debug": {"interrupt_after": 7},
         "dataset": {"name": "fashion_mnist", "data_dir": "/b"},
         "recover": {"iterations": 500, "lr": 0.25, "new_field": 1},
         "distill": {"remat": True, "syn_steps": 8}}     # remat: the same gradient
  assert config_differences(before, now) == [
      "recover.iterations: 1000 -> 500", "recover.new_field: '(absent)' -> 1"]
  assert config_differences(before, before) == []


def test_a_workdir_of_another_config_is_refused_and_kept(tmp_path):
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  args = [sys.executable, "-m", "jdd.main", "--config", CONFIG + ":smoke", "--workdir", workdir]
  # The config.json an earlier run with --config.recover.iterations=7 would have written.
  before = json.loads(override(load_config(CONFIG + ":smoke"),
                               **{"recover.iterations": 7}).to_json_best_effort())
  checkpoint.atomic_write_json(os.path.join(workdir, "config.json"), before)
  r = subprocess.run(args, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stderr
  assert "holds a run of another config" in r.stderr and "Traceback" not in r.stderr
  assert "recover.iterations: 7 -> 20" in r.stderr and "new --workdir" in r.stderr
  assert json.load(open(os.path.join(workdir, "config.json"))) == before   # left as it was
  assert sorted(os.listdir(workdir)) == [".lock", "config.json"]          # nothing else written


# --------------------------------------------------------------------------- checkpoints
def _state(step):
  return {"w": jnp.arange(4000.0) * step, "step": np.asarray(step, np.int32)}


def _saved(workdir, steps=(1, 2)):
  c = checkpoint.StageCheckpointer(workdir, "stage")
  for s in steps:
    c.save(s, _state(s))
  c.close()
  return os.path.join(workdir, "checkpoints", "stage")


def _largest_data_file(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs
           if os.sep + "d" + os.sep in os.path.join(d, f)]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["flipped_byte", "truncated", "truncated_no_table"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys, damage):
  directory = _saved(str(tmp_path))
  path = _largest_data_file(os.path.join(directory, "2"))
  if damage == "flipped_byte":
    # Orbax alone restores this as garbage (values ~1e34), without an error: the table
    # of sha256 is what notices.
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))
  else:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
    if damage == "truncated_no_table":  # a kill between Orbax's commit and the table
      os.unlink(os.path.join(directory, "2", checkpoint.DIGEST))
  c = checkpoint.StageCheckpointer(str(tmp_path), "stage")
  restored, step = c.restore_or(_state(0))
  c.close()
  assert step == 1
  np.testing.assert_array_equal(restored["w"], _state(1)["w"])
  out = capsys.readouterr().out
  assert "checkpoint step 2 is unusable" in out and "previous complete checkpoint, step 1" in out
  assert sorted(os.listdir(directory)) == ["1"]   # the damaged step is set aside, kept
  assert os.listdir(os.path.join(str(tmp_path), "checkpoints", ".damaged", "stage")) == ["2"]


def test_no_usable_checkpoint_names_the_files(tmp_path):
  directory = _saved(str(tmp_path))
  for step in ("1", "2"):
    path = _largest_data_file(os.path.join(directory, step))
    open(path, "wb").write(b"garbage")
  c = checkpoint.StageCheckpointer(str(tmp_path), "stage")
  with pytest.raises(errors.CheckpointError) as e:
    c.restore_or(_state(0))
  c.close()
  for step in ("1", "2"):
    assert os.path.join(directory, step) in str(e.value)
  assert "delete" in str(e.value) and errors.exit_status(e.value) == 1
  assert sorted(os.listdir(directory)) == ["1", "2"]   # nothing moved when nothing works


def test_loop_resumes_bit_identically_past_a_damaged_checkpoint(tmp_path):
  """A run killed after step 7 whose last checkpoint (6) is damaged redoes steps 5..10 from
  checkpoint 4 and ends where an uninterrupted run does."""
  config = ml_collections.ConfigDict({"checkpoint_every": 2, "log_every": 2, "debug": {
      "interrupt_after": 0}, "num_devices": 0, "seed": 0})
  keys = make_keys(0)

  def step_fn(state, batch, rng):
    return {"x": state["x"] * 0.9 + jax.random.normal(rng, (64,)) + batch}, {"loss": 0.0}

  def run(workdir, interrupt=0):
    config.debug.interrupt_after = interrupt
    ctx = RunContext.standalone(config, workdir, keys)
    return ctx.loop("toy", {"x": jnp.zeros(64)}, jax.jit(step_fn), lambda s: jnp.float32(s),
                    10, keys["recover"])

  reference = run(str(tmp_path / "ref"))
  workdir = str(tmp_path / "w")
  with pytest.raises(SimulatedInterruption):
    run(workdir, interrupt=7)
  step_dir = os.path.join(workdir, "checkpoints", "toy", "6")
  path = _largest_data_file(step_dir)
  open(path, "r+b").truncate(3)
  resumed = run(workdir)
  np.testing.assert_array_equal(resumed["x"], reference["x"])


def test_disk_full_during_a_checkpoint_keeps_the_previous(tmp_path, monkeypatch, capsys):
  import orbax.checkpoint as ocp
  directory = _saved(str(tmp_path), steps=(1,))
  real_save = ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    # What Orbax does on ENOSPC: a half-written temporary step, its own ERROR log lines, then
    # a ValueError carrying TensorStore's message.
    tmp = os.path.join(directory, f"{step}.orbax-checkpoint-tmp")
    os.makedirs(tmp)
    open(os.path.join(tmp, "partial"), "wb").write(b"\0" * 100)
    from absl import logging
    logging.error("[process=0] _SignalingThread.run() raised an exception: RESOURCE_EXHAUSTED")
    raise ValueError("RESOURCE_EXHAUSTED: Error writing \"w/0\": Failed to write 4000 bytes: "
                     "No space left on device [os_error_code='28']")

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  c = checkpoint.StageCheckpointer(str(tmp_path), "stage")
  with pytest.raises(errors.DiskFull) as e:
    c.save(2, _state(2))
  assert "step 2" in str(e.value) and "step 1) is intact" in str(e.value)
  assert errors.exit_status(e.value) == 1 and errors.is_disk_full(e.value)
  assert sorted(os.listdir(directory)) == ["1"]           # the partial step is gone
  assert "RESOURCE_EXHAUSTED" not in capsys.readouterr().err
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  restored, step = c.restore_or(_state(0))
  c.close()
  assert step == 1
  np.testing.assert_array_equal(restored["w"], _state(1)["w"])


# --------------------------------------------------------------------------- exports
def _export(workdir, generation, payload=1000):
  rng = np.random.default_rng(generation)
  with export.staged(workdir) as out:
    export.save_npy(out, "images", rng.integers(0, 255, (payload,), np.uint8))
    export.save_npy(out, "labels", np.full((payload // 10,), generation, np.int32))
    export.save_json(out, "annotations/pairs.json", {"generation": generation})
    out.manifest = lambda files: {"generation": generation, "num_files": len(files)}


def test_verify_finds_every_kind_of_damage(tmp_path):
  workdir = str(tmp_path)
  _export(workdir, 1)
  final = export.export_dir(workdir)
  assert export.verify(final) == []
  with open(os.path.join(final, "labels.npy"), "r+b") as f:
    f.seek(200)
    f.write(b"\x7f")
  open(os.path.join(final, "stray.txt"), "w").write("x")
  os.unlink(os.path.join(final, "annotations", "pairs.json"))
  problems = "\n".join(export.verify(final))
  assert "labels.npy" in problems and "stray.txt" in problems and "pairs.json" in problems
  os.unlink(os.path.join(final, export.MANIFEST))
  assert "missing" in export.verify(final)[0]


def test_disk_full_during_export_keeps_the_previous_export(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  _export(workdir, 1)
  final = export.export_dir(workdir)
  before = export.read_manifest(final)
  real_save = np.save

  def full_disk(path, array, **kwargs):
    if str(path).endswith("labels.npy"):
      open(path, "wb").write(b"\x93NUMPY")     # a partial file, then the disk is full
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return real_save(path, array, **kwargs)

  monkeypatch.setattr(np, "save", full_disk)
  with pytest.raises(errors.DiskFull) as e:
    _export(workdir, 2)
  assert "previous export" in str(e.value) and "intact" in str(e.value)
  assert errors.exit_status(e.value) == 1
  assert export.verify(final) == [] and export.read_manifest(final) == before
  assert sorted(os.listdir(workdir)) == ["export"]       # no staging directory left


def test_the_command_line_reports_a_full_disk_in_one_line(capsys):
  with pytest.raises(SystemExit) as e:
    with errors.reported():
      raise errors.DiskFull("disk full while writing W/export.new; the previous export is "
                            "intact", "W/export.new")
  assert e.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith("jdd: error: disk full while writing W/export.new") and \
      len(err.strip().splitlines()) == 1


# A child that exports generation g+1 over generation g and SIGKILLs itself just before the N-th
# call of a C function (open, write, fsync, link, rename, renameat2, unlink, rmdir, ...) made from
# jdd.export, jdd.checkpoint or shutil, or runs to the end when N is 0 and prints how many such
# calls there were. Drawing N uniformly over these calls puts kills between any two file-system
# operations of the export, the ones around the swap included.
KILLER = r"""
import os, signal, sys
import numpy as np
from jdd import export
workdir, target, fallback = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
if fallback:                       # the two-rename path of systems without renameat2
  export._exchange = lambda a, b: False
final = export.export_dir(workdir)
export.recover(final)
generation = export.read_manifest(final)["generation"] if export.is_complete(final) else 0
watch = {export.__file__, export.checkpoint.__file__, __import__("shutil").__file__}
count = [0]

def profile(frame, event, arg):
  if event == "c_call" and frame.f_code.co_filename in watch:
    count[0] += 1
    if count[0] == target:
      os.kill(os.getpid(), signal.SIGKILL)

rng = np.random.default_rng(generation + 1)
sys.setprofile(profile)
with export.staged(workdir) as out:
  export.save_npy(out, "images", rng.integers(0, 255, (200_000,), np.uint8))
  export.save_npy(out, "labels", np.full((1000,), generation + 1, np.int32))
  export.save_json(out, "annotations/pairs.json", {"generation": generation + 1})
  # A stage output, written as jdd's stages write them (a new file replaces the old one, so
  # the previous export's hard link keeps the previous bytes), then linked into the export.
  src = os.path.join(workdir, "source.npy")
  export.checkpoint.atomic_save_npy(src, np.full((5000,), generation + 1, np.int32))
  export.link(out, "soft_labels.npy", src)
  out.manifest = lambda files: {"generation": generation + 1}
sys.setprofile(None)
print(count[0])
"""


def _kill_loop(tmp_path, kills=None):
  """Kills `kills` exports at random C calls (alternating the renameat2 and the two-rename
  swap), or with `kills=None` at every C call of both; returns the number of kills."""
  workdir = str(tmp_path)
  final = export.export_dir(workdir)
  run = lambda target, fallback: subprocess.run(
      [sys.executable, "-c", KILLER, workdir, str(target), "1" if fallback else "0"],
      env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=120)
  events = {}
  for fallback in (False, True, False):   # a first export, then two that replace one
    calibration = run(0, fallback)
    assert calibration.returncode == 0, calibration.stderr
    events[fallback] = int(calibration.stdout)
  if kills is None:
    plan = [(t, f) for f in (False, True) for t in range(1, events[f] + 1)]
  else:
    rng = np.random.default_rng(1234)
    plan = [(int(rng.integers(1, events[bool(i % 2)] + 1)), bool(i % 2)) for i in range(kills)]
  outcomes = set()
  for target, fallback in plan:
    before = export.read_manifest(final)["generation"]
    r = run(target, fallback)
    assert r.returncode == -signal.SIGKILL, (target, fallback, r.returncode, r.stderr)
    export.recover(final)             # what the next run does first
    problems = export.verify(final)
    assert problems == [], f"killed at C call {target} (fallback={fallback}): {problems}"
    after = export.read_manifest(final)["generation"]
    assert after in (before, before + 1)
    outcomes.add(after - before)
    labels = np.load(os.path.join(final, "labels.npy"))
    assert (labels == after).all()    # every file of one generation, never a mix
    assert not os.path.exists(final + ".new") and not os.path.exists(final + ".old")
  if kills is None:
    assert outcomes == {0, 1}         # kills before and after the swap both happened
  return len(plan)


def test_export_killed_at_random_points_is_old_or_new_never_a_mix(tmp_path):
  assert _kill_loop(tmp_path, 4) == 4


@pytest.mark.slow
def test_export_killed_at_every_file_operation(tmp_path):
  """A kill before each of the ~120 file-system calls of an export, on both swap paths."""
  assert _kill_loop(tmp_path) >= 200
