"""The driver end to end at smoke scale: resume equals an uninterrupted run, configs, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jdd import run as run_lib
from jdd.config import load_config, override
from jdd.loop import SimulatedInterruption

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "sre2l_fashion_mnist.py")


def _small():
  c = load_config(CONFIG + ":smoke")
  override(c, **{"evaluate.epochs": 2, "evaluate.eval_every": 1, "evaluate.seeds": 1,
                 "evaluate.baseline": False})
  return c


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  results = run_lib.run(_small(), workdir)
  return workdir, results


def test_end_to_end_outputs(reference_run):
  workdir, results = reference_run
  manifest = json.load(open(os.path.join(workdir, "export", "manifest.json")))
  images = np.load(os.path.join(workdir, "export", "images.npy"))
  soft = np.load(os.path.join(workdir, "export", "soft_labels.npy"))
  assert images.shape == (20, 28, 28, 1) and images.dtype == np.uint8
  assert soft.dtype == np.float16 and soft.shape == (2, 2, 10, 10)
  assert manifest["bytes"]["soft_labels"] == soft.nbytes
  assert manifest["bytes"]["images"] == images.nbytes
  assert manifest["config"]["method"] == "sre2l" and manifest["jdd_version"]
  assert 0.0 <= results["distilled"]["test_top1_mean"] <= 100.0
  assert os.path.exists(os.path.join(workdir, "export", "grid.png"))
  assert json.load(open(os.path.join(workdir, "results.json")))["ipc"] == 2
  # Every class gets exactly ipc images, class-major.
  np.testing.assert_array_equal(np.load(os.path.join(workdir, "export", "labels.npy")),
                                np.repeat(np.arange(10), 2))


def test_resume_after_interruption_is_bit_identical(reference_run, tmp_path):
  ref_dir, _ = reference_run
  workdir = str(tmp_path / "interrupted")
  c = _small()
  override(c, **{"debug.interrupt_after": 25})  # squeeze has 11 steps: stops mid-recover
  with pytest.raises(SimulatedInterruption):
    run_lib.run(c, workdir)
  assert not os.path.exists(os.path.join(workdir, "export", "images.npy"))
  assert os.path.exists(os.path.join(workdir, "checkpoints", "recover_round00000"))
  run_lib.run(_small(), workdir)
  for name in ("images", "labels", "soft_labels"):
    np.testing.assert_array_equal(np.load(os.path.join(workdir, "export", f"{name}.npy")),
                                  np.load(os.path.join(ref_dir, "export", f"{name}.npy")))


def test_sigkill_then_same_command_resumes(reference_run, tmp_path):
  """A real kill -9 in the middle of recover; the same command finishes the identical set."""
  ref_dir, _ = reference_run
  workdir = str(tmp_path / "killed")
  cmd = [sys.executable, "-m", "jdd.main", "--config", CONFIG + ":smoke", "--workdir", workdir,
         "--config.evaluate.epochs=2", "--config.evaluate.eval_every=1",
         "--config.evaluate.seeds=1", "--config.evaluate.baseline=False"]
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  marker = os.path.join(workdir, "checkpoints", "recover_round00000", "10")
  deadline = time.time() + 300
  while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  np.testing.assert_array_equal(np.load(os.path.join(workdir, "export", "images.npy")),
                                np.load(os.path.join(ref_dir, "export", "images.npy")))


def test_cli_override_and_mistyped_key(tmp_path):
  base = [sys.executable, "-m", "jdd.main", "--config", CONFIG + ":smoke", "--workdir",
          str(tmp_path / "w")]
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run(base + ["--config.recover.iterashuns=5"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  assert "iterashuns" in r.stderr  # names the bad key
  c = load_config(CONFIG + ":smoke")
  override(c, **{"recover.iterations": 7})
  assert c.recover.iterations == 7
  with pytest.raises(KeyError, match="iterashuns"):
    override(c, **{"recover.iterashuns": 7})
  with pytest.raises(AttributeError):
    c.recover.iterashuns = 7  # locked configs refuse new fields
  with pytest.raises(ValueError, match="unknown variant"):
    load_config(CONFIG + ":smok")


def test_missing_dataset_fails_fast_with_clear_message(tmp_path, monkeypatch):
  from jdd.data import sources
  monkeypatch.setattr(sources, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "absent"))
  c = _small()
  override(c, **{"dataset.data_dir": str(tmp_path / "nowhere")})
  with pytest.raises(FileNotFoundError) as e:
    run_lib.run(c, str(tmp_path / "w"))
  assert "nowhere" in str(e.value) and "dataset-fashion-mnist" in str(e.value)


def test_teacher_from_wrong_architecture_is_refused(reference_run, tmp_path):
  ref_dir, _ = reference_run
  c = _small()
  override(c, **{"teacher.checkpoint": os.path.join(ref_dir, "teacher"),
                 "teacher.kwargs.width": 32})
  with pytest.raises(ValueError, match="kwargs"):
    run_lib.run(c, str(tmp_path / "w"))
