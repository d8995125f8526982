"""Several processes, one run: JAX's multi-controller runtime, and who writes what.

A multi-host run is N copies of the same program (one per host, or per GPU, or per local
process with `python -m jdd.launch`) joined by `jax.distributed.initialize`: every process sees
all devices (`jax.devices()`) and its own (`jax.local_devices()`), a jitted computation on
arrays sharded over a mesh of all devices runs on all of them with the collectives in between,
and a coordination service (on process 0) offers barriers, a key-value store and heartbeats.

jdd uses it like this:

* **Start-up** (`initialize`, called by `jdd.main` before any device is touched): from explicit
  flags (`--coordinator_address`, `--num_processes`, `--process_id`), or from the environment
  that `jax.distributed.initialize()` itself detects (SLURM, Cloud TPU, GKE/Kubernetes,
  Open MPI) with `--distributed=env`. `--distributed=auto` (the default) joins only when the
  flags are given or a SLURM / Open MPI job step has more than one task; one process without
  flags runs exactly as before. On the CPU the collectives go through gloo.
* **Writing** (`is_writer`, `barrier`): process 0 writes every file of the workdir (exports,
  results, checkpoint tables, logs); the others skip the write and wait at a barrier until it
  is there, so a file written and then read back is read by all processes only once it exists.
  Orbax writes checkpoints itself: each process its own shards (`jdd.checkpoint`).
* **Agreement** (`broadcast_json`): a value only process 0 can know (whether it got the
  workdir's lock) is published through the coordination service's key-value store.
* **Spreading** (`spread`): independent pieces of work (evaluation seeds) are dealt round-robin
  over the processes, piece i to process i mod N; each piece depends only on its index, and the
  results are exchanged through the key-value store (`spread_arrays`: arrays, by an
  all-gather), so every process ends with the same list whatever the process count.
* **A dead process** (`explain_failure`): a collective with a dead peer fails at once (gloo:
  "connection closed by peer") and a process that sends no heartbeat for
  `HEARTBEAT_SECONDS` is declared dead by the coordination service, which then stops every
  other process. jdd turns the first into one message that names the dead process(es) when
  the service can tell, and exits without waiting for the others (`jdd.main`).

With one process every function here is a no-op (or runs everything locally), so single-process
behaviour is unchanged bit for bit.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import numpy as np

HEARTBEAT_SECONDS = 30   # a process silent this long is declared dead (JAX's default: 100)
BARRIER_SECONDS = 24 * 3600   # how long the others wait for process 0 to finish writing
_STATE = {"joined": False, "barriers": 0, "spreads": 0}


def _jax_distributed():
  from jax._src import distributed
  return distributed.global_state


def process_count() -> int:
  if not _STATE["joined"] and "jax" not in sys.modules:
    return 1
  import jax
  return jax.process_count() if (_STATE["joined"] or _jax_distributed().client) else 1


def process_index() -> int:
  if not _STATE["joined"] and "jax" not in sys.modules:
    return 0
  import jax
  return jax.process_index() if (_STATE["joined"] or _jax_distributed().client) else 0


def is_multiprocess() -> bool:
  return process_count() > 1


def is_writer() -> bool:
  """True on the one process that writes the workdir's files (process 0)."""
  return process_index() == 0


def _env_task_count() -> int:
  """The task count of a SLURM job step or an Open MPI job, 1 elsewhere."""
  for name in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if os.environ.get(name, "").isdigit():
      return int(os.environ[name])
  return 1


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               heartbeat_seconds: int = HEARTBEAT_SECONDS) -> bool:
  """Joins the JAX distributed runtime when asked to (see the module docstring); returns
  whether it did. Must run before anything initialises a JAX backend."""
  from jdd.errors import ConfigError
  if mode not in ("auto", "env", "off"):
    raise ConfigError(f"--distributed={mode!r}: use auto, env or off")
  explicit = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
    raise ConfigError("--coordinator_address, --num_processes and --process_id go together: "
                      "give all three (or none, to use the environment with --distributed=env)")
  if mode == "off" or (mode == "auto" and explicit[0] is None and _env_task_count() <= 1):
    return False
  if explicit[0] is not None and not 0 <= int(process_id) < int(num_processes):
    raise ConfigError(f"--process_id={process_id} must be in [0, {num_processes})")
  import jax
  # On the CPU, cross-process collectives need an implementation (none by default).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {"heartbeat_timeout_seconds": int(heartbeat_seconds)}
  if explicit[0] is not None:
    kwargs.update(coordinator_address=coordinator_address, num_processes=int(num_processes),
                  process_id=int(process_id))
  jax.distributed.initialize(**kwargs)
  _STATE["joined"] = True
  return True


def _client():
  return _jax_distributed().client


def barrier(what: str) -> None:
  """Every process waits here until all have arrived (numbered: the calls must match)."""
  if not is_multiprocess():
    return
  _STATE["barriers"] += 1
  _client().wait_at_barrier(f"jdd_barrier_{_STATE['barriers']}", BARRIER_SECONDS * 1000)
  del what  # named at the call sites for the reader; the number is what must agree


