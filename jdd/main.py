"""Command line: `python -m jdd.main --config configs/<x>.py[:variant] --workdir W`.

Any field can be overridden with `--config.a.b=value`; a field that does not exist is an error.
Exit status: 0 done; 2 the input cannot work (a config field, a variant, a missing dataset, a
workdir another run holds): one message, no traceback; 1 the run failed (a full disk, no usable
checkpoint: one message; a bug: its traceback). `--debug` (or JDD_DEBUG=1) shows the traceback
of every error.
"""

from jdd import reporting

# Before anything imports TensorFlow or XLA: their start-up lines are silenced at the source.
reporting.quiet_third_party()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jdd import errors  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, export and results.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of any error (or JDD_DEBUG=1).")
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
  from jdd import run
  with errors.reported(debug=_DEBUG.value):
    run.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
