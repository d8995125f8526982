"""Command line: `python -m jdd.main --config configs/<x>.py[:variant] --workdir W`.

Any field can be overridden with `--config.a.b=value`; a field that does not exist is an error.
Exit status: 0 done; 2 the input cannot work (a config field, a variant, a missing dataset, a
workdir another run holds): one message, no traceback; 1 the run failed (a full disk, no usable
checkpoint: one message; a bug: its traceback). `--debug` (or JDD_DEBUG=1) shows the traceback
of every error.

Several processes, one run (`docs/multihost.md`): give every process `--coordinator_address
host:port --num_processes N --process_id i` (what `python -m jdd.launch` does on one machine),
or `--distributed=env` where JAX detects the cluster (SLURM, Cloud TPU, GKE, Open MPI). A process
whose peer dies stops with one message naming it (status 1), without waiting for the others.
"""

from jdd import reporting, xla_setup

# Before anything imports TensorFlow or XLA: their start-up lines are silenced at the source,
# and jdd's XLA flags are set (jdd.xla_setup).
reporting.quiet_third_party()
xla_setup.apply()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jdd import errors  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, export and results.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of any error (or JDD_DEBUG=1).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "env", "off"],
    "Join a multi-process run: 'env' = from the cluster environment JAX detects; 'auto' = when "
    "the three flags below are given or a SLURM/Open MPI step has several tasks; 'off' = never.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0's coordination service.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 .. N-1.")
flags.mark_flags_as_required(["config", "workdir"])


def _parse(argv):
  try:
    rest = flags.FLAGS(argv)
    _CONFIG.value.keys()  # config_flags defers a config file's load error to first use
    return rest
  except Exception as e:  # absl's flag errors and whatever loading the config file raises
    if errors.debug_requested(argv):
      raise
    from jdd.config import explain_flag_error
    errors.exit_with(explain_flag_error(argv[1:], e), 2)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and clu log every save at INFO
  from jdd import distributed
  with errors.reported(debug=_DEBUG.value):
    joined = distributed.initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                                    _PROCESS_ID.value)
  if not joined:
    from jdd import run
    with errors.reported(debug=_DEBUG.value):
      run.run(_CONFIG.value, _WORKDIR.value)
    return
  _run_one_of_many(distributed)


def _run_one_of_many(distributed):
  """One process of several: any failure ends this process at once (JAX's shutdown would wait
  for the others), and a failure caused by a dead peer is said in one line naming it."""
  status = 0
  try:
    from jdd import run
    with errors.reported(debug=_DEBUG.value):
      try:
        run.run(_CONFIG.value, _WORKDIR.value)
      except Exception as e:
        if not distributed.is_peer_failure(e) or errors.debug_requested():
          raise
        errors.exit_with(distributed.explain_failure(e), 1)
  except SystemExit as e:
    status = e.code if isinstance(e.code, int) else 1
  except BaseException:
    import traceback
    traceback.print_exc()
    status = 1
  if status:
    distributed.exit_now(status)
  distributed.barrier("end of run")  # nobody leaves while another may still need it


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
