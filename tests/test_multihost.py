"""Several processes, one run (`jdd.distributed`, `jdd.launch`): the same export as one process,
failures named and propagated, and a kill -9 of one process resumed by the same command."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRE2L = os.path.join(ROOT, "configs", "sre2l_fashion_mnist.py") + ":smoke"
# The smoke config made smaller still (the test runs it three times on 2 shared cores).
SMALL = ["--config.recover.iterations=10", "--config.dataset.max_train=500",
         "--config.dataset.val_size=100", "--config.dataset.max_test=100",
         "--config.teacher.kwargs.depth=2", "--config.evaluate.student.kwargs.depth=2",
         "--config.evaluate.epochs=1", "--config.evaluate.eval_every=1",
         "--config.evaluate.seeds=2", "--config.evaluate.baseline=False"]
EXPORTED = ("images.npy", "labels.npy", "soft_labels.npy")


def _env(devices: int | None = None) -> dict:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  if devices:
    env["XLA_FLAGS"] = (f"{env.get('XLA_FLAGS', '')} "
                        f"--xla_force_host_platform_device_count={devices}")
  return env


def _launch(processes: int, workdir: str, extra=()) -> list[str]:
  return [sys.executable, "-m", "jdd.launch", "--processes", str(processes), "--",
          "--config", SRE2L, "--workdir", workdir, *SMALL, *extra]


def _single(workdir: str) -> list[str]:
  return [sys.executable, "-m", "jdd.main", "--config", SRE2L, "--workdir", workdir, *SMALL]


def _numbers(workdir: str) -> dict:
  """results.json without the timings (`*_this_process`, `*_seconds`, at any depth), paths
  relative to W."""
  def strip(x):
    if isinstance(x, dict):
      return {k: strip(v) for k, v in x.items()
              if not k.endswith(("_this_process", "_seconds"))}
    if isinstance(x, list):
      return [strip(v) for v in x]
    return x.replace(workdir, "W") if isinstance(x, str) else x
  return strip(json.load(open(os.path.join(workdir, "results.json"))))


def _assert_same_export(a: str, b: str) -> None:
  for name in EXPORTED:
    x, y = (np.load(os.path.join(w, "export", name)) for w in (a, b))
    assert x.dtype == y.dtype and x.shape == y.shape, name
    np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  """The SRe2L smoke run as 2 processes x 1 CPU device and as 1 process x 2 CPU devices (the
  same global device count, so the same partitioned program), started side by side."""
  root = tmp_path_factory.mktemp("multihost")
  w1, w2 = str(root / "one"), str(root / "two")
  one = subprocess.Popen(_single(w1), cwd=ROOT, env=_env(2), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
  two = subprocess.run(_launch(2, w2), cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=900)
  out1, _ = one.communicate(timeout=900)
  assert one.returncode == 0, out1[-3000:]
  assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-2000:]
  return w1, w2, two.stdout


def test_two_processes_export_what_one_process_exports(pair):
  w1, w2, out = pair
  _assert_same_export(w1, w2)
  assert _numbers(w1) == _numbers(w2)  # teacher, students (seed 1 trained by process 1), bytes
  # Both processes ran and were prefixed; process 0 alone wrote logs, results and the export.
  assert "[p0] [jdd] sre2l on fashion_mnist; devices: 2 x cpu over 2 processes" in out
  assert "[p1] [recover_round00000] step 10/10" in out
  assert "[p1] [evaluate:distilled/soft/seed1]" in out
  assert "[p1] [evaluate:distilled/soft/seed0]" not in out
  assert len(os.listdir(os.path.join(w2, "logs"))) == 1
  assert "[p1] == sre2l" not in out and "[p0] == sre2l" in out


def test_launcher_names_the_failing_process_and_stops(tmp_path):
  r = subprocess.run(_launch(2, str(tmp_path / "w"), ["--config.recover.iterations=0"]),
                     cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stdout[-3000:]
  assert re.search(r"\[launch\] process [01] \(pid \d+\) exited with status 2", r.stdout)
  assert "recover.iterations" in r.stdout
  assert "the same command resumes it" in r.stdout


def test_launcher_usage_and_mismatched_flags(tmp_path):
  r = subprocess.run([sys.executable, "-m", "jdd.launch", "--processes", "2"], cwd=ROOT,
                     env=_env(), capture_output=True, text=True, timeout=60)
  assert r.returncode == 2 and "usage: python -m jdd.launch" in r.stderr
  r = subprocess.run(_single(str(tmp_path / "w")) + ["--num_processes=2"], cwd=ROOT, env=_env(),
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and "go together" in r.stderr, r.stderr[-2000:]
  assert not os.path.exists(tmp_path / "w")


class _Reader:
  """Collects a process's output lines in a thread (with the time each arrived)."""

  def __init__(self, proc):
    self.lines = []
    self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
    self.thread.start()

  def _read(self, proc):
    for line in proc.stdout:
      self.lines.append((time.monotonic(), line.rstrip("\n")))

  def text(self) -> str:
    return "\n".join(line for _, line in self.lines)


