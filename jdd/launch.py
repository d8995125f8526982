"""Several jdd processes on this machine, as one multi-host run: for trying it without a cluster.

    python -m jdd.launch --processes 2 -- --config configs/sre2l_fashion_mnist.py:smoke --workdir W

starts `python -m jdd.main <arguments after -->` N times on the CPU, process i with
`--coordinator_address 127.0.0.1:<free port> --num_processes N --process_id i` (so each joins
JAX's distributed runtime, `jdd.distributed`, with gloo for the CPU collectives) and its own
`--devices-per-process` CPU devices (`--xla_force_host_platform_device_count`); the run's mesh
spans all N x devices-per-process devices. Their output is streamed line by line with a
`[pI]` prefix. When a process fails (a non-zero status, or a signal such as kill -9), the
launcher says which, stops the others (SIGTERM, then SIGKILL after `--grace` seconds) and exits
with that process's status (1 for a signal); it exits 0 when all finish cleanly. Ctrl-C (and
SIGTERM) to the launcher is passed on to every process. The same command after a failure
resumes the run from its last complete checkpoint.

On a real cluster nothing of this is needed: the scheduler starts the processes
(`docs/multihost.md`: SLURM, TPU pods, GKE).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(devices: int) -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONUNBUFFERED"] = "1"
  return env


def _pump(stream, prefix: str, lock: threading.Lock) -> None:
  for raw in iter(stream.readline, b""):
    line = raw.decode(errors="replace").rstrip("\n")
    with lock:
      sys.stdout.write(f"{prefix} {line}\n")
      sys.stdout.flush()
  stream.close()


def describe(status: int) -> str:
  if status < 0:
    try:
      name = signal.Signals(-status).name
    except ValueError:
      name = f"signal {-status}"
    return f"was killed by {name}"
  return f"exited with status {status}"


def launch(processes: int, jdd_args: list[str], devices_per_process: int = 1,
           grace: float = 10.0, port: int | None = None) -> int:
  """Runs the processes to the end (see the module docstring); returns the exit status."""
  address = f"127.0.0.1:{port or free_port()}"
  lock = threading.Lock()

  def say(text: str) -> None:
    with lock:
      sys.stdout.write(f"[launch] {text}\n")
      sys.stdout.flush()

  procs, pumps = [], []
  env = child_env(devices_per_process)
  for i in range(processes):
    cmd = [sys.executable, "-m", "jdd.main", *jdd_args, f"--coordinator_address={address}",
           f"--num_processes={processes}", f"--process_id={i}"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    procs.append(p)
    say(f"process {i}: pid {p.pid}")
    t = threading.Thread(target=_pump, args=(p.stdout, f"[p{i}]", lock), daemon=True)
    t.start()
    pumps.append(t)

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
  status = 0
  try:
    while True:
      codes = [p.poll() for p in procs]
      failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        i = failed[0]
        status = codes[i] if codes[i] > 0 else 1
        alive = [j for j, c in enumerate(codes) if c is None]
        say(f"process {i} (pid {procs[i].pid}) {describe(codes[i])}"
            + (f"; stopping process {', '.join(map(str, alive))}" if alive else ""))
        stop(procs, grace)
        break
      if all(c == 0 for c in codes):
        break
      time.sleep(0.2)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    stop(procs, grace)
    for t in pumps:
      t.join(timeout=5)
  if status:
    say(f"run failed (status {status}); the same command resumes it from its last checkpoint")
  return status


def stop(procs: list, grace: float) -> None:
  """SIGTERM to every live process (its whole session), SIGKILL after `grace` seconds."""
  live = [p for p in procs if p.poll() is None]
  for p in live:
    _signal_group(p, signal.SIGTERM)
  deadline = time.monotonic() + grace
  for p in live:
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      _signal_group(p, signal.SIGKILL)
      p.wait()


def _signal_group(p, sig) -> None:
  try:
    os.killpg(p.pid, sig)
  except ProcessLookupError:
    pass


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if "--" not in argv:
    sys.stderr.write("usage: python -m jdd.launch --processes N [--devices-per-process K] -- "
                     "<jdd.main arguments>\n")
    return 2
  cut = argv.index("--")
  parser = argparse.ArgumentParser(prog="python -m jdd.launch", description=__doc__.split(
      "\n")[0])
  parser.add_argument("--processes", type=int, required=True, help="processes to start (>= 1)")
  parser.add_argument("--devices-per-process", type=int, default=1,
                      help="CPU devices each process gets (default 1)")
  parser.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
  parser.add_argument("--grace", type=float, default=10.0,
                      help="seconds between SIGTERM and SIGKILL when stopping the others")
  args = parser.parse_args(argv[:cut])
  if args.processes < 1 or args.devices_per_process < 1:
    parser.error("--processes and --devices-per-process must be >= 1")
  return launch(args.processes, argv[cut + 1:], args.devices_per_process, args.grace, args.port)


if __name__ == "__main__":
  sys.exit(main())
