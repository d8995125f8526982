"""One table from `config.method` to its driver, and what every run does around it.

    run(config, workdir)  validates the config against its dataset and method before any data
                          is read (`jdd.validation`: a bad field stops the run in seconds with
                          one message), takes the workdir's lock (`jdd.lock`: one run per
                          workdir), refuses a workdir whose config.json holds another config
                          (`config_mismatch`), prints the header line, loads the dataset (a
                          missing one stops the run at once) and checks the config again with
                          its exact numbers, writes W/config.json, builds the run context
                          (jdd.loop.RunContext), runs the driver's stages, writes
                          W/results.json, prints the driver's summary and where the outputs are.

The drivers (`jdd.drivers.classification`, `.trajectory`, `.generative`) sit side by side and
none imports another; `jdd.drivers` says what a driver provides. A checkpoint in the workdir
means resume: a run killed at any moment and restarted with the same command continues from its
last checkpoint and ends with the same distilled set, bit for bit, because every random draw is
`fold_in(key, step)` of the config's seed. Stages resume by what the workdir already holds (a
teacher, a recovered set, a student's result), so a workdir serves one config: a run with another
config stops at once and names the fields that differ, instead of reusing outputs of the old config
beside new ones. Fields that only say where inputs live or how often to log and save
(`RESUME_MAY_CHANGE`) may change between the runs of one workdir.

With several processes (`jdd.distributed`, `docs/multihost.md`) every process runs this same
function over one mesh of all their devices; process 0 holds the lock, writes the files and
prints the summary.
"""

from __future__ import annotations

import datetime
import json
import os
import time

import jax
import ml_collections

from jdd import checkpoint, distributed, lock, mesh as mesh_lib, validation
from jdd.convert import flatten
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


# Config fields that do not change what a run computes: how often it logs and checkpoints, the
# debug switches (tests interrupt and resume), the device count, trajectory matching's
# rematerialisation (memory against recomputation, the same gradient), and where inputs are read
# from (a dataset moved to another disk). Prefixes of dotted field names.
RESUME_MAY_CHANGE = ("debug", "log_every", "checkpoint_every", "num_devices", "teacher_cache",
                     "distill.remat", "dataset.data_dir", "dataset.root", "dataset.image_root",
                     "dataset.ann_dir", "dataset.cache_mb", "text_encoder.cache_dir")


def config_differences(before: dict, now: dict) -> list[str]:
  """'field: before -> now' for each field (outside `RESUME_MAY_CHANGE`) whose value differs
  between two config.json trees; a field missing on one side reads '(absent)'."""
  old, new = ({".".join(path): v for path, v in flatten(tree)} for tree in (before, now))
  lines = []
  for key in sorted(set(old) | set(new)):
    if any(key == p or key.startswith(p + ".") for p in RESUME_MAY_CHANGE):
      continue
    a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
    if a != b:
      lines.append(f"{key}: {a!r} -> {b!r}")
  return lines


def config_mismatch(workdir: str, config_json: dict) -> str:
  """Why this workdir cannot take `config_json`: W/config.json (an earlier run here) holds
  another config, or cannot be read. '' when it may (no config.json, or the same config)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return ""
  try:
    before = checkpoint.read_json(path)
  except ValueError as e:
    return (f"{path} is not readable JSON ({e}); it records the config of the run in this "
            "workdir. Restore it, or use a new --workdir.")
  diffs = config_differences(before, config_json)
  if not diffs:
    return ""
  shown = "; ".join(diffs[:12]) + (f"; and {len(diffs) - 12} more" if len(diffs) > 12 else "")
  return (f"workdir {workdir} holds a run of another config ({path}); resuming it would reuse "
          f"that run's finished stages beside this config's. Fields that differ (workdir -> "
          f"now): {shown}. Use a new --workdir for this config, or rerun with the workdir's "
          "values.")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage of `config` in `workdir` (resuming) and returns the results dict."""
  t0 = time.time()
  driver, facts = validate(config)
  config_json = json.loads(config.to_json_best_effort())
  with lock.hold(workdir):
    # Process 0 checks; every process stops with its message.
    mismatch = distributed.broadcast_json("config_check",
                                          lambda: config_mismatch(workdir, config_json))
    if mismatch:
      raise ConfigError(mismatch)
    mesh = mesh_lib.make_mesh(config.get("num_devices") or None)
    procs = (f" over {jax.process_count()} processes (this is process {jax.process_index()})"
             if distributed.is_multiprocess() else "")
    print(f"[jdd] {config.method} on {config.dataset.name}; devices: {mesh.shape['data']} x "
          f"{jax.devices()[0].platform}{procs}; workdir {workdir}", flush=True)
    data = driver.load_data(config)
    validation.check_loaded(config, FAMILIES[driver], data, facts)
    checkpoint.atomic_write_json(os.path.join(workdir, "config.json"), config_json)
    ctx = RunContext.create(config, workdir, data, mesh=mesh)
    with jax.set_mesh(mesh):
      results = driver.run(ctx)
    results["wall_seconds_this_process"] = round(time.time() - t0, 1)
    results["cpu_seconds_this_process"] = round(time.process_time(), 1)
    checkpoint.atomic_write_json(os.path.join(workdir, "results.json"), results)
    ctx.writer.flush()
    if distributed.is_writer():
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