def _wait_for(predicate, proc, seconds: float):
  deadline = time.monotonic() + seconds
  while not predicate() and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
  return predicate()


@pytest.mark.slow
def test_kill9_one_process_mid_recover_stops_the_other_then_resumes(tmp_path):
  """kill -9 of process 1 during recover: the launcher names it and the other process is gone
  within 60 s; the same command then resumes and exports what the uninterrupted runs did."""
  workdir = str(tmp_path / "killed")
  extra = ["--config.recover.iterations=40", "--config.checkpoint_every=5"]
  cmd = _launch(2, workdir, extra)
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  reader = _Reader(proc)
  marker = os.path.join(workdir, "checkpoints", "recover_round00000", "10")
  assert _wait_for(lambda: os.path.exists(marker), proc, 600), reader.text()[-3000:]
  pids = dict(re.findall(r"\[launch\] process (\d): pid (\d+)", reader.text()))
  killed_at = time.monotonic()
  os.kill(int(pids["1"]), signal.SIGKILL)
  proc.wait(timeout=120)
  stopped_after = time.monotonic() - killed_at
  reader.thread.join(timeout=10)
  text = reader.text()
  assert proc.returncode != 0
  assert f"[launch] process 1 (pid {pids['1']}) was killed by SIGKILL" in text, text[-3000:]
  assert stopped_after < 60, stopped_after
  print(f"process 0 stopped {stopped_after:.1f} s after the kill of process 1")
  with pytest.raises(ProcessLookupError):  # process 0 is gone too
    os.kill(int(pids["0"]), 0)
  assert not os.path.exists(os.path.join(workdir, "export"))

  reference = str(tmp_path / "uninterrupted")
  r = subprocess.run(_launch(2, reference, extra), cwd=ROOT, env=_env(), capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-3000:]
  r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-3000:]
  assert "[p0] [recover_round00000] resuming from checkpoint at step" in r.stdout
  _assert_same_export(workdir, reference)


