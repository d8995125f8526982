"""One table from `config.method` to its driver, and what every run does around it.

    run(config, workdir)  validates the config against its dataset and method before any data
                          is read (`jdd.validation`: a bad field stops the run in seconds with
                          one message), takes the workdir's lock (`jdd.lock`: one run per
                          workdir), prints the header line, loads the dataset (a missing one
                          stops the run at once) and checks the config again with its exact
                          numbers, writes W/config.json, builds the run context
                          (jdd.loop.RunContext), runs the driver's stages, writes
                          W/results.json, prints the driver's summary and where the outputs are.

The drivers (`jdd.drivers.classification`, `.trajectory`, `.generative`) sit side by side and
none imports another; `jdd.drivers` says what a driver provides. A checkpoint in the workdir
means resume: a run killed at any moment and restarted with the same command continues from its
last checkpoint and ends with the same distilled set, bit for bit, because every random draw is
`fold_in(key, step)` of the config's seed.
"""

from __future__ import annotations

import datetime
import json
import os
import time

import jax
import ml_collections

from jdd import checkpoint, lock, mesh as mesh_lib, validation
from jdd.drivers import classification, generative, trajectory
from jdd.errors import ConfigError
from jdd.loop import RunContext

DRIVERS = {
    "sre2l": classification, "infer": classification, "fadrm": classification,
    "experts": trajectory, "mttvl": trajectory, "lors": trajectory, "repblend": trajectory,
    "edge": generative,
}
# The validation family of each driver (jdd.validation.FAMILIES).
FAMILIES = {classification: "classification", trajectory: "trajectory", generative: "generative"}


def driver_of(config):
  if config.method not in DRIVERS:
    raise ConfigError.field("method", config.method, f"one of {sorted(DRIVERS)}")
  return DRIVERS[config.method]


def validate(config):
  """Every check that needs no data (`jdd.validation.check`); returns (driver, facts)."""
  driver = driver_of(config)
  return driver, validation.check(config, FAMILIES[driver], driver.check)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage of `config` in `workdir` (resuming) and returns the results dict."""
  t0 = time.time()
  driver, facts = validate(config)
  with lock.hold(workdir):
    mesh = mesh_lib.make_mesh(config.get("num_devices") or None)
    print(f"[jdd] {config.method} on {config.dataset.name}; devices: {mesh.shape['data']} x "
          f"{jax.devices()[0].platform}; workdir {workdir}", flush=True)
    data = driver.load_data(config)
    validation.check_loaded(config, FAMILIES[driver], data, facts)
    checkpoint.atomic_write_json(os.path.join(workdir, "config.json"),
                                 json.loads(config.to_json_best_effort()))
    ctx = RunContext.create(config, workdir, data, mesh=mesh)
    with jax.set_mesh(mesh):
      results = driver.run(ctx)
    results["wall_seconds_this_process"] = round(time.time() - t0, 1)
    results["cpu_seconds_this_process"] = round(time.process_time(), 1)
    checkpoint.atomic_write_json(os.path.join(workdir, "results.json"), results)
    ctx.writer.flush()
    driver.print_summary(results)
    print_outputs(workdir, time.time() - t0)
  return results


OUTPUTS = (("export", "the distilled set and its manifest.json"),
           ("results.json", "every number of this run"),
           ("logs", "TensorBoard events and the log"),
           ("config.json", "the config as run"))


def print_outputs(workdir: str, seconds: float) -> None:
  """The last lines of a run: where its outputs are."""
  took = datetime.timedelta(seconds=int(seconds))
  print(f"\n[jdd] done in {took}; outputs in {os.path.abspath(workdir)}:", flush=True)
  for name, what in OUTPUTS:
    if os.path.exists(os.path.join(workdir, name)):
      print(f"  {name + ('/' if os.path.isdir(os.path.join(workdir, name)) else ''):14s}{what}",
            flush=True)
