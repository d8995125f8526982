"""Compute reported beside accuracy: wall time, CPU time, device-hours and peak memory.

Why: a distilled set is worth its accuracy per unit of compute, and the papers rarely say what
their evaluation cost (docs/reproduction.md lists what they state). Every `jdd eval` records
what its own evaluation took, so two sets (or two machines) can be compared on both axes.
Device-hours are wall hours times the devices of the mesh; peak memory is the process's peak
resident set (host) and, where the backend reports it, the device's peak bytes in use.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time

import jax

from jdd import checkpoint, lock, mesh as mesh_lib
from jdd.loop import RunContext


@contextlib.contextmanager
def open_run(config, workdir: str, data, banner: str):
  """What every `jdd eval` does around its students: the workdir lock, the mesh, the banner,
  `config.json`, and a `RunContext` entered with the mesh set; yields the context."""
  with lock.hold(workdir):
    mesh = mesh_lib.make_mesh(config.get("num_devices") or None)
    print(f"[jdd eval] {banner}; workdir {workdir}", flush=True)
    checkpoint.atomic_write_json(os.path.join(workdir, "config.json"),
                                 json.loads(config.to_json_best_effort()))
    ctx = RunContext.create(config, workdir, data, mesh=mesh)
    with jax.set_mesh(mesh):
      yield ctx


class Clock:
  """Started when made; `report` reads the elapsed wall and CPU time and the peaks."""

  def __init__(self):
    self.wall0, self.cpu0 = time.time(), time.process_time()

  def report(self, num_devices: int) -> dict:
    wall = time.time() - self.wall0
    out = {"wall_seconds": round(wall, 1),
           "cpu_seconds": round(time.process_time() - self.cpu0, 1),
           "devices": int(num_devices), "platform": jax.devices()[0].platform,
           "device_hours": round(wall * num_devices / 3600.0, 4),
           "peak_host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      out["peak_device_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    return out


def line(c: dict) -> str:
  dev = f", device peak {c['peak_device_mb']} MB" if "peak_device_mb" in c else ""
  return (f"compute: {c['wall_seconds']} s wall, {c['cpu_seconds']} s CPU, "
          f"{c['device_hours']} device-hours on {c['devices']} x {c['platform']}, "
          f"host peak {c['peak_host_rss_mb']} MB{dev}")