@pytest.mark.slow
def test_without_launcher_the_survivor_names_the_dead_process(tmp_path):
  """Two plain `jdd.main` processes (as a cluster scheduler starts them): after kill -9 of
  process 1 mid-recover, process 0 stops by itself within 60 s with jdd's one-line message."""
  workdir = str(tmp_path / "w")
  flags = [f"--coordinator_address=127.0.0.1:{_free_port()}", "--num_processes=2"]
  cmd = _single(workdir) + ["--config.recover.iterations=40", "--config.checkpoint_every=5"]
  env = _env(1)
  procs = [subprocess.Popen(cmd + flags + [f"--process_id={i}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  readers = [_Reader(p) for p in procs]
  marker = os.path.join(workdir, "checkpoints", "recover_round00000", "10")
  assert _wait_for(lambda: os.path.exists(marker), procs[0], 600), readers[0].text()[-3000:]
  killed_at = time.monotonic()
  procs[1].kill()
  procs[0].wait(timeout=120)
  stopped_after = time.monotonic() - killed_at
  readers[0].thread.join(timeout=10)
  text = readers[0].text()
  assert procs[0].returncode == 1, text[-3000:]
  assert "jdd: error: process 0 of 2 stops: process 1 is dead" in text, text[-3000:]
  assert stopped_after < 60, stopped_after
  print(f"process 0 stopped {stopped_after:.1f} s after the kill of process 1")


def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_repblend_two_processes_export_what_one_process_exports(tmp_path):
  """RepBlend's smoke run (encoder pre-training, experts, distillation, retrieval evaluation)
  as 2 processes x 1 device and as 1 process x 2 devices: the same export, bit for bit."""
  config = os.path.join(ROOT, "configs", "repblend_shapes.py") + ":smoke"
  w1, w2 = str(tmp_path / "one"), str(tmp_path / "two")
  one = subprocess.Popen([sys.executable, "-m", "jdd.main", "--config", config, "--workdir", w1],
                         cwd=ROOT, env=_env(2), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
  two = subprocess.run([sys.executable, "-m", "jdd.launch", "--processes", "2", "--",
                        "--config", config, "--workdir", w2], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=1800)
  out1, _ = one.communicate(timeout=1800)
  assert one.returncode == 0, out1[-3000:]
  assert two.returncode == 0, two.stdout[-3000:]
  names = sorted(n for n in os.listdir(os.path.join(w1, "export")) if n.endswith(".npy"))
  assert names == sorted(n for n in os.listdir(os.path.join(w2, "export")) if n.endswith(".npy"))
  assert "images.npy" in names
  for name in names:
    np.testing.assert_array_equal(np.load(os.path.join(w1, "export", name)),
                                  np.load(os.path.join(w2, "export", name)), err_msg=name)
  assert _numbers(w1) == _numbers(w2)


_ROWS_SCRIPT = r"""
import sys
import numpy as np
from jdd import distributed
distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                       process_id=int(sys.argv[2]))
import jax
from jdd import mesh as mesh_lib
mesh = mesh_lib.make_mesh(None)
asked = []

def load(rows):
  asked.append(rows.tolist())
  return {"x": np.stack([np.full((3,), r, np.float64) for r in rows]), "t": rows * 10}

for n in (8, 6):   # 8 splits over the 4 devices; 6 does not, so it is replicated
  batch = mesh_lib.shard_rows(n, load, mesh)
  whole = mesh_lib.fetch(batch)
  assert whole["x"].dtype == np.float32, whole["x"].dtype
  np.testing.assert_array_equal(whole["x"][:, 0], np.arange(n))
  np.testing.assert_array_equal(whole["t"], np.arange(n) * 10)
  total = jax.jit(lambda b: b["x"].sum() + b["t"].sum())(batch)
  assert float(total) == 3 * n * (n - 1) / 2 + 10 * n * (n - 1) / 2, float(total)
print("asked", jax.process_index(), asked, flush=True)

computed = []

def piece(i):   # bits that an all-reduce would not keep: -0.0, NaN
  computed.append(i)
  return np.array([[i, -0.0, np.nan]], np.float16)

got = distributed.spread_arrays(5, piece, (1, 3), np.float16)
want = np.stack([np.array([[i, -0.0, np.nan]], np.float16) for i in range(5)])
assert got.dtype == np.float16 and got.tobytes() == want.tobytes(), got
print("computed", jax.process_index(), computed, flush=True)
distributed.exit_now(0)
"""


def test_each_process_loads_only_its_rows_and_computes_only_its_pieces(tmp_path):
  """`jdd.mesh.shard_rows` over 2 processes x 2 devices: each process's `load` is asked for its
  half of a batch that splits over the 4 devices (all of one that does not), and the global
  batch is the whole one. `jdd.distributed.spread_arrays` deals the pieces round-robin and
  every process receives them all, bit for bit."""
  script = tmp_path / "rows.py"
  script.write_text(_ROWS_SCRIPT)
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen([sys.executable, str(script), address, str(i)], cwd=ROOT,
                            env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  outs = [p.communicate(timeout=240)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "asked 0 [[0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]" in outs[0], outs[0][-2000:]
  assert "asked 1 [[4, 5, 6, 7], [0, 1, 2, 3, 4, 5]]" in outs[1], outs[1][-2000:]
  # jdd.distributed.spread_arrays: piece i on process i mod 2, every bit gathered to both.
  assert "computed 0 [0, 2, 4]" in outs[0] and "computed 1 [1, 3]" in outs[1], outs



def _one_and_two(config: str, root, extra=(), timeout=1800) -> tuple[str, str, str]:
  """`config` as 1 process x 2 CPU devices and as 2 processes x 1 device (side by side);
  returns both workdirs and the launcher's output."""
  w1, w2 = str(root / "one"), str(root / "two")
  args = ["--config", os.path.join(ROOT, "configs", config), *extra]
  one = subprocess.Popen([sys.executable, "-m", "jdd.main", *args, "--workdir", w1], cwd=ROOT,
                         env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
  two = subprocess.run([sys.executable, "-m", "jdd.launch", "--processes", "2", "--", *args,
                        "--workdir", w2], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=timeout)
  out1, _ = one.communicate(timeout=timeout)
  assert one.returncode == 0, out1[-3000:]
  assert two.returncode == 0, two.stdout[-3000:]
  return w1, w2, two.stdout


@pytest.mark.slow
def test_pixel_experts_two_processes_store_what_one_process_stores(tmp_path):
  """Pixel experts (trained backbone, streamed batches sharded over the devices): each process
  reads only its half of every batch (`jdd.mesh.shard_rows`), and the expert store and the
  retrieval results (seeds dealt over the processes) equal one process's bit for bit."""
  w1, w2, out = _one_and_two("experts_shapes.py:smoke,trained_backbone=True", tmp_path)
  for m in ("image", "text"):
    np.testing.assert_array_equal(np.load(os.path.join(w1, "experts", f"{m}.npy")),
                                  np.load(os.path.join(w2, "experts", f"{m}.npy")), err_msg=m)
  assert _numbers(w1) == _numbers(w2)
  assert "[p1] [evaluate:" in out


@pytest.mark.slow
def test_edge_two_processes_export_what_one_process_exports(tmp_path):
  """EDGE's smoke run: the sampler's batches are dealt over the processes; every exported
  image and the caption JSON equal one process's bytes, and so do the results."""
  w1, w2, _ = _one_and_two("edge_shapes.py:smoke", tmp_path)
  def files(w):
    root = os.path.join(w, "export")
    return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(root) for n in names if n != "manifest.json"}
  a, b = files(w1), files(w2)
  assert sorted(a) == sorted(b) and any(k.startswith("images/") for k in a)
  for k in a:
    assert a[k] == b[k], k
  assert _numbers(w1) == _numbers(w2)
