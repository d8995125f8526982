"""One table from `config.method` to its driver, and what every run does around it.

    run(config, workdir)  checks the config (driver.check), loads the dataset (a missing one
                          stops the run at once), writes W/config.json, builds the mesh and the
                          run context (jdd.loop.RunContext), runs the driver's stages, writes
                          W/results.json and prints the driver's summary.

The drivers (`jdd.drivers.classification`, `.trajectory`, `.generative`) sit side by side and
none imports another; `jdd.drivers` says what a driver provides. A checkpoint in the workdir
means resume: a run killed at any moment and restarted with the same command continues from its
last checkpoint and ends with the same distilled set, bit for bit, because every random draw is
`fold_in(key, step)` of the config's seed.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections

from jdd import checkpoint, mesh as mesh_lib
from jdd.drivers import classification, generative, trajectory
from jdd.loop import RunContext

DRIVERS = {
    "sre2l": classification, "infer": classification, "fadrm": classification,
    "experts": trajectory, "mttvl": trajectory, "lors": trajectory, "repblend": trajectory,
    "edge": generative,
}


def driver_of(config):
  if config.method not in DRIVERS:
    raise ValueError(f"config.method={config.method!r} is not one of {sorted(DRIVERS)}")
  return DRIVERS[config.method]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage of `config` in `workdir` (resuming) and returns the results dict."""
  t0 = time.time()
  driver = driver_of(config)
  driver.check(config)
  data = driver.load_data(config)
  os.makedirs(workdir, exist_ok=True)
  checkpoint.atomic_write_json(os.path.join(workdir, "config.json"),
                               json.loads(config.to_json_best_effort()))
  mesh = mesh_lib.make_mesh(config.get("num_devices") or None)
  print(f"[jdd] {config.method} on {data.name}; devices: {mesh.shape['data']} x "
        f"{jax.devices()[0].platform}; workdir {workdir}", flush=True)
  ctx = RunContext.create(config, workdir, data, mesh=mesh)
  with jax.set_mesh(mesh):
    results = driver.run(ctx)
  results["wall_seconds_this_process"] = round(time.time() - t0, 1)
  results["cpu_seconds_this_process"] = round(time.process_time(), 1)
  checkpoint.atomic_write_json(os.path.join(workdir, "results.json"), results)
  ctx.writer.flush()
  driver.print_summary(results)
  return results