def broadcast_json(key: str, compute):
  """Process 0 computes `compute()` (JSON-serialisable) and every process returns it."""
  if not is_multiprocess():
    return compute()
  full = f"jdd_broadcast/{key}"
  if is_writer():
    value = compute()
    _client().key_value_set(full, json.dumps(value))
    return value
  return json.loads(_client().blocking_key_value_get(full, BARRIER_SECONDS * 1000))


def spread(n: int, compute, name: str) -> list:
  """[compute(0), ..., compute(n - 1)] on every process, piece i computed by process i mod N.

  `compute(i)` must depend on i only (its own keys, its own files) and return a JSON-
  serialisable value; the values travel through the coordination service's key-value store."""
  count = process_count()
  if count == 1:
    return [compute(i) for i in range(n)]
  from jdd.checkpoint import json_default
  _STATE["spreads"] += 1
  prefix = f"jdd_spread/{_STATE['spreads']}_{name}"
  me = process_index()
  for i in range(me, n, count):
    _client().key_value_set(f"{prefix}/{i}", json.dumps(compute(i), default=json_default))
  return [json.loads(_client().blocking_key_value_get(f"{prefix}/{i}", BARRIER_SECONDS * 1000))
          for i in range(n)]


def spread_arrays(n: int, compute, shape: tuple[int, ...], dtype) -> np.ndarray:
  """np.stack([compute(0), ..., compute(n - 1)]) on every process, piece i computed by process
  i mod N: for pieces too big for the key-value store (arrays of a known `shape` and `dtype`).

  `compute(i)` must depend on i only. The pieces travel by one all-gather over the processes'
  devices (`process_allgather`: copies, no arithmetic, so every bit arrives as computed)."""
  count = process_count()
  if count == 1:
    return np.stack([_checked(compute(i), shape, dtype, i) for i in range(n)])
  from jax.experimental import multihost_utils
  me, per = process_index(), -(-n // count)
  mine = np.zeros((per, *shape), dtype)
  for k, i in enumerate(range(me, n, count)):
    mine[k] = _checked(compute(i), shape, dtype, i)
  everyone = np.asarray(multihost_utils.process_allgather(mine, tiled=False))
  return np.stack([everyone[i % count, i // count] for i in range(n)])


def seed_spreader(name: str):
  """`spread` bound to `name` for a stage that deals its pieces over the processes, or None
  with one process (the stage then computes every piece itself, as it always did)."""
  if not is_multiprocess():
    return None
  return lambda n, compute: spread(n, compute, name)


def array_spreader(shape: tuple[int, ...], dtype):
  """`spread_arrays` bound to a piece's `shape` and `dtype`, or None with one process."""
  if not is_multiprocess():
    return None
  return lambda n, compute: spread_arrays(n, compute, shape, dtype)


def _checked(piece, shape, dtype, i: int) -> np.ndarray:
  piece = np.asarray(piece)
  if piece.shape != tuple(shape) or piece.dtype != np.dtype(dtype):
    raise ValueError(f"piece {i} is {piece.dtype} {piece.shape}; spread_arrays was told "
                     f"{np.dtype(dtype)} {tuple(shape)}")
  return piece


_PEER_FAILURE = ("gloo", "connection closed by peer", "heartbeat", "unavailable",
                 "coordination service", "barrier failed", "task is set to error")


def is_peer_failure(exc: BaseException) -> bool:
  """Does `exc` look like another process of the run has gone (a failed collective)?"""
  text = f"{type(exc).__name__}: {exc}".lower()
  return is_multiprocess() and any(s in text for s in _PEER_FAILURE)


def dead_processes(wait_seconds: float = HEARTBEAT_SECONDS + 10) -> list[int] | None:
  """The processes the coordination service no longer counts as alive, waiting up to
  `wait_seconds` for it to notice (a heartbeat timeout); None when it cannot be asked."""
  import time
  everyone = list(range(process_count()))
  deadline = time.monotonic() + wait_seconds
  while True:
    answer = {}

    def ask():
      try:
        answer["live"] = set(int(p) for p in _client().get_live_nodes(everyone))
      except Exception as e:  # the service itself may be gone (process 0 died)
        answer["error"] = e

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(timeout=max(1.0, deadline - time.monotonic()))
    if "live" not in answer:
      return None
    dead = [p for p in everyone if p not in answer["live"]]
    if dead or time.monotonic() >= deadline:
      return dead
    time.sleep(1.0)


def explain_failure(exc: BaseException) -> str:
  """One message for a collective that failed because another process is gone."""
  me, n = process_index(), process_count()
  dead = dead_processes()
  if dead:
    who = "process " + ", ".join(str(p) for p in dead) + (" is" if len(dead) == 1 else " are")
    who += " dead (no heartbeat)"
  elif dead is None:
    who = "the coordination service (process 0) cannot be reached: process 0 is probably dead"
  else:
    who = "another process is gone (the coordination service has not yet named it)"
  first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
  return (f"process {me} of {n} stops: {who}. ({first}) Restart all {n} processes with the "
          "same command: the run resumes from its last complete checkpoint.")


def exit_now(status: int) -> None:
  """Leaves at once, without JAX's shutdown barrier (which would wait for a dead process)."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)
