"""Wall and CPU time of one config run as 1 process and as N local processes (`jdd.launch`).

    python benchmarks/multihost.py --config configs/sre2l_fashion_mnist.py:smoke \
        [--processes 2] [--workdir /tmp/mh_bench] [-- <extra jdd.main flags>]

Runs, one after the other, in fresh workdirs:
  1 process x 1 CPU device      (plain `python -m jdd.main`)
  1 process x N CPU devices     (the same global device count as the launch below)
  N processes x 1 CPU device    (`python -m jdd.launch --processes N`)
and prints each run's wall seconds and CPU seconds (user + sys of all its processes), and
whether each export's .npy files equal those of the N-devices run bit for bit. On a machine
with fewer cores than processes x threads (2 shared cores here) this shows the overhead of the
multi-process path (start-up, collectives over gloo, barriers), not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd: list[str], env: dict, log: str) -> tuple[float, float]:
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t = time.perf_counter()
  with open(log, "w") as f:
    rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
  wall = time.perf_counter() - t
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if rc:
    sys.exit(f"{' '.join(cmd)} failed with status {rc}; see {log}")
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return wall, cpu


def _same_export(a: str, b: str) -> bool:
  names = sorted(n for n in os.listdir(os.path.join(a, "export")) if n.endswith(".npy"))
  return names == sorted(n for n in os.listdir(os.path.join(b, "export"))
                         if n.endswith(".npy")) and all(
      np.array_equal(np.load(os.path.join(a, "export", n)), np.load(os.path.join(b, "export", n)))
      for n in names)


def main() -> None:
  argv = sys.argv[1:]
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True)
  p.add_argument("--processes", type=int, default=2)
  p.add_argument("--workdir", default="/tmp/jdd_multihost_bench")
  args = p.parse_args(argv)
  n = args.processes
  shutil.rmtree(args.workdir, ignore_errors=True)
  os.makedirs(args.workdir)
  base = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  jdd = [sys.executable, "-m", "jdd.main", "--config", args.config]
  runs = [
      ("1 process x 1 device", "one1", lambda w: jdd + ["--workdir", w] + extra, 1),
      (f"1 process x {n} devices", f"one{n}", lambda w: jdd + ["--workdir", w] + extra, n),
      (f"{n} processes x 1 device (jdd.launch)", f"launch{n}",
       lambda w: [sys.executable, "-m", "jdd.launch", "--processes", str(n), "--",
                  "--config", args.config, "--workdir", w] + extra, None),
  ]
  rows = []
  for label, name, make, devices in runs:
    env = dict(base)
    if devices:
      env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    w = os.path.join(args.workdir, name)
    wall, cpu = _run(make(w), env, w + ".log")
    rows.append((label, w, wall, cpu))
    print(f"{label:40s} wall {wall:7.1f} s  cpu {cpu:7.1f} s", flush=True)
  reference = rows[1][1]
  print(f"\n{args.config} (load average at the end: {os.getloadavg()[0]:.1f}, "
        f"{os.cpu_count()} CPUs)")
  print("| run | wall s | CPU s (user+sys) | export equal to 1 process x "
        f"{n} devices |\n|---|---|---|---|")
  for label, w, wall, cpu in rows:
    same = "(reference)" if w == reference else ("bit-identical" if _same_export(w, reference)
                                                  else "differs")
    print(f"| {label} | {wall:.0f} | {cpu:.0f} | {same} |")


if __name__ == "__main__":
  main()
